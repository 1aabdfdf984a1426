// The example configs through the real `switchboard` binary: `check` accepts them, and `run` with the sandbox config
// answers a Discord message through the whole host (delivery engine, rate-limit scheduler, store).
#include "harness.hpp"

#include "process.hpp"
#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <thread>

using namespace switchboard::discord::testing;
namespace ts = switchboard::testing_support;

namespace {

const std::filesystem::path kExample = std::filesystem::path(SWITCHBOARD_TEST_SOURCE_DIR) / "examples" / "discord-echo";
const std::filesystem::path kHost = std::filesystem::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";

// Polls the sandbox every 100 ms until @p condition holds (a faster poll would crowd the sandbox's request log).
bool poll_sandbox(const std::function<bool()>& condition, std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return true;
}

bool sent_contains(const Sandbox& sandbox, const std::string& content) {
    const json sent = sandbox.sent();  // named: a range-for over a temporary's member would dangle
    for (const auto& message : sent["messages"]) {
        if (message["content"] == content) return true;
    }
    return false;
}

// `switchboard run` with the sandbox example config in @p dir, logging to out.log and err.log there; returns once the
// connection identified (REQUIREs it).
boost::process::child run_sandbox_example(const Sandbox& sandbox, const ts::TempDir& dir) {
    std::filesystem::copy_file(kExample / "sandbox.yaml", dir / "sandbox.yaml");
    ::setenv("SANDBOX_PORT", std::to_string(sandbox.port()).c_str(), 1);
    namespace bp = boost::process;
    bp::child host(kHost.string(), bp::args({"run", "-c", "sandbox.yaml"}), bp::start_dir(dir.path().string()),
                   bp::std_in < bp::null, bp::std_out > (dir / "out.log").string(),
                   bp::std_err > (dir / "err.log").string());
    const bool identified = poll_sandbox([&] { return sandbox.stats()["identifies"] == 1; }, std::chrono::seconds(20));
    INFO(ts::read_file(dir / "err.log"));
    REQUIRE(identified);
    return host;
}

}  // namespace

TEST_CASE("switchboard check accepts both discord-echo example configs", "[discord][integration]") {
    ts::TempDir dir;
    ::setenv("DISCORD_TOKEN", "not-a-real-token", 1);
    ::setenv("DISCORD_CHANNEL_ID", "123456789012345678", 1);
    ::setenv("SANDBOX_PORT", "5123", 1);
    for (const char* file : {"switchboard.yaml", "sandbox.yaml"}) {
        const auto result = ts::run_process(kHost, {"check", "-c", (kExample / file).string()}, dir.path());
        INFO(file << "\n" << result.out << result.err);
        CHECK(result.exit_code == 0);
        CHECK(result.out.find(": ok:") != std::string::npos);
    }
}

TEST_CASE("switchboard check names a bad discord setting at its line", "[discord][integration]") {
    ts::TempDir dir;
    ts::TempDir config_dir;
    {
        std::ofstream out(config_dir / "bad.yaml");
        out << "store: { plugin: sqlite, path: data/x.db }\n"
               "connections:\n"
               "  - name: discord\n"
               "    plugin: discord\n"
               "    token: t\n"
               "    intents: [GUILDS, TYPING]\n"
               "channels:\n"
               "  c: { connection: discord, id: \"1\" }\n";
    }
    const auto result = ts::run_process(kHost, {"check", "-c", (config_dir / "bad.yaml").string()}, dir.path());
    INFO(result.out << result.err);
    CHECK(result.exit_code == 2);
    CHECK(result.err.find("bad.yaml:6:") != std::string::npos);
    CHECK(result.err.find("TYPING") != std::string::npos);
}

TEST_CASE("switchboard run with the sandbox example answers a Discord message", "[discord][integration]") {
    Sandbox sandbox;
    ts::TempDir dir;
    auto host = run_sandbox_example(sandbox, dir);
    sandbox.post("/messages", {{"author_id", "2001"}, {"channel_id", "100"}, {"content", "hello bot"}});
    const bool answered = poll_sandbox([&] { return sent_contains(sandbox, "echo: hello bot"); }, std::chrono::seconds(20));
    ::kill(host.id(), SIGTERM);
    const bool exited = ts::wait_for_exit(host, std::chrono::seconds(20));
    if (!exited) host.terminate();
    INFO(ts::read_file(dir / "err.log"));
    INFO("sandbox requests: " << sandbox.get("/stats")["request_log"].dump());
    INFO("sent: " << sandbox.sent().dump());
    CHECK(answered);
    CHECK(exited);
    CHECK(host.exit_code() == 0);
}

TEST_CASE("a reply whose retries ran out in a 429 storm goes out once the connection is back, without a restart",
          "[discord][integration]") {
    Sandbox sandbox;
    ts::TempDir dir;
    auto host = run_sandbox_example(sandbox, dir);
    const auto log_has = [&](const std::string& text) {
        return ts::read_file(dir / "err.log").find(text) != std::string::npos;
    };

    // Every message the bot creates gets a 429 until the storm is cleared: the echo reply's 8 attempts run out.
    sandbox.post("/rest/storm",
                 {{"route", "POST /channels/{channel.id}/messages"}, {"duration_ms", 120'000}, {"retry_after", 0.2}});
    sandbox.post("/messages", {{"author_id", "2001"}, {"channel_id", "100"}, {"content", "stormy"}});
    const bool parked =
        poll_sandbox([&] { return log_has("go out again when their connection is back"); }, std::chrono::seconds(40));
    sandbox.post("/rest/clear", json::object());
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const bool sent_early = sent_contains(sandbox, "echo: stormy");  // nothing retries it by itself

    sandbox.post("/gateway/drop", json::object());  // the connection resumes: `resumed` sends it again
    const bool answered =
        poll_sandbox([&] { return sent_contains(sandbox, "echo: stormy"); }, std::chrono::seconds(20));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const json sent = sandbox.sent();
    int copies = 0;
    for (const auto& message : sent["messages"]) copies += message["content"] == "echo: stormy" ? 1 : 0;

    ::kill(host.id(), SIGTERM);
    const bool exited = ts::wait_for_exit(host, std::chrono::seconds(20));
    if (!exited) host.terminate();
    INFO(ts::read_file(dir / "err.log"));
    INFO("sent: " << sent.dump());
    CHECK(parked);
    CHECK_FALSE(sent_early);
    CHECK(answered);
    CHECK(copies == 1);
    CHECK(log_has("'discord' is back; sending again 1 recipient(s)"));
    CHECK(exited);
}
