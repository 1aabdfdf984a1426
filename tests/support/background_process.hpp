#pragma once
// A child process that runs beside the test (a server, a sandbox, the `switchboard` host) with its output going to
// files, stopped when the object goes: SIGTERM, then SIGKILL if it does not exit in time.

#include "process.hpp"

#include <boost/process.hpp>

#include <csignal>
#include <filesystem>
#include <string>
#include <vector>

namespace switchboard::testing_support {

class BackgroundProcess {
public:
    /// Starts @p program with @p args in @p directory; standard output and error go to `<directory>/<name>.out|.err`.
    BackgroundProcess(const std::filesystem::path& program, const std::vector<std::string>& args,
                      const std::filesystem::path& directory, const std::string& name)
        : out_(directory / (name + ".out")), err_(directory / (name + ".err")),
          child_(program.string(), boost::process::args(args), boost::process::start_dir(directory.string()),
                 boost::process::std_in < boost::process::null, boost::process::std_out > out_.string(),
                 boost::process::std_err > err_.string()) {}
    ~BackgroundProcess() { stop(); }
    BackgroundProcess(const BackgroundProcess&) = delete;
    BackgroundProcess& operator=(const BackgroundProcess&) = delete;

    [[nodiscard]] bool running() { return child_.running(); }
    [[nodiscard]] int pid() const { return child_.id(); }

    /// Sends @p signal (SIGTERM, SIGKILL, SIGSTOP, ...).
    void signal(int signal) {
        if (child_.running()) ::kill(child_.id(), signal);
    }

    /// Sends SIGTERM and waits up to @p grace for the exit, then SIGKILL; returns the exit code (-1 if killed).
    int stop(std::chrono::milliseconds grace = std::chrono::seconds(10)) {
        if (!child_.valid()) return exit_code_;
        if (child_.running()) {
            ::kill(child_.id(), SIGTERM);
            if (!wait_for_exit(child_, grace)) {
                child_.terminate();
                child_.wait();
                exit_code_ = -1;
                stopped_ = true;
                return exit_code_;
            }
        }
        if (!stopped_) {
            child_.wait();
            exit_code_ = child_.native_exit_code();
            exit_code_ = WIFEXITED(exit_code_) ? WEXITSTATUS(exit_code_) : -1;
            stopped_ = true;
        }
        return exit_code_;
    }

    /// Kills the process at once (SIGKILL), as a crash would, and reaps it.
    void kill() {
        if (!child_.valid() || stopped_) return;
        ::kill(child_.id(), SIGKILL);
        child_.wait();
        stopped_ = true;
        exit_code_ = -1;
    }

    /// Waits up to @p timeout for the process to exit on its own; returns whether it did.
    bool wait_exit(std::chrono::milliseconds timeout) { return wait_for_exit(child_, timeout); }

    [[nodiscard]] std::string out() const { return read_file(out_); }
    [[nodiscard]] std::string err() const { return read_file(err_); }

private:
    std::filesystem::path out_;
    std::filesystem::path err_;
    boost::process::child child_;
    bool stopped_ = false;
    int exit_code_ = -1;
};

}  // namespace switchboard::testing_support
