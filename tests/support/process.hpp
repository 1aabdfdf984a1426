#pragma once
// Running the real `switchboard` binary (or a test helper) as a child process, for end-to-end tests.

#include <boost/process.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace switchboard::testing_support {

struct ProcessResult {
    int exit_code = -1;
    bool timed_out = false;
    std::string out;
    std::string err;
};

inline std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

/// Waits until @p child exits or @p timeout passes; returns whether it exited. (Boost.Process 1.81's own
/// wait_for can sleep through the whole timeout after the child is gone, so this polls running() instead.)
inline bool wait_for_exit(boost::process::child& child, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (child.running()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return true;
}

/// Runs @p program with @p args in @p directory, feeding @p input on standard input and then closing it.
/// Output goes through files (no pipe can fill up); a child still running after @p timeout is killed.
inline ProcessResult run_process(const std::filesystem::path& program, const std::vector<std::string>& args,
                                 const std::filesystem::path& directory, const std::string& input = {},
                                 std::chrono::seconds timeout = std::chrono::seconds(60)) {
    namespace bp = boost::process;
    const auto out_file = directory / ".child-stdout";
    const auto err_file = directory / ".child-stderr";
    bp::opstream in;
    bp::child child(program.string(), bp::args(args), bp::start_dir(directory.string()), bp::std_in < in,
                    bp::std_out > out_file.string(), bp::std_err > err_file.string());
    in << input;
    in.flush();
    in.pipe().close();
    ProcessResult result;
    result.timed_out = !wait_for_exit(child, timeout);
    if (result.timed_out) child.terminate();
    result.exit_code = result.timed_out ? -1 : child.exit_code();
    result.out = read_file(out_file);
    result.err = read_file(err_file);
    return result;
}

}  // namespace switchboard::testing_support
