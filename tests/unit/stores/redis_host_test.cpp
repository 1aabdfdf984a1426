// The redis store as the host uses it: the real `switchboard` binary loads store_redis.so from its plugin directory,
// runs the console connector and the echo bot on it, and refuses bad settings at their line or at start.

#include <fcntl.h>

#include <fstream>
#include <process.hpp>

#include "redis_test_support.hpp"

using namespace switchboard;
using namespace switchboard::testing_support;
namespace fs = std::filesystem;

namespace {

const fs::path kSwitchboard = fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";

std::string console_config(const std::string& store_url, const std::string& store_settings = {}) {
    const std::string rest =
        "connections:\n"
        "  - { name: console, plugin: console }\n"
        "channels:\n"
        "  lobby: { connection: console, id: console }\n"
        "bots:\n"
        "  - { plugin: echo, channels: [lobby] }\n";
    return "store:\n  plugin: redis\n  url: " + store_url + "\n" + store_settings + rest;
}

std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

// The run that wrote run1.out in @p dir answered each of @p lines console lines exactly once, and left nothing
// pending in the outbox: a second run, which would send what was left, answers nothing.
void check_each_line_answered_once(RedisServer& server, const fs::path& dir, int lines) {
    const std::string answers = read_file(dir / "run1.out");
    CHECK(count(answers, "<switchboard> line ") == static_cast<std::size_t>(lines));
    for (int i = 0; i < lines; ++i) {
        INFO("line " << i);
        CHECK(count(answers, "<switchboard> line " + std::to_string(i) + "\n") == 1);
    }
    CHECK(server.command({"ZCARD", "switchboard:outbox-pending"}) == "0");
    const auto second = run_process(kSwitchboard, {"run", "-c", "redis.yaml"}, dir, "");
    INFO(second.err);
    CHECK(second.exit_code == 0);
    CHECK(count(second.out, "<switchboard> line ") == 0);
}

}  // namespace

TEST_CASE("the host runs on the redis store: every line answered once, over two runs, with the ledger in Redis",
          "[redis]") {
    RedisServer server;
    if (!server.start()) FAIL(server.why());
    TempDir dir;
    write_file(dir / "redis.yaml", console_config(server.url()));
    std::string input;
    for (int i = 0; i < 100; ++i) input += "line " + std::to_string(i) + "\n";

    for (int run = 1; run <= 2; ++run) {
        INFO("run " << run);
        const auto result = run_process(kSwitchboard, {"run", "-c", "redis.yaml"}, dir.path(), input);
        INFO(result.err);
        REQUIRE(result.exit_code == 0);
        CHECK(count(result.out, "<switchboard> line ") == 100);
        for (int i = 0; i < 100; i += 9)
            CHECK(count(result.out, "<switchboard> line " + std::to_string(i) + "\n") == 1);
        CHECK(result.err.find("redis store open: redis at 127.0.0.1:" + std::to_string(server.port()) + "/0") !=
              std::string::npos);
        CHECK(server.command({"ZCARD", "switchboard:seen:console:console"}) == std::to_string(100 * run));
        CHECK(server.command({"ZCARD", "switchboard:log:console:console"}) == std::to_string(100 * run));
    }
    CHECK(server.command({"HEXISTS", "switchboard:cursors:console", "console"}) == "1");
    // Every reply went out before the host stopped: nothing is left pending.
    CHECK(server.command({"ZCARD", "switchboard:outbox-pending"}) == "0");
    CHECK(server.command({"GET", "switchboard:outbox-seq"}) == "200");
}

TEST_CASE("switchboard check refuses a bad redis URL at its line, and plugins --describe documents the store",
          "[redis]") {
    TempDir dir;
    write_file(dir / "tls.yaml", console_config("rediss://10.0.0.5:6380/0"));
    const auto check = run_process(kSwitchboard, {"check", "-c", "tls.yaml"}, dir.path());
    INFO(check.out << check.err);
    CHECK(check.exit_code == 2);
    CHECK(check.err.find("tls.yaml:3:") != std::string::npos);
    CHECK(check.err.find("TLS") != std::string::npos);

    const auto describe = run_process(kSwitchboard, {"plugins", "--describe", "redis"}, dir.path());
    CHECK(describe.exit_code == 0);
    for (const char* key : {"url", "prefix", "dedup_window", "reconnect_timeout", "pool_size"}) {
        CHECK(describe.out.find(key) != std::string::npos);
    }
}

TEST_CASE("the host does not start when redis refuses its password, and says why", "[redis]") {
    RedisServerOptions options;
    options.password = "right-password";
    RedisServer server(options);
    if (!server.start()) FAIL(server.why());
    TempDir dir;
    write_file(dir / "wrong.yaml",
          console_config("redis://:wrong-password@127.0.0.1:" + std::to_string(server.port()) + "/0"));
    // No input: the host exits before it reads any, and writing to its closed stdin would kill this test (SIGPIPE).
    const auto result = run_process(kSwitchboard, {"run", "-c", "wrong.yaml"}, dir.path());
    INFO(result.err);
    CHECK(result.exit_code == 1);
    CHECK(result.err.find("refused the password") != std::string::npos);
    CHECK(result.err.find("wrong-password") == std::string::npos);
    CHECK(result.err.find("running:") == std::string::npos);  // it never got as far as running
}

TEST_CASE("the host rides out a redis-server restart under load: every line answered once, none lost", "[redis]") {
    namespace bp = boost::process;
    RedisServerOptions options;
    options.persistent = true;  // what the server acknowledged survives its SIGKILL
    RedisServer server(options);
    if (!server.start()) FAIL(server.why());
    TempDir dir;
    write_file(dir / "redis.yaml", console_config(server.url()));
    const auto ledger_size = [&] {
        const std::string size = server.command({"ZCARD", "switchboard:seen:console:console"});
        return size.starts_with("(") ? -1 : std::stoi(size);
    };
    constexpr int kLines = 1500;

    bp::opstream input;
    bp::child host(kSwitchboard.string(), bp::args({"run", "-c", "redis.yaml"}), bp::start_dir(dir.path().string()),
                   bp::std_in<input, bp::std_out>(dir / "run1.out").string(),
                   bp::std_err > (dir / "run1.err").string());
    // Children started later (the restarted redis-server) must not inherit the pipe, or the host never sees the end
    // of its input.
    ::fcntl(input.pipe().native_sink(), F_SETFD, FD_CLOEXEC);
    ::fcntl(input.pipe().native_source(), F_SETFD, FD_CLOEXEC);
    const auto say = [&](int from, int to) {
        for (int i = from; i < to; ++i) input << "line " << i << "\n";
        input.flush();
    };
    say(0, 500);
    REQUIRE(wait_until([&] { return ledger_size() >= 200; }, std::chrono::seconds(60)));
    server.kill();
    say(500, 1000);  // while the server is down: the host keeps them
    REQUIRE(server.restart());
    say(1000, kLines);
    INFO(read_file(dir / "run1.err"));
    REQUIRE(wait_until([&] { return ledger_size() == kLines; }, std::chrono::seconds(90)));
    input.pipe().close();
    const bool exited = wait_for_exit(host, std::chrono::seconds(60));
    INFO(read_file(dir / "run1.err"));
    REQUIRE(exited);
    CHECK(host.exit_code() == 0);
    CHECK(read_file(dir / "run1.err").find("reconnecting") != std::string::npos);

    // Every line was answered exactly once in this run, a batch whose commit went through just as the server died
    // included (its reply lost: committed again, it changes nothing, and its replies go out then): nothing is left
    // in the outbox for the next start, which answers nothing.
    check_each_line_answered_once(server, dir.path(), kLines);
}

TEST_CASE("the host rides out a redis-server frozen past reconnect_timeout again and again: each line answered once",
          "[redis]") {
    namespace bp = boost::process;
    RedisServer server;
    if (!server.start()) FAIL(server.why());
    TempDir dir;
    // Quick to give up on a silent server: each freeze fails the store call that meets it — a dedup lookup, or a
    // commit that the server records when it wakes up, after the host gave up on its reply.
    write_file(dir / "redis.yaml",
               console_config(server.url(), "  command_timeout: 200ms\n  reconnect_timeout: 400ms\n"));
    const auto ledger_size = [&] {
        const std::string size = server.command({"ZCARD", "switchboard:seen:console:console"});
        return size.starts_with("(") ? -1 : std::stoi(size);
    };
    constexpr int kFreezes = 4;
    constexpr int kLinesPerRound = 200;
    constexpr int kLines = kFreezes * kLinesPerRound;

    bp::opstream input;
    bp::child host(kSwitchboard.string(), bp::args({"run", "-c", "redis.yaml"}), bp::start_dir(dir.path().string()),
                   bp::std_in<input, bp::std_out>(dir / "run1.out").string(),
                   bp::std_err > (dir / "run1.err").string());
    for (int round = 0; round < kFreezes; ++round) {
        const int first = round * kLinesPerRound;
        for (int i = first; i < first + kLinesPerRound; ++i) input << "line " << i << "\n";
        input.flush();
        // Freeze while the batches of this round are being stored, for longer than the host waits.
        REQUIRE(wait_until([&] { return ledger_size() > first; }, std::chrono::seconds(30)));
        server.pause();
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        server.resume();
    }
    INFO(read_file(dir / "run1.err"));
    REQUIRE(wait_until([&] { return ledger_size() == kLines; }, std::chrono::seconds(90)));
    input.pipe().close();
    REQUIRE(wait_for_exit(host, std::chrono::seconds(60)));
    CHECK(host.exit_code() == 0);
    CHECK(read_file(dir / "run1.err").find("failed") != std::string::npos);  // the freezes were felt

    check_each_line_answered_once(server, dir.path(), kLines);
}
