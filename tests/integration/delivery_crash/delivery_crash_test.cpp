#include "process.hpp"
#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <map>

using namespace switchboard::testing_support;
namespace bp = boost::process;

namespace {

std::map<std::string, int> sends(const std::filesystem::path& sink) {
    std::map<std::string, int> count;
    std::istringstream lines(read_file(sink));
    for (std::string line; std::getline(lines, line);) ++count[line];
    return count;
}

}  // namespace

TEST_CASE("a fan-out killed mid-way is finished after restart and reaches every member", "[crash]") {
    constexpr int kMembers = 3000;
    const int kill_after = GENERATE(300, 1500, 2700);
    TempDir dir;
    const auto store = (dir / "store.db").string();
    const auto sink = dir / "sink.log";

    bp::child start(SWITCHBOARD_CRASH_CHILD, "start", store, sink.string(), std::to_string(kMembers),
                    bp::std_out > bp::null, bp::std_err > (dir / "start.err").string());
    REQUIRE(wait_until([&] { return sends(sink).size() >= static_cast<std::size_t>(kill_after); },
                       std::chrono::seconds(30)));
    ::kill(start.id(), SIGKILL);
    start.wait();
    const std::size_t before_restart = sends(sink).size();
    INFO("killed after " << before_restart << " sends");
    REQUIRE(before_restart < static_cast<std::size_t>(kMembers));  // the kill landed mid-fan-out

    const auto resumed = run_process(SWITCHBOARD_CRASH_CHILD, {"resume", store, sink.string(), "0"}, dir.path(), {},
                                     std::chrono::seconds(60));
    INFO(resumed.out << resumed.err);
    REQUIRE(resumed.exit_code == 0);

    const auto count = sends(sink);
    REQUIRE(count.size() == static_cast<std::size_t>(kMembers));  // nobody missing
    int repeated = 0;
    for (const auto& [key, times] : count) repeated += times - 1;
    // A send the platform accepted but the store had not yet recorded when the process died is sent again with the
    // same idempotency key (the platform's nonce makes it one message): at most what was in flight at the kill.
    CHECK(repeated <= 4);

    // A second resume finds nothing left to do.
    const auto again = run_process(SWITCHBOARD_CRASH_CHILD, {"resume", store, sink.string(), "0"}, dir.path(), {},
                                   std::chrono::seconds(60));
    CHECK(again.out.find("resuming 0") != std::string::npos);
    CHECK(sends(sink) == count);
}
