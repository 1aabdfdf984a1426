// Reloading a running host: the real `switchboard` binary with the discord connector against the Discord sandbox,
// the sqlite store and the ledger bot (which records every message it handles). A reload that applies changes
// routes and bots without touching a connection that did not change, loads a changed plugin file beside the old
// one, and reconnects a changed connection, which recovers from where the old one was; a reload that fails
// changes nothing and says why in the log, the metrics and the API's answer.
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/datagram_protocol.hpp>
#include <catch2/catch.hpp>
#include <csignal>
#include <regex>
#include <set>
#include <sstream>

#include "background_process.hpp"
#include "discord_sandbox.hpp"
#include "http_client.hpp"
#include "ledger_reader.hpp"
#include "test_support.hpp"

using namespace switchboard::testing_support;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kSwitchboard = fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";
const fs::path kLedgerV1 = fs::path(SWITCHBOARD_TEST_BIN_DIR).parent_path() / "tests" / "plugins" / "bot_ledger.so";
const fs::path kLedgerV2 = fs::path(SWITCHBOARD_TEST_BIN_DIR).parent_path() / "tests" / "plugins-v2" / "bot_ledger.so";
const std::string kToken = "reload-test-token";

// Puts @p from at @p to as a deployment would: written beside it, then renamed over it (the running host keeps
// the file it mapped).
void install(const fs::path& from, const fs::path& to) {
    const fs::path next = to.string() + ".next";
    fs::copy_file(from, next, fs::copy_options::overwrite_existing);
    fs::rename(next, to);
}

// The test's config: the store @p store (`PLUGIN, SETTINGS...`), the discord connection (with @p connection_extra
// settings), channels 100..102, the ledger bot
// on @p ledger_channels, then @p rest (more top-level sections). Plugins come from @p plugins (the ledger bot) and
// the default directories.
std::string config(const DiscordSandbox& sandbox, const fs::path& plugins, bool admin, const std::string& store,
                   const std::string& connection_extra, const std::string& ledger_channels, const std::string& rest) {
    return "switchboard:\n"
           "  plugin_path: [\"" +
           plugins.string() + "\"]\n" + (admin ? "  admin: { listen: \"127.0.0.1:0\", token: " + kToken + " }\n" : "") +
           "store: { plugin: " + store +
           " }\n"
           "connections:\n"
           "  - name: discord\n"
           "    plugin: discord\n"
           "    token: sandbox-token\n"
           "    api_base: " +
           sandbox.api_base() +
           "\n"
           "    reconnect_min: 100ms\n" +
           connection_extra +
           "    recovery: { policy: discord-backfill }\n"
           "channels:\n"
           "  general: { connection: discord, id: \"100\" }\n"
           "  random: { connection: discord, id: \"101\" }\n"
           "  dev: { connection: discord, id: \"102\" }\n"
           "bots:\n"
           "  - { plugin: ledger, channels: " +
           ledger_channels + " }\n" + rest;
}

// The host, started on dir/switchboard.yaml; stopped (SIGTERM) when it goes.
struct Host {
    explicit Host(const TempDir& dir)
        : process(kSwitchboard, {"run", "-c", (dir / "switchboard.yaml").string()}, dir.path(), "host") {}

    // Waits for the admin server's port in the log.
    void find_admin() {
        static const std::regex listening(R"(admin: listening on http://127\.0\.0\.1:(\d+))");
        std::smatch match;
        std::string err;
        REQUIRE(wait_until(
            [&] {
                err = process.err();
                return std::regex_search(err, match, listening) || !process.running();
            },
            std::chrono::seconds(20)));
        REQUIRE(std::regex_search(err, match, listening));
        port = std::stoi(match[1]);
    }

    HttpResponse get(const std::string& target) const {
        return http_request(port, "GET", target, {}, {{"Authorization", "Bearer " + kToken}});
    }
    HttpResponse reload() const {
        return http_request(port, "POST", "/api/reload", "", {{"Authorization", "Bearer " + kToken}});
    }

    BackgroundProcess process;
    int port = 0;
};

// The value of the sample line that starts with @p series in Prometheus text, or -1.
double sample(const std::string& metrics, const std::string& series) {
    const auto at = metrics.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    return std::stod(metrics.substr(at + series.size() + 2));
}

bool session_up(const DiscordSandbox& sandbox) {
    const json sessions = sandbox.control("GET", "/sessions");  // kept: the loop below reads into it
    for (const auto& session : sessions["sessions"])
        if (session.value("attached", false)) return true;
    return false;
}

// What the ledger recorded for channel @p id, in order (empty until the host made its tables).
std::vector<std::string> ledger_texts(const fs::path& db, const std::string& id) {
    if (!fs::exists(db)) return {};
    try {
        return LedgerReader(db).texts("discord/" + id);
    } catch (const std::exception&) {
        return {};
    }
}

// The lines of the host's memory map that name a file whose path contains @p part.
std::vector<std::string> mapped(int pid, const std::string& part) {
    std::vector<std::string> lines;
    std::istringstream maps(read_file("/proc/" + std::to_string(pid) + "/maps"));
    for (std::string line; std::getline(maps, line);)
        if (line.find(part) != std::string::npos) lines.push_back(line);
    return lines;
}

std::vector<std::string> strings(const json& list) { return list.get<std::vector<std::string>>(); }

}  // namespace

// A reload that fails changes nothing, and one that applies changes routes and bots, loads a changed plugin file
// beside the old one, and leaves an unchanged connection alone.
TEST_CASE("reloads refused and applied, a plugin file swapped, the connection untouched", "[reload]") {
    TempDir dir;
    DiscordSandbox sandbox(dir.path());
    const fs::path plugins = dir / "plugins";
    fs::create_directories(plugins);
    install(kLedgerV1, plugins / "bot_ledger.so");
    const fs::path yaml = dir / "switchboard.yaml";
    const std::string v1 = config(sandbox, plugins, true, "sqlite, path: data/switchboard.db", "", "[general]", "");
    write_file(yaml, v1);
    const fs::path db = dir / "data/switchboard.db";
    Host host(dir);
    host.find_admin();
    INFO(host.process.err());
    REQUIRE(wait_until([&] { return session_up(sandbox); }, std::chrono::seconds(20)));
    sandbox.control("POST", "/messages", {{"channel_id", "100"}, {"content", "one"}});
    REQUIRE(wait_until([&] { return ledger_texts(db, "100").size() == 1; }, std::chrono::seconds(20)));

    // Failures first, each answered with its reason, while version 1 keeps running.
    write_file(yaml, v1 + "routes: [ { from: general\n");
    HttpResponse answer = host.reload();
    CHECK(answer.status == 422);
    CHECK(answer.json()["error"] == "invalid_config");
    REQUIRE(!answer.json()["problems"].empty());
    CHECK(answer.json()["problems"][0].get<std::string>().find(yaml.string() + ":") == 0);

    write_file(yaml, config(sandbox, plugins, true, "sqlite, path: data/other.db", "", "[general]", ""));
    answer = host.reload();
    CHECK(answer.status == 409);
    CHECK(answer.json()["error"] == "cannot_change");
    CHECK(answer.body.find("store cannot change by reload") != std::string::npos);

    install(RELOAD_FIXTURE_BOT, plugins / "bot_fixture.so");
    write_file(yaml, v1 + "  - { plugin: fixture-bot, fail: true }\n");
    answer = host.reload();
    CHECK(answer.status == 422);
    CHECK(answer.json()["error"] == "create_failed");
    CHECK(answer.json()["message"].get<std::string>().find("asked to fail") != std::string::npos);

    write_file(yaml, v1);
    write_file(plugins / "bot_ledger.so.next", "not a shared library");
    fs::rename(plugins / "bot_ledger.so.next", plugins / "bot_ledger.so");
    answer = host.reload();
    CHECK(answer.status == 422);
    CHECK(answer.json()["error"] == "plugin_refused");
    CHECK(answer.body.find("bot_ledger.so") != std::string::npos);

    std::string metrics = host.get("/metrics").body;
    CHECK(sample(metrics, R"(switchboard_reloads_total{result="failed"})") == 4);
    CHECK(sample(metrics, R"(switchboard_reloads_total{result="ok"})") == 0);
    CHECK(sample(metrics, "switchboard_last_reload_success") == 0);
    CHECK(host.process.err().find("reload failed (plugin_refused)") != std::string::npos);
    sandbox.control("POST", "/messages", {{"channel_id", "100"}, {"content", "two"}});
    REQUIRE(wait_until([&] { return ledger_texts(db, "100").size() == 2; }, std::chrono::seconds(20)));
    CHECK(ledger_texts(db, "100")[1] == "two");  // version 1 handled it

    // Now version 2 of the ledger bot, an echo bot on `random`, and a route from `random` to a group of `general`.
    install(kLedgerV2, plugins / "bot_ledger.so");
    write_file(yaml, config(sandbox, plugins, true, "sqlite, path: data/switchboard.db", "", "[general]",
                            "  - { plugin: echo, channels: [random], prefix: \"echo: \" }\n"
                            "groups:\n"
                            "  lobby: { members: [general] }\n"
                            "routes:\n"
                            "  - { from: random, to: { group: lobby } }\n"));
    answer = host.reload();
    REQUIRE(answer.status == 200);
    const json summary = answer.json();
    CHECK(summary["result"] == "ok");
    CHECK(strings(summary["connections"]["kept"]) == std::vector<std::string>{"discord"});
    CHECK(strings(summary["bots"]["changed"]) == std::vector<std::string>{"ledger"});
    CHECK(strings(summary["bots"]["added"]) == std::vector<std::string>{"echo"});
    CHECK(strings(summary["plugins_changed"]) == std::vector<std::string>{"ledger"});
    CHECK(summary["routing_changed"] == true);

    sandbox.control("POST", "/messages", {{"channel_id", "100"}, {"content", "three"}});
    sandbox.control("POST", "/messages", {{"channel_id", "101"}, {"content", "hello"}});
    REQUIRE(wait_until([&] { return ledger_texts(db, "100").size() == 3; }, std::chrono::seconds(20)));
    CHECK(ledger_texts(db, "100")[2] == "v2 three");  // new work goes to the new library
    json sent;
    REQUIRE(wait_until(
        [&] {
            sent = sandbox.control("GET", "/sent")["messages"];
            return sent.size() == 2;
        },
        std::chrono::seconds(20)));
    std::set<std::pair<std::string, std::string>> posted;
    for (const auto& m : sent) posted.emplace(m["channel_id"].get<std::string>(), m["content"].get<std::string>());
    INFO(sent.dump());
    CHECK(posted == std::set<std::pair<std::string, std::string>>{{"101", "echo: hello"}, {"100", "<Alice> hello"}});

    // The connection was not touched: one gateway connection, still up.
    const json stats = sandbox.control("GET", "/stats?log=0");
    CHECK(stats["gateway_connections"] == 1);
    CHECK(stats["identifies"] == 1);
    const json status = host.get("/api/status").json();
    CHECK(status["connections"][0]["state"] == "connected");
    for (const auto& plugin : status["plugins"])
        if (plugin["name"] == "ledger") CHECK(plugin["version"] == "2.0.0");
    metrics = host.get("/metrics").body;
    CHECK(sample(metrics, R"(switchboard_reloads_total{result="ok"})") == 1);
    CHECK(sample(metrics, "switchboard_last_reload_success") == 1);

    // The old library drained and was unloaded; the new one is mapped from its private copy.
    CHECK(mapped(host.process.pid(), (plugins / "bot_ledger.so").string()).empty());
    CHECK_FALSE(mapped(host.process.pid(), "bot_ledger.").empty());
    CHECK(host.process.stop() == 0);
}

// Under a burst, SIGHUP reconnects a changed connection, which recovers from its cursor: every message is handled
// exactly once, in order.
TEST_CASE("SIGHUP under load reconnects a changed connection and loses or doubles nothing", "[reload]") {
    TempDir dir;
    DiscordSandbox sandbox(dir.path(), {"--route-limit", "1000"});
    const std::string all = "[general, random, dev]";
    // The echo bot answers in `dev`: its replies are in flight while the connection is replaced.
    const std::string echo = "  - { plugin: echo, channels: [dev], prefix: \"echo: \" }\n";
    write_file(dir / "switchboard.yaml",
               config(sandbox, kLedgerV1.parent_path(), false, "sqlite, path: data/switchboard.db", "", all, echo));
    const fs::path db = dir / "data/switchboard.db";
    // As under systemd: what the host tells it arrives on this socket.
    boost::asio::io_context io;
    const std::string notify_path = (dir / "notify.sock").string();
    boost::asio::local::datagram_protocol::socket notify(io,
                                                         boost::asio::local::datagram_protocol::endpoint(notify_path));
    ::setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
    Host host(dir);
    ::unsetenv("NOTIFY_SOCKET");
    INFO(host.process.err());
    REQUIRE(wait_until([&] { return session_up(sandbox); }, std::chrono::seconds(20)));

    const std::vector<std::string> channels = {"100", "101", "102"};
    const auto burst = [&](const std::string& prefix) {
        for (const auto& channel : channels)
            sandbox.control("POST", "/messages", {{"channel_id", channel}, {"count", 150}, {"content_prefix", prefix}});
    };
    burst("a ");
    write_file(dir / "switchboard.yaml",
               config(sandbox, kLedgerV1.parent_path(), false, "sqlite, path: data/switchboard.db",
                      "    reconnect_max: 2s\n", all, echo));
    host.process.signal(SIGHUP);
    burst("b ");
    REQUIRE(wait_until([&] { return host.process.err().find("reload ok (SIGHUP)") != std::string::npos; },
                       std::chrono::seconds(30)));
    burst("c ");

    std::vector<std::string> expected;
    for (const std::string prefix : {"a ", "b ", "c "})
        for (int i = 1; i <= 150; ++i) expected.push_back(prefix + std::to_string(i));
    for (const auto& channel : channels) {
        INFO("channel " << channel);
        REQUIRE(
            wait_until([&] { return ledger_texts(db, channel).size() >= expected.size(); }, std::chrono::seconds(30)));
        CHECK(ledger_texts(db, channel) == expected);
    }
    CHECK(LedgerReader(db).seen_twice().empty());
    // Every message in `dev` got its one answer: none lost in the hand-over, none sent twice.
    json answers;
    const bool all_answered = wait_until(
        [&] {
            answers = sandbox.control("GET", "/sent?channel_id=102")["messages"];
            return answers.size() >= expected.size();
        },
        std::chrono::seconds(30));
    INFO(answers.size() << " answers; the host's log then:\n" << host.process.err());
    REQUIRE(all_answered);
    std::multiset<std::string> answered;
    for (const auto& answer : answers) answered.insert(answer["content"].get<std::string>());
    std::multiset<std::string> expected_answers;
    for (const auto& text : expected) expected_answers.insert("echo: " + text);
    CHECK(answered == expected_answers);
    const std::string log = host.process.err();
    CHECK(log.find(R"("changed":["discord"])") != std::string::npos);
    // The replacement took over from the old connection's saved state: a second gateway connection, which resumed
    // the old session where it was (the sandbox keeps a session resumable after its socket closes); the recovery
    // policy backfilled from the cursors on top, and dedup dropped the overlap.
    const json stats = sandbox.control("GET", "/stats?log=0");
    CHECK(stats["gateway_connections"] == 2);
    CHECK(stats["identifies"] == 1);
    CHECK(stats["resumes"] == 1);
    CHECK(host.process.stop() == 0);
    std::vector<std::string> notes;
    while (notify.available() > 0) {
        std::string note(4096, '\0');
        note.resize(notify.receive(boost::asio::buffer(note)));
        notes.push_back(note.substr(0, note.find('\n')));
    }
    CHECK(notes == std::vector<std::string>{"READY=1", "RELOADING=1", "READY=1", "STOPPING=1"});
}

TEST_CASE("a reload starts an added connection and stops a removed one, leaving the other alone", "[reload]") {
    TempDir dir;
    DiscordSandbox sandbox(dir.path());
    const fs::path backup_dir = dir / "backup";
    fs::create_directories(backup_dir);
    DiscordSandbox backup(backup_dir);
    const auto yaml = [&](bool with_backup) {
        const auto connection = [](const std::string& name, const DiscordSandbox& on) {
            return "  - { name: " + name + ", plugin: discord, token: sandbox-token, api_base: \"" + on.api_base() +
                   "\", reconnect_min: 100ms }\n";
        };
        return "switchboard:\n"
               "  admin: { listen: \"127.0.0.1:0\", token: " +
               kToken +
               " }\n"
               "store: { plugin: memory }\n"
               "connections:\n" +
               connection("discord", sandbox) + (with_backup ? connection("backup", backup) : "") +
               "channels:\n"
               "  general: { connection: discord, id: \"100\" }\n" +
               (with_backup ? "  spare: { connection: backup, id: \"100\" }\n" : "") +
               "bots:\n"
               "  - { plugin: echo }\n";
    };
    write_file(dir / "switchboard.yaml", yaml(false));
    Host host(dir);
    host.find_admin();
    INFO(host.process.err());
    REQUIRE(wait_until([&] { return session_up(sandbox); }, std::chrono::seconds(20)));

    write_file(dir / "switchboard.yaml", yaml(true));
    HttpResponse answer = host.reload();
    REQUIRE(answer.status == 200);
    CHECK(strings(answer.json()["connections"]["added"]) == std::vector<std::string>{"backup"});
    CHECK(strings(answer.json()["connections"]["kept"]) == std::vector<std::string>{"discord"});
    REQUIRE(wait_until([&] { return session_up(backup); }, std::chrono::seconds(20)));
    backup.control("POST", "/messages", {{"channel_id", "100"}, {"content", "ping"}});
    REQUIRE(wait_until([&] { return backup.control("GET", "/sent")["messages"].size() == 1; },
                       std::chrono::seconds(20)));  // the echo bot answers on the new connection
    REQUIRE(
        wait_until([&] { return host.get("/api/status").json()["connections"].size() == 2; }, std::chrono::seconds(5)));

    write_file(dir / "switchboard.yaml", yaml(false));
    answer = host.reload();
    REQUIRE(answer.status == 200);
    CHECK(strings(answer.json()["connections"]["removed"]) == std::vector<std::string>{"backup"});
    REQUIRE(wait_until([&] { return backup.control("GET", "/stats?log=0")["gateway_open"] == 0; },
                       std::chrono::seconds(20)));
    const json status = host.get("/api/status").json();
    REQUIRE(status["connections"].size() == 1);
    CHECK(status["connections"][0]["name"] == "discord");
    CHECK(status["connections"][0]["state"] == "connected");
    CHECK(sandbox.control("GET", "/stats?log=0")["gateway_connections"] == 1);
    CHECK(host.process.stop() == 0);
}
