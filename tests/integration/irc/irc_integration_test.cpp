// The IRC connector and irc-replay against real servers: InspIRCd (IRCv3 tags, msgid, chanhistory) and ngIRCd (no
// history), each started by the test on a free loopback port, with the real `switchboard` binary running the echo
// bot and a tiny test client playing the people in the channel.

#include "irc_server.hpp"
#include "irc_test_client.hpp"
#include "process.hpp"
#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <fstream>

using namespace switchboard::testing_support;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace bp = boost::process;

namespace {

const fs::path kSwitchboard = fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";
const std::string kBot = "echobot";

/// The real `switchboard run` in a directory of its own; stopped (SIGTERM, then SIGKILL) when it goes.
class Bot {
public:
    Bot(const fs::path& dir, const std::string& config) : dir_(dir) {
        std::ofstream(dir / "switchboard.yaml", std::ios::binary) << config;
    }
    ~Bot() { stop(); }

    void start() {
        ++runs_;
        child_ = std::make_unique<bp::child>(
            kSwitchboard.string(), bp::args({"run", "-c", "switchboard.yaml", "--log-level", "debug"}),
            bp::start_dir(dir_.string()), bp::std_in < bp::null, bp::std_out > log_path("out").string(),
            bp::std_err > log_path("err").string());
    }
    /// SIGTERM and wait for a clean exit; returns the exit code (or -1 when it had to be killed).
    int stop() {
        if (!child_) return 0;
        int code = -1;
        if (child_->running()) ::kill(child_->id(), SIGTERM);
        if (wait_for_exit(*child_, 15s)) {
            code = child_->exit_code();
        } else {
            ::kill(child_->id(), SIGKILL);
            wait_for_exit(*child_, 5s);
        }
        std::error_code ignored;
        child_->wait(ignored);
        child_.reset();
        return code;
    }
    /// SIGKILL: a crash, nothing flushed or closed.
    void crash() {
        if (!child_) return;
        ::kill(child_->id(), SIGKILL);
        wait_for_exit(*child_, 5s);
        std::error_code ignored;
        child_->wait(ignored);
        child_.reset();
    }
    [[nodiscard]] bool running() { return child_ && child_->running(); }
    /// Standard error (the log) of every run so far.
    [[nodiscard]] std::string log() const {
        std::string all;
        for (int run = 1; run <= runs_; ++run) all += read_file(dir_ / ("switchboard-" + std::to_string(run) + ".err"));
        return all;
    }
    [[nodiscard]] bool log_has(const std::string& what) const { return log().find(what) != std::string::npos; }

private:
    fs::path log_path(const std::string& stream) const {
        return dir_ / ("switchboard-" + std::to_string(runs_) + "." + stream);
    }

    fs::path dir_;
    int runs_ = 0;
    std::unique_ptr<bp::child> child_;
};

std::string bot_config(const IrcServer& server, const std::string& policy, const std::string& extra = "",
                       const std::string& address = "") {
    return "store: { plugin: sqlite, path: data/switchboard.db }\n"
           "connections:\n"
           "  - name: irc\n"
           "    plugin: irc\n"
           "    server: " + (address.empty() ? server.address() : address) + "\n"
           "    nick: " + kBot + "\n"
           "    join: [\"#ops\"]\n"
           "    reconnect_min: 200ms\n"
           "    reconnect_max: 1s\n"
           "    recovery_wait: 5s\n" +
           // One send in flight: the echoes leave in the order the bot handled the messages, so the order the
           // client sees them in is the order the bot received them in.
           (extra.empty() ? std::string("    limits: { concurrency: 1 }\n") : extra) +
           "    recovery: { policy: " + policy + " }\n"
           "channels:\n"
           "  ops: { connection: irc, id: \"#ops\" }\n"
           "bots:\n"
           "  - { plugin: echo, channels: [ops], prefix: \"echo: \" }\n";
}

/// Starts @p kind, or skips the test with the reason when the server is not installed.
std::unique_ptr<IrcServer> start_server(IrcServerKind kind, bool tls = false, bool flood_port = false) {
    auto server = std::make_unique<IrcServer>(kind, tls, flood_port);
    if (!irc_server_binary(kind)) {
        WARN(std::string(to_string(kind)) + " is not installed; run tools/deps.sh test");
        return nullptr;
    }
    INFO(server->why());
    REQUIRE(server->start());
    return server;
}

/// A person in #ops (the channel's first member: an operator, who turns chanhistory's +H on where it exists).
std::unique_ptr<IrcTestClient> person(const IrcServer& server, const std::string& nick) {
    auto client = server.client(nick);
    REQUIRE(client);
    REQUIRE(client->join("#ops"));
    if (server.kind() == IrcServerKind::inspircd) {
        client->send("MODE #ops +H 100:1d");
        REQUIRE(client->wait_for([](const IrcTestLine& l) { return l.command == "MODE"; }, 5s));
    }
    return client;
}

bool wait_bot_joined(IrcTestClient& client, std::chrono::milliseconds timeout = 20s) {
    return client
        .wait_for([](const IrcTestLine& l) { return l.command == "JOIN" && l.nick() == kBot; }, timeout)
        .has_value();
}

// Fails the test with the bot's log when it does not join in time.
#define REQUIRE_JOINED(bot, client)                                      \
    do {                                                                  \
        if (!wait_bot_joined(client)) FAIL("the bot did not join:\n" + (bot).log()); \
    } while (false)

/// The echoes seen so far, in order.
std::vector<std::string> echoes(const IrcTestClient& client) { return client.texts_from(kBot); }

/// Every "echo: <prefix><i>" for i in [0, n) exactly once, in order.
void check_exactly_once_in_order(const std::vector<std::string>& seen, const std::string& prefix, int n) {
    std::vector<std::string> mine;
    for (const auto& text : seen) {
        if (text.rfind("echo: " + prefix, 0) == 0) mine.push_back(text);
    }
    std::vector<std::string> expected;
    for (int i = 0; i < n; ++i) expected.push_back("echo: " + prefix + std::to_string(i));
    CHECK(mine == expected);
}

}  // namespace

TEST_CASE("a message from a real IRC client reaches the bot and its echo reaches the client", "[irc][inspircd]") {
    auto server = start_server(IrcServerKind::inspircd);
    if (!server) return;
    auto alice = person(*server, "alice");
    TempDir dir;
    Bot bot(dir.path(), bot_config(*server, "irc-replay"));
    bot.start();
    REQUIRE_JOINED(bot, *alice);
    alice->privmsg("#ops", "hello from alice");
    INFO(bot.log());
    REQUIRE(alice->wait_for_texts_from(kBot, 1, 15s));
    CHECK(echoes(*alice) == std::vector<std::string>{"echo: hello from alice"});
    // a private message is answered privately
    alice->privmsg(kBot, "psst");
    auto reply = alice->wait_for([](const IrcTestLine& l) { return l.command == "PRIVMSG" && l.param(0) == "alice"; },
                                 15s);
    REQUIRE(reply);
    CHECK(reply->param(1) == "echo: psst");
    CHECK(bot.stop() == 0);
    CHECK(bot.log_has("connected: registered as echobot"));
}

TEST_CASE("after a KILL the bot rejoins and each message said meanwhile reaches it once, in order",
          "[irc][inspircd]") {
    auto server = start_server(IrcServerKind::inspircd);
    if (!server) return;
    auto alice = person(*server, "alice");
    auto oper = server->client("oper");
    REQUIRE(oper);
    oper->send(std::string("OPER ") + IrcServer::kOperName + " " + IrcServer::kOperPassword);
    REQUIRE(oper->wait_for([](const IrcTestLine& l) { return l.command == "381"; }, 5s));
    TempDir dir;
    Bot bot(dir.path(), bot_config(*server, "irc-replay"));
    bot.start();
    REQUIRE_JOINED(bot, *alice);
    for (int i = 0; i < 3; ++i) alice->privmsg("#ops", "before " + std::to_string(i));
    INFO(bot.log());
    REQUIRE(alice->wait_for_texts_from(kBot, 3, 15s));

    oper->send("KILL " + kBot + " :connection cut by the test");
    REQUIRE(alice->wait_for([](const IrcTestLine& l) { return l.command == "QUIT" && l.nick() == kBot; }, 10s));
    for (int i = 0; i < 10; ++i) alice->privmsg("#ops", "during " + std::to_string(i));

    REQUIRE_JOINED(bot, *alice);
    for (int i = 0; i < 3; ++i) alice->privmsg("#ops", "after " + std::to_string(i));
    REQUIRE(alice->wait_for_texts_from(kBot, 16, 30s));
    alice->drain(1500ms);  // nothing more may come: no duplicates
    const auto seen = echoes(*alice);
    CHECK(seen.size() == 16);
    check_exactly_once_in_order(seen, "before ", 3);
    check_exactly_once_in_order(seen, "during ", 10);
    check_exactly_once_in_order(seen, "after ", 3);
    // recovered lines come before what was said after the rejoin
    CHECK(std::find(seen.begin(), seen.end(), "echo: during 9") < std::find(seen.begin(), seen.end(), "echo: after 0"));
    CHECK(bot.stop() == 0);
    CHECK(bot.log_has("disconnected"));
    CHECK(bot.log_has("recovery: fetched"));
    CHECK(bot.log_has("stopped:"));
}

TEST_CASE("a bot killed with SIGKILL and restarted answers what was said while it was down, once, in order",
          "[irc][inspircd]") {
    auto server = start_server(IrcServerKind::inspircd);
    if (!server) return;
    auto alice = person(*server, "alice");
    TempDir dir;
    Bot bot(dir.path(), bot_config(*server, "irc-replay"));
    bot.start();
    REQUIRE_JOINED(bot, *alice);
    for (int i = 0; i < 5; ++i) alice->privmsg("#ops", "first " + std::to_string(i));
    INFO(bot.log());
    REQUIRE(alice->wait_for_texts_from(kBot, 5, 15s));
    alice->drain(500ms);  // let the last processed mark reach the store before the crash

    bot.crash();
    REQUIRE(alice->wait_for([](const IrcTestLine& l) { return l.command == "QUIT" && l.nick() == kBot; }, 10s));
    for (int i = 0; i < 8; ++i) alice->privmsg("#ops", "down " + std::to_string(i));

    bot.start();
    REQUIRE_JOINED(bot, *alice);
    REQUIRE(alice->wait_for_texts_from(kBot, 13, 30s));
    alice->drain(1500ms);
    const auto seen = echoes(*alice);
    CHECK(seen.size() == 13);
    check_exactly_once_in_order(seen, "first ", 5);
    check_exactly_once_in_order(seen, "down ", 8);
    CHECK(bot.stop() == 0);
}

TEST_CASE("on ngIRCd, which keeps no history, the gap from disconnect to rejoin is reported", "[irc][ngircd]") {
    auto server = start_server(IrcServerKind::ngircd);
    if (!server) return;
    auto alice = person(*server, "alice");
    auto oper = server->client("oper");
    REQUIRE(oper);
    oper->send(std::string("OPER ") + IrcServer::kOperName + " " + IrcServer::kOperPassword);
    REQUIRE(oper->wait_for([](const IrcTestLine& l) { return l.command == "381"; }, 5s));
    TempDir dir;
    Bot bot(dir.path(), bot_config(*server, "irc-replay"));
    bot.start();
    REQUIRE_JOINED(bot, *alice);
    alice->privmsg("#ops", "seen");
    INFO(bot.log());
    REQUIRE(alice->wait_for_texts_from(kBot, 1, 15s));

    oper->send("KILL " + kBot + " :connection cut by the test");
    REQUIRE(alice->wait_for([](const IrcTestLine& l) { return l.command == "QUIT" && l.nick() == kBot; }, 10s));
    alice->privmsg("#ops", "said while the bot was away");
    REQUIRE_JOINED(bot, *alice);
    REQUIRE(wait_until([&] { return bot.log_has("gap remains"); }, 15s));
    CHECK(bot.log_has("no_history"));
    CHECK(bot.log_has("are lost"));
    alice->privmsg("#ops", "back");
    REQUIRE(alice->wait_for([](const IrcTestLine& l) { return l.nick() == kBot && l.param(1) == "echo: back"; }, 15s));
    CHECK(bot.stop() == 0);
}

TEST_CASE("a 5,000-line burst is relayed with nothing lost and no flood disconnect", "[irc][inspircd]") {
    auto server = start_server(IrcServerKind::inspircd);
    if (!server) return;
    auto alice = person(*server, "alice");
    TempDir dir;
    Bot bot(dir.path(), bot_config(*server, "irc-replay", "    limits: { concurrency: 1, rate: 2000, burst: 200 }\n"));
    bot.start();
    REQUIRE_JOINED(bot, *alice);
    alice->drain(300ms);
    constexpr int kLines = 5000;
    std::string burst;
    for (int i = 0; i < kLines; ++i) burst += "PRIVMSG #ops :burst " + std::to_string(i) + "\r\n";
    alice->send_raw(burst);
    INFO(bot.log().substr(0, 20000));
    REQUIRE(alice->wait_for_texts_from(kBot, kLines, 100s));
    alice->drain(500ms);
    const auto seen = echoes(*alice);
    CHECK(seen.size() == static_cast<std::size_t>(kLines));
    check_exactly_once_in_order(seen, "burst ", kLines);
    CHECK_FALSE(bot.log_has("connection lost"));
    CHECK_FALSE(bot.log_has("Excess Flood"));
    CHECK(bot.stop() == 0);
}

TEST_CASE("hostile input through a real server leaves the connector running", "[irc][inspircd]") {
    auto server = start_server(IrcServerKind::inspircd);
    if (!server) return;
    auto alice = person(*server, "alice");
    TempDir dir;
    Bot bot(dir.path(), bot_config(*server, "irc-replay"));
    bot.start();
    REQUIRE_JOINED(bot, *alice);
    alice->privmsg("#ops", "\x01VERSION\x01");                          // CTCP
    alice->privmsg("#ops", "caf\xE9 in latin-1");                        // invalid UTF-8
    alice->privmsg("#ops", std::string(10'000, 'x'));                    // 10 kB (the server cuts it)
    alice->send_raw(std::string("\x01\x02\xff\xfe random bytes\r\n"));  // not a command
    alice->send_raw(std::string("PRIVMSG #ops :nul\0byte\r\n", 24));
    alice->privmsg(kBot, "\x01PING 123\x01");                            // CTCP to the bot
    alice->privmsg("#ops", "still alive");
    INFO(bot.log());
    REQUIRE(alice->wait_for([](const IrcTestLine& l) { return l.nick() == kBot && l.param(1) == "echo: still alive"; },
                            15s));
    for (const auto& text : echoes(*alice)) {
        CHECK(text.find('\x01') == std::string::npos);  // no CTCP was answered or echoed
        CHECK(text.find("caf") == std::string::npos);   // the latin-1 line was skipped, not mangled
    }
    CHECK(bot.log_has("not valid UTF-8"));
    CHECK(bot.running());
    CHECK(bot.stop() == 0);
}

TEST_CASE("the bot talks TLS to a server whose certificate it checks against tls_ca_file", "[irc][inspircd][tls]") {
    auto server = start_server(IrcServerKind::inspircd, true);
    if (!server) return;
    auto alice = person(*server, "alice");
    SECTION("trusted: it joins and answers") {
        TempDir dir;
        Bot bot(dir.path(),
                bot_config(*server, "irc-replay",
                           "    tls: true\n    tls_ca_file: " + server->certificate().string() + "\n",
                           server->tls_address()));
        bot.start();
        REQUIRE_JOINED(bot, *alice);
        alice->privmsg("#ops", "over tls");
        REQUIRE(alice->wait_for([](const IrcTestLine& l) { return l.nick() == kBot && l.param(1) == "echo: over tls"; },
                                15s));
        CHECK(bot.stop() == 0);
        CHECK(bot.log_has("(TLS)"));
    }
    SECTION("not trusted: it refuses the server and keeps trying") {
        TempDir dir;
        Bot bot(dir.path(), bot_config(*server, "irc-replay", "    tls: true\n", server->tls_address()));
        bot.start();
        REQUIRE(wait_until([&] { return bot.log_has("TLS handshake"); }, 15s));
        CHECK(bot.log_has("certificate verify failed"));
        CHECK_FALSE(alice->wait_for([](const IrcTestLine& l) { return l.command == "JOIN" && l.nick() == kBot; }, 1s));
        CHECK(bot.stop() == 0);
    }
}

TEST_CASE("the connector's default flood limit keeps the bot under a real server's Excess Flood kill",
          "[irc][inspircd][flood]") {
    auto server = start_server(IrcServerKind::inspircd, false, true);
    if (!server) return;
    auto alice = person(*server, "alice");  // on the unlimited port
    constexpr int kLines = 25;
    SECTION("default flood_rate (2 lines/s, burst 5): every echo arrives, paced, and the bot stays") {
        TempDir dir;
        Bot bot(dir.path(), bot_config(*server, "irc-replay", "    limits: { concurrency: 1 }\n", server->flood_address()));
        bot.start();
        REQUIRE_JOINED(bot, *alice);
        for (int i = 0; i < kLines; ++i) alice->privmsg("#ops", "paced " + std::to_string(i));
        REQUIRE(alice->wait_for_texts_from(kBot, 1, 15s));
        const auto first = std::chrono::steady_clock::now();
        REQUIRE(alice->wait_for_texts_from(kBot, kLines, 40s));
        const auto spread = std::chrono::steady_clock::now() - first;
        check_exactly_once_in_order(echoes(*alice), "paced ", kLines);
        // 5 at once, then 2 a second: the last of 25 leaves about 10 s after the first
        CHECK(spread >= 8s);
        CHECK_FALSE(bot.log_has("connection lost"));
        CHECK(bot.stop() == 0);
    }
    SECTION("control: without the limit the same burst gets the bot killed for Excess Flood") {
        TempDir dir;
        Bot bot(dir.path(), bot_config(*server, "irc-replay", "    flood_rate: 0\n    limits: { concurrency: 1 }\n",
                                       server->flood_address()));
        bot.start();
        REQUIRE_JOINED(bot, *alice);
        for (int i = 0; i < kLines; ++i) alice->privmsg("#ops", "unpaced " + std::to_string(i));
        REQUIRE(alice->wait_for(
            [](const IrcTestLine& l) {
                return l.command == "QUIT" && l.nick() == kBot && l.param(0).find("Excess Flood") != std::string::npos;
            },
            20s));
        CHECK(bot.stop() == 0);
    }
}

TEST_CASE("switchboard check reports bad irc settings at their line", "[irc]") {
    TempDir dir;
    std::ofstream(dir / "bad.yaml", std::ios::binary) << "store: { plugin: memory }\n"
                                                         "connections:\n"
                                                         "  - name: irc\n"
                                                         "    plugin: irc\n"
                                                         "    server: \"nope:99999\"\n"
                                                         "    join: [\"ops\", \"#ok key\"]\n"
                                                         "    sasl_user: x\n"
                                                         "    recovery: irc-replay\n"
                                                         "channels:\n"
                                                         "  ops: { connection: irc, id: \"#ops\" }\n";
    const auto result = run_process(kSwitchboard, {"check", "-c", "bad.yaml"}, dir.path());
    INFO(result.out + result.err);
    CHECK(result.exit_code == 2);
    const std::string all = result.out + result.err;
    CHECK(all.find("bad.yaml:5:5: error: connection 'irc': 'nope:99999' is not host or host:port") != std::string::npos);
    CHECK(all.find("bad.yaml:6:5: error: connection 'irc': 'ops' is not \"#channel\"") != std::string::npos);
    CHECK(all.find("bad.yaml:7:5: error: connection 'irc': set both sasl_user and sasl_password") != std::string::npos);
}

TEST_CASE("a server that stops answering is detected by the bot's own PINGs, and after it recovers nothing is lost",
          "[irc][inspircd][lag]") {
    auto server = start_server(IrcServerKind::inspircd);
    if (!server) return;
    auto alice = person(*server, "alice");
    TempDir dir;
    Bot bot(dir.path(), bot_config(*server, "irc-replay",
                                   "    ping_interval: 500ms\n    ping_timeout: 1s\n    limits: { concurrency: 1 }\n"));
    bot.start();
    REQUIRE_JOINED(bot, *alice);
    alice->privmsg("#ops", "before the freeze");
    REQUIRE(alice->wait_for_texts_from(kBot, 1, 15s));

    server->pause();
    // Said while the server is frozen: it reads them when it goes on, after the bot has given up on it.
    for (int i = 0; i < 5; ++i) alice->privmsg("#ops", "frozen " + std::to_string(i));
    const bool detected = wait_until([&] { return bot.log_has("no PONG within"); }, 15s);
    server->resume();
    REQUIRE(detected);
    REQUIRE_JOINED(bot, *alice);
    REQUIRE(alice->wait_for_texts_from(kBot, 6, 30s));
    alice->drain(1500ms);
    const auto seen = echoes(*alice);
    CHECK(seen.size() == 6);
    check_exactly_once_in_order(seen, "frozen ", 5);
    CHECK(bot.stop() == 0);
}
