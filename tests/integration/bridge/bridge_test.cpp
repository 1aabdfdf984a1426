// examples/bridge: the example's own bridge.yaml run by the real `switchboard` binary against a real InspIRCd, the
// Discord sandbox and the console (the host's standard input and output). One message from each side must reach the
// two others once, as "<author> text", and never come back to its origin nor loop: InspIRCd echoes the bridge's own
// PRIVMSGs (echo-message) and the sandbox dispatches the bridge's own messages as MESSAGE_CREATE, as Discord does.

#include "discord_sandbox.hpp"
#include "irc_server.hpp"
#include "irc_test_client.hpp"
#include "process.hpp"
#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

using namespace switchboard::testing_support;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace bp = boost::process;

namespace {

const fs::path kConfig = fs::path(SWITCHBOARD_TEST_SOURCE_DIR) / "examples" / "bridge" / "bridge.yaml";
const fs::path kSwitchboard = fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";
const std::string kNick = "bridgebot";
const std::string kIrcChannel = "#bridge";
const std::string kDiscordChannel = "100";  // the sandbox's #general

/// The environment bridge.yaml reads (README.md of the example), pointing at the local servers.
void point_bridge_at(const std::string& irc_server, const std::string& discord_api_base) {
    ::setenv("IRC_SERVER", irc_server.c_str(), 1);
    ::setenv("IRC_TLS", "false", 1);
    ::setenv("IRC_NICK", kNick.c_str(), 1);
    ::setenv("IRC_CHANNEL", kIrcChannel.c_str(), 1);
    ::setenv("DISCORD_TOKEN", "sandbox-token", 1);
    ::setenv("DISCORD_API_BASE", discord_api_base.c_str(), 1);
    ::setenv("DISCORD_CHANNEL_ID", kDiscordChannel.c_str(), 1);
    ::setenv("USER", "carol", 1);  // who speaks on the console
}

/// `switchboard run -c bridge.yaml` in @p dir, with a pipe on its standard input (the console); stopped (SIGTERM,
/// then SIGKILL) when it goes.
class BridgeHost {
public:
    explicit BridgeHost(const fs::path& dir)
        : dir_(dir),
          child_(kSwitchboard.string(), bp::args({"run", "-c", kConfig.string()}), bp::start_dir(dir.string()),
                 bp::std_in < input_, bp::std_out > (dir / "host.out").string(),
                 bp::std_err > (dir / "host.err").string()) {}
    ~BridgeHost() { stop(); }

    /// Types @p line on the console.
    void say(const std::string& line) {
        input_ << line << '\n';
        input_.flush();
    }

    /// SIGTERM and wait; the exit code, or -1 when it had to be killed.
    int stop() {
        if (!child_.valid() || stopped_) return exit_code_;
        stopped_ = true;
        if (child_.running()) ::kill(child_.id(), SIGTERM);
        if (!wait_for_exit(child_, 20s)) {
            ::kill(child_.id(), SIGKILL);
            wait_for_exit(child_, 5s);
        } else {
            exit_code_ = child_.exit_code();
        }
        std::error_code ignored;
        child_.wait(ignored);
        return exit_code_;
    }

    /// The console: what the host wrote on standard output, line by line.
    [[nodiscard]] std::vector<std::string> console_lines() const {
        std::vector<std::string> lines;
        std::istringstream in(read_file(dir_ / "host.out"));
        for (std::string line; std::getline(in, line);) lines.push_back(line);
        return lines;
    }
    [[nodiscard]] std::size_t console_count(const std::string& line) const {
        const auto lines = console_lines();
        return static_cast<std::size_t>(std::count(lines.begin(), lines.end(), line));
    }
    [[nodiscard]] std::string log() const { return read_file(dir_ / "host.err"); }

private:
    fs::path dir_;
    bp::opstream input_;
    bp::child child_;
    bool stopped_ = false;
    int exit_code_ = -1;
};

/// What the bridge posted in the Discord channel, in order.
std::vector<std::string> discord_sent(const DiscordSandbox& sandbox) {
    std::vector<std::string> texts;
    const nlohmann::json sent = sandbox.control("GET", "/sent?channel_id=" + kDiscordChannel);
    for (const auto& message : sent["messages"]) texts.push_back(message.value("content", ""));
    return texts;
}

std::size_t count(const std::vector<std::string>& texts, const std::string& text) {
    return static_cast<std::size_t>(std::count(texts.begin(), texts.end(), text));
}

/// Polls the sandbox every 100 ms (a faster poll would crowd its request log) until @p condition holds.
bool poll(const std::function<bool()>& condition, std::chrono::seconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(100ms);
    }
    return true;
}

}  // namespace

TEST_CASE("switchboard check accepts the bridge example, and its routes leave out the origin", "[irc][discord]") {
    TempDir dir;
    point_bridge_at("127.0.0.1:6667", "http://127.0.0.1:5123/api/v10");
    const auto checked = run_process(kSwitchboard, {"check", "-c", kConfig.string()}, dir.path());
    INFO(checked.out << checked.err);
    CHECK(checked.exit_code == 0);
    CHECK(checked.out.find(": ok:") != std::string::npos);

    // The dry run of a message from each room: the two other rooms, never the room it came from.
    const std::map<std::string, std::vector<std::string>> others = {
        {"irc-room", {"discord-room", "console-room"}},
        {"discord-room", {"irc-room", "console-room"}},
        {"console-room", {"irc-room", "discord-room"}},
    };
    for (const auto& [from, to] : others) {
        const auto plan = run_process(kSwitchboard, {"route", "-c", kConfig.string(), "--from", from}, dir.path());
        INFO(from << ":\n" << plan.out << plan.err);
        CHECK(plan.exit_code == 0);
        for (const auto& room : to) CHECK(plan.out.find(room) != std::string::npos);
        CHECK(plan.out.find(from) == plan.out.rfind(from));  // named once: as the origin, not as a recipient
    }
}

/// InspIRCd and the sandbox on loopback, alice in the IRC channel, and the bridge running, connected on all three
/// sides. Members go in reverse: the host stops first.
struct RunningBridge {
    RunningBridge() {
        INFO(irc.why());
        REQUIRE(irc.start());
        sandbox = std::make_unique<DiscordSandbox>(dir.path());
        point_bridge_at(irc.address(), sandbox->api_base());
        alice = irc.client("alice");
        REQUIRE(alice);
        REQUIRE(alice->join(kIrcChannel));
        host = std::make_unique<BridgeHost>(dir.path());
        const bool joined =
            alice->wait_for([](const IrcTestLine& l) { return l.command == "JOIN" && l.nick() == kNick; }, 30s)
                .has_value();
        const bool discord_up = poll([&] { return sandbox->control("GET", "/stats?log=0")["identifies"] == 1; }, 30s);
        // Both connections report "connected" once they are in: IRC after its joins, Discord at READY.
        const bool connected = poll([&] {
            const std::string log = host->log();
            return log.find("connected: registered as " + kNick) != std::string::npos &&
                   log.find("[discord] connected") != std::string::npos;
        });
        INFO("host log:\n" << host->log());
        REQUIRE(joined);
        REQUIRE(discord_up);
        REQUIRE(connected);
    }

    /// The lines the bridge printed on the console as relays, in order.
    [[nodiscard]] std::vector<std::string> console_relays() const {
        std::vector<std::string> relayed;
        for (const auto& line : host->console_lines()) {
            if (line.rfind("<bridge> ", 0) == 0) relayed.push_back(line);
        }
        return relayed;
    }

    IrcServer irc{IrcServerKind::inspircd};
    TempDir dir;
    std::unique_ptr<DiscordSandbox> sandbox;
    std::unique_ptr<IrcTestClient> alice;
    std::unique_ptr<BridgeHost> host;
};

bool inspircd_missing() {
    if (irc_server_binary(IrcServerKind::inspircd)) return false;
    WARN("inspircd is not installed; run tools/deps.sh test");
    return true;
}

TEST_CASE("the bridge relays IRC, Discord and console messages to the other two, once, without echo or loop",
          "[irc][discord]") {
    if (inspircd_missing()) return;
    RunningBridge bridge;
    auto& alice = bridge.alice;
    auto& host = *bridge.host;
    auto& sandbox = *bridge.sandbox;
    const auto& dir = bridge.dir;

    const std::string from_irc = "<alice> hello from irc";
    const std::string from_discord = "<Bob> hello from discord";  // the sandbox's user 2002, by global name
    const std::string from_console = "<carol> hello from console";

    alice->privmsg(kIrcChannel, "hello from irc");
    CHECK(poll([&] { return count(discord_sent(sandbox), from_irc) == 1; }));
    CHECK(poll([&] { return host.console_count("<bridge> " + from_irc) == 1; }));

    sandbox.control("POST", "/messages",
                    {{"author_id", "2002"}, {"channel_id", kDiscordChannel}, {"content", "hello from discord"}});
    CHECK(alice->wait_for_texts_from(kNick, 1, 20s));
    CHECK(poll([&] { return host.console_count("<bridge> " + from_discord) == 1; }));

    host.say("hello from console");
    CHECK(alice->wait_for_texts_from(kNick, 2, 20s));
    CHECK(poll([&] { return count(discord_sent(sandbox), from_console) == 1; }));

    // A quiet period: an echo or a loop would show up as more lines in one of the three rooms.
    alice->drain(3s);
    INFO("console:\n" << read_file(dir / "host.out"));
    CHECK(alice->texts_from(kNick) == std::vector<std::string>{from_discord, from_console});
    CHECK(discord_sent(sandbox) == std::vector<std::string>{from_irc, from_console});
    CHECK(bridge.console_relays() == std::vector<std::string>{"<bridge> " + from_irc, "<bridge> " + from_discord});
    // The Discord channel holds Bob's message and the bridge's two relays, nothing else.
    CHECK(sandbox.control("GET", "/messages?channel_id=" + kDiscordChannel)["messages"].size() == 3);
    CHECK(host.stop() == 0);
}

TEST_CASE("what is said on Discord while its gateway is away reaches IRC and the console once, after the resume",
          "[irc][discord]") {
    if (inspircd_missing()) return;
    RunningBridge bridge;
    auto& sandbox = *bridge.sandbox;
    sandbox.control("POST", "/gateway/drop", nlohmann::json::object());
    // Dispatched into the dropped session: the bridge gets it when it resumes (the sandbox replays it).
    sandbox.control("POST", "/messages",
                    {{"author_id", "2002"}, {"channel_id", kDiscordChannel}, {"content", "said during the drop"}});
    INFO("host log:\n" << bridge.host->log());
    REQUIRE(poll([&] { return sandbox.control("GET", "/stats?log=0")["resumes"] >= 1; }, 30s));
    CHECK(bridge.alice->wait_for_texts_from(kNick, 1, 20s));
    sandbox.control("POST", "/messages",
                    {{"author_id", "2002"}, {"channel_id", kDiscordChannel}, {"content", "after the resume"}});
    CHECK(bridge.alice->wait_for_texts_from(kNick, 2, 20s));

    bridge.alice->drain(3s);
    const std::vector<std::string> expected = {"<Bob> said during the drop", "<Bob> after the resume"};
    CHECK(bridge.alice->texts_from(kNick) == expected);
    CHECK(bridge.console_relays() == std::vector<std::string>{"<bridge> " + expected[0], "<bridge> " + expected[1]});
    CHECK(discord_sent(sandbox).empty());
    CHECK(sandbox.control("GET", "/stats?log=0")["identifies"] == 1);  // resumed, not a new session
    CHECK(bridge.host->stop() == 0);
}
