#include "process.hpp"
#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <nlohmann/json.hpp>

#include <csignal>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

using namespace switchboard::testing_support;
namespace fs = std::filesystem;
namespace bp = boost::process;

namespace {

const fs::path kSwitchboard = fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";

ProcessResult switchboard_run(const std::vector<std::string>& args, const fs::path& dir, const std::string& input = {}) {
    return run_process(kSwitchboard, args, dir, input);
}

std::size_t count(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

}  // namespace

TEST_CASE("the default bot answers a typed line through the real binary", "[cli]") {
    TempDir dir;
    const auto result = switchboard_run({"run"}, dir.path(), "hello there\n!help\n");
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.find("<switchboard> hello there\n") != std::string::npos);
    // help lists every loaded bot and its commands
    CHECK(result.out.find("2 bots:") != std::string::npos);
    CHECK(result.out.find("!echo TEXT") != std::string::npos);
    CHECK(result.out.find("!help") != std::string::npos);
    // the embedded default keeps its state in sqlite under data/
    CHECK(fs::exists(dir / "data/switchboard.db"));
    CHECK(result.err.find("every connection has finished") != std::string::npos);
}

TEST_CASE("console lines simulate other people and private messages", "[cli]") {
    TempDir dir;
    const auto result =
        switchboard_run({"run"}, dir.path(), "/dm alice psst\n/as bob\nhi from bob\n//slash\n/nonsense\n");
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.find("<switchboard to @alice> psst\n") != std::string::npos);
    CHECK(result.out.find("* now speaking as bob in console") != std::string::npos);
    CHECK(result.out.find("<switchboard> hi from bob\n") != std::string::npos);
    CHECK(result.out.find("<switchboard> /slash\n") != std::string::npos);
    CHECK(result.out.find("* unknown command /nonsense") != std::string::npos);
}

TEST_CASE("every line is answered exactly once, also over several runs on one store", "[cli]") {
    TempDir dir;
    std::string input;
    for (int i = 0; i < 300; ++i) input += "line " + std::to_string(i) + "\n";
    for (int run = 0; run < 2; ++run) {
        const auto result = switchboard_run({"run"}, dir.path(), input);
        INFO(result.err);
        REQUIRE(result.exit_code == 0);
        for (int i = 0; i < 300; i += 37) CHECK(count(result.out, "<switchboard> line " + std::to_string(i) + "\n") == 1);
        CHECK(count(result.out, "<switchboard> line ") == 300);
    }
}

TEST_CASE("switchboard check reports every mistake with its line and column", "[cli]") {
    TempDir dir;
    write_file(dir / "bad.yaml",
          "store: { plugin: sqlite }\n"
          "connections:\n"
          "  - name: console\n"
          "    plugin: console\n"
          "    colour: blue\n"
          "channels:\n"
          "  lobby: { connection: console, id: lobby }\n"
          "bots:\n"
          "  - { plugin: echo, channels: [lobbby] }\n"
          "  - { plugin: help, channels: [lobby], command: [1, 2] }\n");
    const auto result = switchboard_run({"check", "-c", "bad.yaml"}, dir.path());
    INFO(result.out << result.err);
    CHECK(result.exit_code == 2);
    CHECK(result.err.find("bad.yaml:5:5: error:") != std::string::npos);   // unknown key colour
    CHECK(result.err.find("bad.yaml:9:32: error:") != std::string::npos);  // unknown channel lobbby
    CHECK(result.err.find("bad.yaml:10:49: error:") != std::string::npos); // command must be a string
    CHECK(result.err.find("3 errors in bad.yaml") != std::string::npos);
}

TEST_CASE("switchboard check accepts a good file and summarises it", "[cli]") {
    TempDir dir;
    write_file(dir / "good.yaml",
          "connections:\n  - { name: console, plugin: console }\n"
          "channels:\n  lobby: { connection: console, id: console }\n"
          "bots:\n  - { plugin: echo, channels: [lobby] }\n");
    const auto result = switchboard_run({"check", "-c", "good.yaml"}, dir.path());
    INFO(result.err);
    CHECK(result.exit_code == 0);
    CHECK(result.out.find("good.yaml: ok: 1 connection(s), 1 channel(s)") != std::string::npos);
}

TEST_CASE("an unset environment variable in the config is named", "[cli]") {
    TempDir dir;
    write_file(dir / "env.yaml",
          "connections:\n  - { name: console, plugin: console, user: \"${SWITCHBOARD_TEST_SURELY_UNSET}\" }\n");
    const auto result = switchboard_run({"check", "-c", "env.yaml"}, dir.path());
    CHECK(result.exit_code == 2);
    CHECK(result.err.find("SWITCHBOARD_TEST_SURELY_UNSET") != std::string::npos);
}

TEST_CASE("switchboard plugins lists and documents the built plugins", "[cli]") {
    TempDir dir;
    const auto list = switchboard_run({"plugins"}, dir.path());
    INFO(list.err);
    REQUIRE(list.exit_code == 0);
    for (const char* name : {"console", "sqlite", "memory", "echo", "help", "none"}) {
        CHECK(list.out.find(name) != std::string::npos);
    }
    const auto describe = switchboard_run({"plugins", "--describe", "sqlite"}, dir.path());
    CHECK(describe.exit_code == 0);
    CHECK(describe.out.find("busy_timeout") != std::string::npos);
    CHECK(describe.out.find("path") != std::string::npos);
    const auto unknown = switchboard_run({"plugins", "--describe", "nope"}, dir.path());
    CHECK(unknown.exit_code == 2);
}

TEST_CASE("the discord-backfill policy documents its settings and switchboard check validates them", "[cli]") {
    TempDir dir;
    const auto describe = switchboard_run({"plugins", "--describe", "discord-backfill"}, dir.path());
    INFO(describe.out << describe.err);
    CHECK(describe.exit_code == 0);
    for (const char* text : {"max_age", "page_size", "concurrency", "retries", "14d"}) {
        CHECK(describe.out.find(text) != std::string::npos);
    }
    write_file(dir / "backfill.yaml",
          "connections:\n"
          "  - name: console\n"
          "    plugin: console\n"
          "    recovery: { policy: discord-backfill, max_age: 6h, page_size: 500 }\n"
          "channels:\n"
          "  lobby: { connection: console, id: console }\n");
    const auto bad = switchboard_run({"check", "-c", "backfill.yaml"}, dir.path());
    INFO(bad.err);
    CHECK(bad.exit_code == 2);
    CHECK(bad.err.find("backfill.yaml:4:") != std::string::npos);
    CHECK(bad.err.find("page_size must be between 1 and 100") != std::string::npos);
}

TEST_CASE("a foreign file in a plugin directory is refused with one line naming it", "[cli]") {
    TempDir dir;
    fs::create_directories(dir / "extra");
    write_file(dir / "extra/broken.so", "this is not a shared library\n");
    const auto result = switchboard_run({"run", "-p", "extra"}, dir.path(), "hello\n");
    CHECK(result.exit_code == 3);
    CHECK(result.err.find("broken.so: error:") != std::string::npos);
    CHECK(count(result.err, "\n") == 1);
    CHECK(result.out.empty());
}

TEST_CASE("SIGTERM stops the host cleanly and releases the store", "[cli]") {
    TempDir dir;
    const auto err_file = dir / "stderr";
    bp::opstream in;
    bp::child child(kSwitchboard.string(), "run", bp::start_dir(dir.path().string()), bp::std_in < in,
                    bp::std_out > (dir / "stdout").string(), bp::std_err > err_file.string());
    REQUIRE(wait_until([&] { return read_file(err_file).find("running:") != std::string::npos; }));
    in << "before stop\n" << std::flush;
    REQUIRE(wait_until([&] { return read_file(dir / "stdout").find("before stop") != std::string::npos; }));

    SECTION("a second host on the same store is refused while the first runs") {
        const auto second = switchboard_run({"run"}, dir.path(), "hello\n");
        CHECK(second.exit_code == 1);
        CHECK(second.err.find("store_locked") != std::string::npos);
    }

    ::kill(child.id(), SIGTERM);
    REQUIRE(wait_for_exit(child, std::chrono::seconds(20)));
    CHECK(child.exit_code() == 0);
    CHECK(read_file(err_file).find("stopping: SIGTERM") != std::string::npos);
    // the store is closed: the next run opens it
    const auto next = switchboard_run({"run"}, dir.path(), "after\n");
    CHECK(next.exit_code == 0);
    CHECK(next.out.find("<switchboard> after") != std::string::npos);
}

TEST_CASE("the host has the store forget processed ids older than its dedup window while it runs", "[cli]") {
    TempDir dir;
    {
        std::ofstream out(dir / "prune.yaml");
        out << "store: { plugin: sqlite, path: data/prune.db, dedup_window: 2s }\n"
               "connections:\n"
               "  - { name: console, plugin: console }\n"
               "channels:\n"
               "  console: { connection: console, id: console }\n"
               "bots:\n"
               "  - { plugin: echo, channels: [console] }\n";
    }
    const auto err_file = dir / "stderr";
    bp::opstream in;
    bp::child child(kSwitchboard.string(), "run", "-c", "prune.yaml", bp::start_dir(dir.path().string()),
                    bp::std_in < in, bp::std_out > (dir / "stdout").string(), bp::std_err > err_file.string());
    REQUIRE(wait_until([&] { return read_file(err_file).find("running:") != std::string::npos; }));
    in << "remember me\n" << std::flush;
    REQUIRE(wait_until([&] { return read_file(dir / "stdout").find("remember me") != std::string::npos; }));
    // A 2 s window is pruned every second: the id goes within about 3 s.
    const bool forgot = wait_until(
        [&] { return read_file(err_file).find("store: forgot 1 processed message id(s)") != std::string::npos; },
        std::chrono::seconds(15));
    ::kill(child.id(), SIGTERM);
    REQUIRE(wait_for_exit(child, std::chrono::seconds(20)));
    INFO(read_file(err_file));
    CHECK(forgot);
    CHECK(child.exit_code() == 0);
}

TEST_CASE("the version and help options answer, and an unknown command is a usage error", "[cli]") {
    TempDir dir;
    const auto version = switchboard_run({"--version"}, dir.path());
    CHECK(version.exit_code == 0);
    CHECK(version.out.find("switchboard 0.1.0 (plugin ABI 6;") != std::string::npos);
#if SWITCHBOARD_TEST_MIMALLOC
    CHECK(version.out.find("; allocator: mimalloc 2.") != std::string::npos);  // it really serves malloc()
#else
    CHECK(version.out.find("; allocator: glibc malloc)") != std::string::npos);
#endif
    const auto help = switchboard_run({"--help"}, dir.path());
    CHECK(help.exit_code == 0);
    CHECK(help.out.find("usage: switchboard COMMAND") != std::string::npos);
    const auto wrong = switchboard_run({"frobnicate"}, dir.path());
    CHECK(wrong.exit_code == 2);
}

TEST_CASE("a plugin used where another kind is needed is refused at its place", "[cli]") {
    TempDir dir;
    write_file(dir / "kind.yaml", "store: { plugin: echo }\n");
    const auto result = switchboard_run({"check", "-c", "kind.yaml"}, dir.path());
    INFO(result.err);
    CHECK(result.exit_code == 2);
    CHECK(result.err.find("kind.yaml:1:18: error:") != std::string::npos);
    CHECK(result.err.find("bot") != std::string::npos);
    CHECK(result.err.find("store") != std::string::npos);
}

namespace {

const char* kRoutingConfig =
    "connections:\n"
    "  - { name: console, plugin: console }\n"
    "  - { name: side, plugin: console, channel: side }\n"
    "channels:\n"
    "  lobby: { connection: console, id: console, tags: [chat] }\n"
    "  ops-side: { connection: side, id: side, tags: [chat, ops] }\n"
    "  alerts: { connection: side, id: alerts }\n"
    "users:\n"
    "  alice: { connection: console, id: alice }\n"
    "groups:\n"
    "  ops: { members: [lobby, ops-side, alice], delivery: atomic }\n"
    "routes:\n"
    "  - { from: alerts, to: { group: ops } }\n"
    "  - { from: alerts, to: { broadcast: 'tag:ops' } }\n"
    "strategies:\n"
    "  group: { batch_size: 2 }\n";

}  // namespace

TEST_CASE("switchboard route prints the plan a message would get, through the real strategy plugins", "[cli][route]") {
    TempDir dir;
    write_file(dir / "routes.yaml", kRoutingConfig);

    SECTION("a group envelope lists every member but the origin, with mode and batch") {
        const auto result = switchboard_run(
            {"route", "-c", "routes.yaml", "--from", "lobby", "--kind", "group", "--to", "ops"}, dir.path());
        INFO(result.out << result.err);
        CHECK(result.exit_code == 0);
        CHECK(result.out.find("lobby -> group 'ops' (strategy group)") != std::string::npos);
        CHECK(result.out.find("2 recipients, mode atomic, on_failure keep, batch size 2") != std::string::npos);
        CHECK(result.out.find("batch 1:") != std::string::npos);
        CHECK(result.out.find("side/side") != std::string::npos);
        CHECK(result.out.find("console/@alice") != std::string::npos);
        CHECK(result.out.find("console/console") == std::string::npos);  // the origin itself
    }
    SECTION("the configured routes from a channel are planned when no envelope is given") {
        const auto result = switchboard_run({"route", "-c", "routes.yaml", "--from", "alerts"}, dir.path());
        INFO(result.out << result.err);
        CHECK(result.exit_code == 0);
        CHECK(result.out.find("alerts -> group 'ops' (strategy group)") != std::string::npos);
        CHECK(result.out.find("3 recipients") != std::string::npos);
        CHECK(result.out.find("batch 2:") != std::string::npos);  // batch_size 2 from the strategies section
        CHECK(result.out.find("alerts -> broadcast 'tag:ops' (strategy broadcast)") != std::string::npos);
        CHECK(result.out.find("1 recipient,") != std::string::npos);
    }
    SECTION("an unknown group or person ends in its status at once") {
        const auto gone = switchboard_run(
            {"route", "-c", "routes.yaml", "--from", "lobby", "--kind", "group", "--to", "gone"}, dir.path());
        CHECK(gone.exit_code == 1);
        CHECK(gone.out.find("group_dissolved (group_dissolved)") != std::string::npos);
        const auto nobody = switchboard_run(
            {"route", "-c", "routes.yaml", "--from", "lobby", "--kind", "private", "--to", "zed"}, dir.path());
        CHECK(nobody.exit_code == 1);
        CHECK(nobody.out.find("recipient_not_found") != std::string::npos);
        const auto alice = switchboard_run(
            {"route", "-c", "routes.yaml", "--from", "lobby", "--kind", "private", "--to", "alice"}, dir.path());
        CHECK(alice.exit_code == 0);
        CHECK(alice.out.find("1 recipient, mode best_effort") != std::string::npos);
    }
    SECTION("an unknown channel is a usage error") {
        const auto result = switchboard_run({"route", "-c", "routes.yaml", "--from", "nowhere"}, dir.path());
        CHECK(result.exit_code == 2);
        CHECK(result.err.find("no channel named 'nowhere'") != std::string::npos);
    }
}

TEST_CASE("connection limits are validated like every other key", "[cli][route]") {
    TempDir dir;
    write_file(dir / "limits.yaml",
          "connections:\n  - { name: console, plugin: console, limits: { concurrency: lots, speed: 3 } }\n");
    const auto result = switchboard_run({"check", "-c", "limits.yaml"}, dir.path());
    INFO(result.err);
    CHECK(result.exit_code == 2);
    CHECK(result.err.find("limits.yaml:2:62: error:") != std::string::npos);  // concurrency must be an integer
    CHECK(result.err.find("limits.yaml:2:68: error:") != std::string::npos);  // unknown key speed
}

TEST_CASE("a bot routes to a group through the real host and gets the delivery report", "[cli][route]") {
    TempDir dir;
    write_file(dir / "announce.yaml",
          "store: { plugin: memory }\n"
          "connections:\n  - { name: console, plugin: console, user: boss }\n"
          "channels:\n  lobby: { connection: console, id: console }\n"
          "users:\n  alice: { connection: console, id: alice }\n  bob: { connection: console, id: bob }\n"
          "groups:\n  team: { members: [alice, bob], delivery: atomic }\n"
          "bots:\n  - { plugin: announce }\n");
    const auto result = switchboard_run({"run", "-c", "announce.yaml"}, dir.path(),
                                        "!announce team standup in 5\n!announce nobody hello\n!announce team\n");
    INFO(result.out << result.err);
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.find("<switchboard to @alice> [boss] standup in 5\n") != std::string::npos);
    CHECK(result.out.find("<switchboard to @bob> [boss] standup in 5\n") != std::string::npos);
    CHECK(result.err.find("announcement to 'team': delivered, 2 of 2 delivered") != std::string::npos);
    CHECK(result.err.find("announcement to 'nobody': group_dissolved (group_dissolved), 0 of 0 delivered") !=
          std::string::npos);
    CHECK(result.out.find("<switchboard> usage: !announce GROUP TEXT\n") != std::string::npos);
}

TEST_CASE("logs are one JSON object per line with --log-format json, at levels set per component", "[cli][logs]") {
    TempDir dir;
    write_file(dir / "sb.yaml",
          "switchboard:\n"
          "  log_level: warn\n"
          "  log_levels: { host: info, console: debug }\n"
          "store: { plugin: memory }\n"
          "connections:\n"
          "  - { name: console, plugin: console }\n"
          "channels:\n"
          "  main: { connection: console, id: console }\n"
          "bots:\n"
          "  - { plugin: echo, channels: [main] }\n");
    const auto result = switchboard_run({"run", "-c", "sb.yaml", "--log-format", "json"}, dir.path(), "hi\n");
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    CHECK(result.out.find("<switchboard> hi\n") != std::string::npos);
    std::istringstream lines(result.err);
    std::string line;
    std::map<std::string, std::set<std::string>> levels_by_component;
    std::size_t with_connection = 0;
    while (std::getline(lines, line)) {
        const auto event = nlohmann::json::parse(line, nullptr, false);
        INFO(line);
        REQUIRE(event.is_object());
        CHECK(event["time_ms"].is_number_integer());
        CHECK(event["msg"].is_string());
        levels_by_component[event["component"].get<std::string>()].insert(event["level"].get<std::string>());
        if (event.contains("connection")) ++with_connection;
    }
    CHECK(levels_by_component["host"].count("info") == 1);     // "running: ...", "stopping: ..."
    CHECK(levels_by_component["console"].count("info") == 1);  // its connection events, with their connection
    CHECK(with_connection >= 1);
    // Components left at the default (warn) wrote nothing below it.
    for (const auto& [component, levels] : levels_by_component) {
        if (component == "host" || component == "console") continue;
        INFO(component);
        CHECK(levels.count("info") == 0);
        CHECK(levels.count("debug") == 0);
    }
}

TEST_CASE("an unknown level in log_levels is named at its place", "[cli][logs]") {
    TempDir dir;
    write_file(dir / "sb.yaml",
          "switchboard:\n"
          "  log_levels: { host: loud }\n"
          "store: { plugin: memory }\n"
          "connections:\n"
          "  - { name: console, plugin: console }\n");
    const auto result = switchboard_run({"check", "-c", "sb.yaml"}, dir.path());
    CHECK(result.exit_code == 2);
    CHECK(result.err.find("sb.yaml:2:") != std::string::npos);
    CHECK(result.err.find("'host' must be one of") != std::string::npos);
}

TEST_CASE("under systemd the host says READY=1 once running and STOPPING=1 when it stops", "[cli][systemd]") {
    TempDir dir;
    boost::asio::io_context io;
    const std::string path = (dir / "notify.sock").string();
    boost::asio::local::datagram_protocol::socket socket(io, boost::asio::local::datagram_protocol::endpoint(path));
    ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
    const auto result = switchboard_run({"run"}, dir.path(), "hello\n");
    ::unsetenv("NOTIFY_SOCKET");
    INFO(result.err);
    REQUIRE(result.exit_code == 0);
    std::vector<std::string> notes;
    while (socket.available() > 0) {
        std::string buffer(4096, '\0');
        buffer.resize(socket.receive(boost::asio::buffer(buffer)));
        notes.push_back(buffer);
    }
    REQUIRE(notes.size() == 2);
    CHECK(notes[0].rfind("READY=1\n", 0) == 0);
    CHECK(notes[1].rfind("STOPPING=1\n", 0) == 0);
}
