// The sqlite store across processes: a second running host is refused, and a host killed mid-batch loses and
// repeats nothing. Both start store_crash_child (see its header comment for what it prints).

#include <signal.h>
#include <sys/wait.h>

#include <boost/process.hpp>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <mutex>
#include <sstream>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "store_test_support.hpp"

using namespace switchboard;
using namespace switchboard::store_tests;
using stores::SqliteStore;
using testing_support::TempDir;
namespace bp = boost::process;

namespace {

constexpr auto kChildDeadline = std::chrono::seconds(30);

// Kills a child that outlives its deadline, so a hung child fails the test (its output ends) instead of hanging it.
class Watchdog {
public:
    Watchdog(pid_t pid, std::chrono::milliseconds timeout)
        : thread_([pid, timeout](std::stop_token stop) {
              std::mutex mutex;
              std::condition_variable_any wake;
              std::unique_lock lock(mutex);
              wake.wait_for(lock, stop, timeout, [] { return false; });
              if (!stop.stop_requested()) ::kill(pid, SIGKILL);
          }) {}
    // Call before reaping the child, so the pid cannot be reused under the watchdog.
    void disarm() {
        thread_.request_stop();
        thread_.join();
    }

private:
    std::jthread thread_;
};

// One run of store_crash_child with its output on a pipe.
class Child {
public:
    explicit Child(const std::vector<std::string>& args)
        : process_(bp::exe = STORE_CRASH_CHILD, bp::args = args, bp::std_out > out_, bp::std_in < in_),
          watchdog_(process_.id(), kChildDeadline) {}

    [[nodiscard]] pid_t pid() const { return process_.id(); }

    // The next line the child printed, split into its first word and the rest; false at end of output.
    bool next(std::string& word, std::string& rest) {
        std::string line;
        if (!std::getline(out_, line)) return false;
        const auto space = line.find(' ');
        word = line.substr(0, space);
        rest = space == std::string::npos ? "" : line.substr(space + 1);
        return true;
    }

    // Ends the child's input. (opstream::close() only flushes; closing the pipe is what gives the child EOF.)
    void close_stdin() {
        in_.flush();
        in_.pipe().close();
    }

    // Waits for the child to exit and returns its raw wait status. The watchdog stays armed until the child has
    // exited, and is disarmed before the child is reaped, so it can never kill a reused pid.
    int wait() {
        siginfo_t info{};
        while (::waitid(P_PID, static_cast<id_t>(process_.id()), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {
        }
        watchdog_.disarm();
        process_.wait();
        return process_.native_exit_code();
    }

private:
    bp::ipstream out_;
    bp::opstream in_;
    bp::child process_;
    Watchdog watchdog_;
};

constexpr const char* kConnection = "crash";
constexpr const char* kChannel = "general";

// What a killed run must have left behind: messages 0..K-1 handled, each exactly once, and nothing of message K —
// the key-value writes, the log and the cursor all agree. Returns K.
std::int64_t check_consistent(const std::filesystem::path& path) {
    SqliteStore store(path);
    const auto cursor = ok(store.cursor(kConnection, kChannel));
    const std::int64_t handled = cursor ? std::stoll(cursor->message_id) + 1 : 0;
    INFO("messages handled according to the cursor: " << handled);
    CHECK(ok(store.get_value("bot", "counter")).value_or("0") == std::to_string(handled));
    if (handled > 0) CHECK(ok(store.get_value("bot", "handled:" + std::to_string(handled - 1))) == "1");
    CHECK_FALSE(ok(store.get_value("bot", "handled:" + std::to_string(handled))));
    const auto logged = ok(store.messages(kConnection, kChannel, 0, std::numeric_limits<std::int64_t>::max(),
                                          std::numeric_limits<std::size_t>::max()));
    CHECK(static_cast<std::int64_t>(logged.size()) == handled);
    return handled;
}

struct KillPoint {
    std::string line;  // which line of the child's output triggers the kill: begin, commit or committed
    std::int64_t at;   // the first such line whose message number is at least this
};

}  // namespace

TEST_CASE("the sqlite store refuses a file held by another process and names that process") {
    TempDir dir;
    const auto path = dir / "store.db";
    Child holder({"hold", path.string()});
    std::string word, rest;
    REQUIRE(holder.next(word, rest));
    REQUIRE(word == "ready");
    REQUIRE(rest == std::to_string(holder.pid()));

    const Error error = open_error([&] { SqliteStore store(path); });

    CHECK(error.code == "store_locked");
    CHECK_THAT(error.message, Catch::Contains(path.string()) && Catch::Contains("pid " + std::to_string(holder.pid())));

    holder.close_stdin();
    const int status = holder.wait();
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    SqliteStore store(path);  // the lock went with the holder
}

TEST_CASE("a host killed mid-batch handles every message exactly once after it restarts") {
    constexpr std::int64_t kMessages = 40'000;
    constexpr std::int64_t kBatch = 64;
    const std::vector<std::vector<KillPoint>> plans{
        {{"commit", 8'000}},
        {{"begin", 3'000}, {"commit", 12'000}, {"committed", 20'000}},
        {{"commit", 1'000}, {"begin", 9'000}, {"commit", 16'000}, {"commit", 24'000}},
    };
    const std::size_t plan_index = GENERATE(0u, 1u, 2u);
    const auto& plan = plans[plan_index];

    TempDir dir;
    const auto path = dir / "crash.db";
    const std::vector<std::string> args{"run", path.string(), std::to_string(kMessages), std::to_string(kBatch)};
    std::int64_t handled_before = 0;

    for (const KillPoint& point : plan) {
        INFO("kill at the first '" << point.line << "' line for message " << point.at << " or later");
        Child child(args);
        std::string word, rest, last;
        bool killed = false;
        while (child.next(word, rest)) {
            last = word + " " + rest;
            if (word == point.line && std::stoll(rest) >= point.at) {
                ::kill(child.pid(), SIGKILL);
                killed = true;
                break;
            }
            if (word == "done" || word == "error") break;
        }
        const int status = child.wait();
        INFO("last line of the child: " << last);
        REQUIRE(killed);
        REQUIRE(WIFSIGNALED(status));
        REQUIRE(WTERMSIG(status) == SIGKILL);

        const std::int64_t handled = check_consistent(path);
        CHECK(handled >= handled_before);
        CHECK(handled < kMessages);  // the kill landed before the end
        handled_before = handled;
    }

    Child last_run(args);
    std::string word, rest;
    while (last_run.next(word, rest) && word != "done" && word != "error") {
    }
    const int status = last_run.wait();
    INFO(word << " " << rest);
    REQUIRE(word == "done");
    REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));

    SqliteStore store(path);
    const auto cursor = ok(store.cursor(kConnection, kChannel));
    REQUIRE(cursor);
    CHECK(cursor->message_id == std::to_string(kMessages - 1));
    CHECK(ok(store.get_value("bot", "counter")) == std::to_string(kMessages));
    std::vector<std::int64_t> missing;
    for (std::int64_t i = 0; i < kMessages; ++i) {
        if (ok(store.get_value("bot", "handled:" + std::to_string(i))) != "1") missing.push_back(i);
    }
    CHECK(missing.empty());
    CHECK(ok(store.messages(kConnection, kChannel, 0, std::numeric_limits<std::int64_t>::max(),
                            std::numeric_limits<std::size_t>::max()))
              .size() == kMessages);
}
