// End to end: the real `switchboard` binary (telegram connector, telegram-offset, sqlite store, the ledger, echo and
// announce bots) against the Telegram sandbox. A burst with the host killed in the middle, a 429 storm, a blocked
// user in a group, a second poller, a rejected token, and a 25-hour outage on the sandbox clock.
#include <catch2/catch.hpp>
#include <fstream>
#include <map>

#include "background_process.hpp"
#include "ledger_reader.hpp"
#include "telegram_sandbox.hpp"
#include "test_support.hpp"

using namespace switchboard::testing_support;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kSwitchboard = fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";
const fs::path kTestPlugins = fs::path(SWITCHBOARD_TEST_BIN_DIR).parent_path() / "tests" / "plugins";
// The sandbox's default world: alice's and bob's private chats (chat id = user id), a group and a supergroup.
const std::vector<std::string> kChats = {"2001", "2002", "-100", "-1001000000001"};
constexpr std::int64_t kHourMs = 3600 * 1000;

std::string config(const TelegramSandbox& sandbox, const std::string& bots = "  - { plugin: ledger }\n",
                   const std::string& token = TelegramSandbox::kToken, const std::string& more = "") {
    return "switchboard:\n"
           "  plugin_path: [\"" +
           kTestPlugins.string() +
           "\"]\n"
           "store: { plugin: sqlite, path: data/switchboard.db }\n"
           "connections:\n"
           "  - name: telegram\n"
           "    plugin: telegram\n"
           "    token: \"" +
           token +
           "\"\n"
           "    api_base: " +
           sandbox.api_base() +
           "\n"
           "    poll_timeout: 2s\n"
           "    reconnect_min: 100ms\n"
           "    reconnect_max: 1s\n"
           "    recovery: { policy: telegram-offset }\n"
           "channels:\n"
           "  group: { connection: telegram, id: \"-100\" }\n"
           "  supergroup: { connection: telegram, id: \"-1001000000001\" }\n"
           "users:\n"
           "  alice: { connection: telegram, id: \"2001\" }\n"
           "  bob: { connection: telegram, id: \"2002\" }\n" +
           more + "bots:\n" + bots;
}

// A running host on the test's config; stopped (SIGTERM) when it goes. Its log is <name>.err in the directory.
struct Host {
    explicit Host(const TempDir& dir, const std::string& name = "host")
        : process(kSwitchboard, {"run", "-c", (dir / "switchboard.yaml").string()}, dir.path(), name) {}
    BackgroundProcess process;
};

std::size_t occurrences(const std::string& text, const std::string& what) {
    std::size_t n = 0;
    for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
    return n;
}

// Waits until the host reported @p count sessions (the first getUpdates of each answered).
bool connected(BackgroundProcess& host, const TelegramSandbox& sandbox, std::size_t count = 1) {
    if (wait_until([&] { return occurrences(host.err(), "connected: getUpdates answered") >= count; },
                   std::chrono::seconds(30)))
        return true;
    UNSCOPED_INFO("host: " << host.err() << "\nsandbox: " << sandbox.log());
    return false;
}

std::uint64_t handled(const fs::path& db) {
    if (!fs::exists(db)) return 0;
    try {
        LedgerReader ledger(db);
        std::uint64_t n = 0;
        for (const auto& chat : kChats) n += ledger.count("telegram/" + chat);
        return n;
    } catch (const std::exception&) {
        return 0;  // the host has not created its tables yet
    }
}

std::vector<std::string> numbered(const std::string& prefix, int count) {
    std::vector<std::string> texts;
    for (int i = 0; i < count; ++i) texts.push_back(prefix + std::to_string(i));
    return texts;
}

// What the bot sent, by text, counted.
std::map<std::string, int> sent_texts(const TelegramSandbox& sandbox) {
    std::map<std::string, int> texts;
    const json sent = sandbox.control("GET", "/sent");
    for (const auto& message : sent) ++texts[message["text"].get<std::string>()];
    return texts;
}

// Polls the sandbox every 100 ms until @p condition holds (a faster poll would crowd its request log).
bool poll_sandbox(const std::function<bool()>& condition, std::chrono::seconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return true;
}

}  // namespace

TEST_CASE("a burst of 2000 updates with the host killed in the middle is handled once each in order and confirmed",
          "[telegram][recovery]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    write_file(dir / "switchboard.yaml", config(sandbox));
    const fs::path db = dir / "data/switchboard.db";
    const std::map<std::string, std::string> prefixes = {
        {"2001", "a"}, {"2002", "b"}, {"-100", "g"}, {"-1001000000001", "s"}};
    {
        Host host(dir, "host1");
        REQUIRE(connected(host.process, sandbox));
        sandbox.control("POST", "/messages", {{"chat_id", 2001}, {"from", 2001}, {"count", 500}, {"text_prefix", "a"}});
        sandbox.control("POST", "/messages", {{"chat_id", 2002}, {"from", 2002}, {"count", 500}, {"text_prefix", "b"}});
        sandbox.control("POST", "/messages", {{"chat_id", -100}, {"from", 2001}, {"count", 500}, {"text_prefix", "g"}});
        sandbox.control("POST", "/messages",
                        {{"chat_id", -1001000000001}, {"from", 2002}, {"count", 500}, {"text_prefix", "s"}});
        INFO(host.process.err());
        REQUIRE(wait_until([&] { return handled(db) >= 100; }, std::chrono::seconds(60)));
        host.process.kill();
    }
    const std::uint64_t before_restart = handled(db);
    const json mid = sandbox.control("GET", "/updates");
    INFO("handled before the restart: " << before_restart << "; sandbox then: " << mid.dump().substr(0, 300));
    CHECK(before_restart < 2000);  // the kill came in the middle
    Host host(dir, "host2");
    INFO(host.process.err());
    REQUIRE(wait_until([&] { return handled(db) >= 2000; }, std::chrono::seconds(120)));
    // Every update is confirmed once it was handled: the sandbox forgets them all.
    const bool confirmed = poll_sandbox(
        [&] {
            const json updates = sandbox.control("GET", "/updates");
            return updates["pending"].empty() && updates["confirmed_offset"] == updates["next_update_id"];
        },
        std::chrono::seconds(30));
    const json updates = sandbox.control("GET", "/updates");
    INFO("sandbox updates: " << updates.dump().substr(0, 500));
    CHECK(confirmed);
    CHECK(updates["next_update_id"] == 2001);
    REQUIRE(host.process.stop() == 0);
    // What the killed host confirmed was saved before it was confirmed: the restart sees no false gap.
    CHECK(host.process.err().find("may have been lost") == std::string::npos);

    LedgerReader ledger(db);
    for (const auto& [chat, prefix] : prefixes) {
        INFO("chat " << chat);
        CHECK(ledger.texts("telegram/" + chat) == numbered(prefix, 500));
    }
    CHECK(ledger.seen_twice().empty());
}

TEST_CASE("a 429 storm on sends loses and doubles no answer", "[telegram]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    write_file(dir / "switchboard.yaml", config(sandbox, "  - { plugin: echo, channels: [group], prefix: \"echo: \" }\n"));
    Host host(dir);
    REQUIRE(connected(host.process, sandbox));
    sandbox.control("POST", "/faults", {{"storm", {{"count", 8}, {"retry_after", 1}, {"methods", {"sendMessage"}}}}});
    sandbox.control("POST", "/messages", {{"chat_id", 2001}, {"from", 2001}, {"count", 6}, {"text_prefix", "a"}});
    sandbox.control("POST", "/messages", {{"chat_id", 2002}, {"from", 2002}, {"count", 6}, {"text_prefix", "b"}});
    std::vector<std::string> expected;
    for (const auto& text : numbered("a", 6)) expected.push_back("echo: " + text);
    for (const auto& text : numbered("b", 6)) expected.push_back("echo: " + text);
    INFO(host.process.err());
    const bool all = poll_sandbox(
        [&] {
            const auto sent = sent_texts(sandbox);
            return std::all_of(expected.begin(), expected.end(), [&](const auto& t) { return sent.count(t) > 0; });
        },
        std::chrono::seconds(60));
    CHECK(all);
    REQUIRE(host.process.stop() == 0);  // whatever was still in flight is out now
    const auto sent = sent_texts(sandbox);
    INFO("sent: " << sandbox.control("GET", "/sent").dump());
    CHECK(sent.size() == expected.size());
    for (const auto& text : expected) {
        INFO(text);
        CHECK(sent.count(text) == 1);
        CHECK((sent.count(text) == 0 || sent.at(text) == 1));
    }
    const json stats = sandbox.control("GET", "/stats?log=0");
    INFO(stats.dump());
    CHECK(stats["responses_429"].get<int>() >= 8);
}

TEST_CASE("a member who blocked the bot is reported unreachable in the group report and the others get it",
          "[telegram]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    write_file(dir / "switchboard.yaml",
          config(sandbox, "  - { plugin: announce, channels: [group] }\n", TelegramSandbox::kToken,
                 "groups:\n  team: { members: [alice, bob], delivery: best_effort }\n"));
    Host host(dir);
    REQUIRE(connected(host.process, sandbox));
    sandbox.control("POST", "/block", {{"user_id", 2002}});
    sandbox.control("POST", "/messages", {{"chat_id", -100}, {"from", 2001}, {"text", "!announce team standup now"}});
    INFO(host.process.err());
    REQUIRE(wait_until([&] { return host.process.err().find("announcement to 'team'") != std::string::npos; },
                       std::chrono::seconds(30)));
    const std::string log = host.process.err();
    CHECK(log.find("announcement to 'team': partial") != std::string::npos);
    CHECK(log.find("1 of 2 delivered") != std::string::npos);
    CHECK(log.find("missed: bob (unreachable)") != std::string::npos);
    const json to_alice = sandbox.control("GET", "/sent?chat_id=2001");
    REQUIRE(to_alice.size() == 1);
    CHECK(to_alice[0]["text"] == "[Alice] standup now");
    CHECK(sandbox.control("GET", "/sent?chat_id=2002").empty());
    REQUIRE(host.process.stop() == 0);
}

TEST_CASE("a second poller (409) is named in the log and polling goes on once it is gone", "[telegram]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    write_file(dir / "switchboard.yaml", config(sandbox));
    const fs::path db = dir / "data/switchboard.db";
    Host host(dir);
    REQUIRE(connected(host.process, sandbox));
    sandbox.control("POST", "/faults", {{"conflict", 3}});
    INFO(host.process.err());
    REQUIRE(
        wait_until([&] { return occurrences(host.process.err(), "(409 Conflict)") >= 3; }, std::chrono::seconds(30)));
    CHECK(host.process.err().find("another instance is polling this bot (409 Conflict)") != std::string::npos);
    CHECK(host.process.err().find("disconnected: another instance is polling this bot") != std::string::npos);
    REQUIRE(connected(host.process, sandbox, 2));
    sandbox.control("POST", "/messages", {{"chat_id", 2001}, {"from", 2001}, {"text", "still there?"}});
    REQUIRE(wait_until([&] { return handled(db) >= 1; }, std::chrono::seconds(30)));
    REQUIRE(host.process.stop() == 0);
    CHECK(sandbox.control("GET", "/stats?log=0")["conflicts"] == 3);
}

TEST_CASE("dropped connections and 502s end the session and the next one picks up every update once",
          "[telegram][recovery]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    write_file(dir / "switchboard.yaml", config(sandbox,
                                           "  - { plugin: ledger }\n"
                                           "  - { plugin: echo, channels: [supergroup], prefix: \"echo: \" }\n"));
    const fs::path db = dir / "data/switchboard.db";
    Host host(dir);
    REQUIRE(connected(host.process, sandbox));
    // The echo bot answers private messages only (it listens to the supergroup): the group's 20 a minute stay out.
    sandbox.control("POST", "/messages", {{"chat_id", -100}, {"from", 2001}, {"count", 50}, {"text_prefix", "x"}});
    sandbox.control("POST", "/faults", {{"drop", 2}, {"server_error", 2}});
    sandbox.control("POST", "/messages", {{"chat_id", 2001}, {"from", 2001}, {"count", 3}, {"text_prefix", "p"}});
    INFO(host.process.err());
    REQUIRE(wait_until([&] { return handled(db) >= 53; }, std::chrono::seconds(60)));
    REQUIRE(poll_sandbox(
        [&] {
            const auto sent = sent_texts(sandbox);
            return sent.count("echo: p0") && sent.count("echo: p1") && sent.count("echo: p2");
        },
        std::chrono::seconds(60)));
    const bool confirmed =
        poll_sandbox([&] { return sandbox.control("GET", "/updates")["pending"].empty(); }, std::chrono::seconds(30));
    REQUIRE(host.process.stop() == 0);
    CHECK(confirmed);
    const json stats = sandbox.control("GET", "/stats?log=0");
    INFO(stats.dump());
    CHECK(stats["dropped"] == 2);
    CHECK(stats["server_errors"] == 2);
    const std::string log = host.process.err();
    CHECK(log.find("disconnected: getUpdates") != std::string::npos);
    CHECK(occurrences(log, "connected: getUpdates answered") >= 2);
    LedgerReader ledger(db);
    CHECK(ledger.texts("telegram/-100") == numbered("x", 50));
    CHECK(ledger.texts("telegram/2001") == numbered("p", 3));
    CHECK(ledger.seen_twice().empty());
    const auto sent = sent_texts(sandbox);
    for (const auto& text : numbered("echo: p", 3)) CHECK((sent.count(text) && sent.at(text) == 1));
}

TEST_CASE("a rejected token ends the connection with a clear error and no retry loop", "[telegram]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    write_file(dir / "switchboard.yaml", config(sandbox, "  - { plugin: ledger }\n", "1000:wrong-token"));
    Host host(dir);
    INFO(host.process.err());
    REQUIRE(host.process.wait_exit(std::chrono::seconds(30)));  // its only connection finished: the host stops
    CHECK(host.process.err().find("token rejected (401 Unauthorized)") != std::string::npos);
    CHECK(sandbox.control("GET", "/stats?log=0")["requests"].value("getUpdates", 0) == 0);
}

TEST_CASE("a restart loses nothing and reports no gap but 25 hours away on the sandbox clock is reported as a gap",
          "[telegram][recovery]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    write_file(dir / "switchboard.yaml", config(sandbox));
    const fs::path db = dir / "data/switchboard.db";
    {
        Host host(dir, "host1");
        REQUIRE(connected(host.process, sandbox));
        sandbox.control("POST", "/messages", {{"chat_id", 2001}, {"from", 2001}, {"text", "one"}});
        REQUIRE(wait_until([&] { return handled(db) >= 1; }, std::chrono::seconds(30)));
        REQUIRE(host.process.stop() == 0);
    }
    sandbox.control("POST", "/messages", {{"chat_id", -100}, {"from", 2002}, {"text", "two"}});
    {
        Host host(dir, "host2");
        REQUIRE(connected(host.process, sandbox));
        INFO(host.process.err());
        REQUIRE(wait_until([&] { return handled(db) >= 2; }, std::chrono::seconds(30)));
        REQUIRE(host.process.stop() == 0);
        const std::string log = host.process.err();
        CHECK(log.find("may have been lost") == std::string::npos);
        CHECK(log.find("recovery: fetched 0, duplicates 0, no gap") != std::string::npos);
    }
    // While the host is down: one message, then 25 hours pass (Telegram drops it), then another.
    sandbox.control("POST", "/messages", {{"chat_id", 2001}, {"from", 2001}, {"text", "lost"}});
    sandbox.control("POST", "/clock", {{"advance_ms", 25 * kHourMs}});
    sandbox.control("POST", "/messages", {{"chat_id", 2001}, {"from", 2001}, {"text", "three"}});
    CHECK(sandbox.control("GET", "/updates")["pending"].size() == 1);
    Host host(dir, "host3");
    REQUIRE(connected(host.process, sandbox));
    INFO(host.process.err());
    REQUIRE(wait_until([&] { return handled(db) >= 3; }, std::chrono::seconds(30)));
    REQUIRE(wait_until([&] { return host.process.err().find("gap remains") != std::string::npos; },
                       std::chrono::seconds(10)));
    REQUIRE(host.process.stop() == 0);
    const std::string log = host.process.err();
    CHECK(log.find("telegram-offset: updates lost while the bot was away (updates 3 to 3)") != std::string::npos);
    CHECK(log.find("longer than the 24 h Telegram keeps updates") != std::string::npos);
    CHECK(occurrences(log, "gap remains") == 2);  // one report per watched channel (the group and the supergroup)
    LedgerReader ledger(db);
    CHECK(ledger.texts("telegram/2001") == std::vector<std::string>{"one", "three"});
    CHECK(ledger.texts("telegram/-100") == std::vector<std::string>{"two"});
}

TEST_CASE("switchboard check accepts both telegram-echo example configs", "[telegram]") {
    TempDir dir;
    const fs::path example = fs::path(SWITCHBOARD_TEST_SOURCE_DIR) / "examples" / "telegram-echo";
    ::setenv("TELEGRAM_TOKEN", "123456:not-a-real-token", 1);
    ::setenv("SANDBOX_PORT", "5123", 1);
    for (const char* file : {"switchboard.yaml", "sandbox.yaml"}) {
        const auto result = run_process(kSwitchboard, {"check", "-c", (example / file).string()}, dir.path());
        INFO(file << "\n" << result.out << result.err);
        CHECK(result.exit_code == 0);
        CHECK(result.out.find(": ok:") != std::string::npos);
    }
}

TEST_CASE("switchboard check names a bad telegram setting at its line", "[telegram]") {
    TempDir dir;
    write_file(dir / "bad.yaml",
          "store: { plugin: sqlite, path: data/x.db }\n"
          "connections:\n"
          "  - name: telegram\n"
          "    plugin: telegram\n"
          "    token: \"1:x\"\n"
          "    poll_limit: 500\n");
    const auto result = run_process(kSwitchboard, {"check", "-c", (dir / "bad.yaml").string()}, dir.path());
    INFO(result.out << result.err);
    CHECK(result.exit_code == 2);
    CHECK(result.err.find("bad.yaml:6:") != std::string::npos);
    CHECK(result.err.find("between 1 and 100") != std::string::npos);
}

TEST_CASE("switchboard run with the sandbox example answers in a group and splits a long answer", "[telegram]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    const fs::path example = fs::path(SWITCHBOARD_TEST_SOURCE_DIR) / "examples" / "telegram-echo";
    fs::copy_file(example / "sandbox.yaml", dir / "switchboard.yaml");
    ::setenv("SANDBOX_PORT", std::to_string(sandbox.port()).c_str(), 1);
    Host host(dir);
    REQUIRE(connected(host.process, sandbox));
    const json posted =
        sandbox.control("POST", "/messages", {{"chat_id", -100}, {"from", 2001}, {"text", "hello bot"}});
    // 5,000 characters, an emoji (two UTF-16 code units) right where 4,096 units end, and a newline to prefer.
    const std::string long_text =
        std::string(3500, 'a') + "\n" + std::string(588, 'b') + "\xF0\x9F\x98\x80" + std::string(911, 'c');
    sandbox.control("POST", "/messages", {{"chat_id", 2002}, {"from", 2002}, {"text", long_text}});
    INFO(host.process.err());
    const bool answered =
        poll_sandbox([&] { return sandbox.control("GET", "/sent").size() >= 3; }, std::chrono::seconds(30));
    REQUIRE(host.process.stop() == 0);
    CHECK(answered);
    const json in_group = sandbox.control("GET", "/sent?chat_id=-100");
    REQUIRE(in_group.size() == 1);
    CHECK(in_group[0]["text"] == "echo: hello bot");
    CHECK(in_group[0]["reply_to_message_id"] == posted["message_id"]);  // the echo bot replies to the message
    const json to_bob = sandbox.control("GET", "/sent?chat_id=2002");
    REQUIRE(to_bob.size() == 2);
    const std::string first = to_bob[0]["text"], second = to_bob[1]["text"];
    CHECK(first == "echo: " + std::string(3500, 'a') + "\n");  // cut after the newline, in the last quarter
    CHECK(first + second == "echo: " + long_text);
}

TEST_CASE("a long answer whose second part meets a 429 goes on with that part and doubles nothing", "[telegram]") {
    TempDir dir;
    // Telegram allows no burst into a chat here, while the connector (chat_burst 3) sends the second part at once:
    // the sandbox refuses it with 429, and the retry must send only that part.
    TelegramSandbox sandbox(dir.path(), {"--chat-burst", "1"});
    write_file(dir / "switchboard.yaml", config(sandbox, "  - { plugin: echo, channels: [group], prefix: \"echo: \" }\n"));
    Host host(dir);
    REQUIRE(connected(host.process, sandbox));
    const std::string text = std::string(3000, 'x') + " " + std::string(3000, 'y');
    sandbox.control("POST", "/messages", {{"chat_id", 2002}, {"from", 2002}, {"text", text}});
    INFO(host.process.err());
    REQUIRE(poll_sandbox([&] { return sandbox.control("GET", "/sent?chat_id=2002").size() >= 2; },
                         std::chrono::seconds(30)));
    REQUIRE(host.process.stop() == 0);
    const json sent = sandbox.control("GET", "/sent?chat_id=2002");
    INFO(sent.dump().substr(0, 300));
    REQUIRE(sent.size() == 2);
    CHECK(sent[0]["text"].get<std::string>() + sent[1]["text"].get<std::string>() == "echo: " + text);
    CHECK(sandbox.control("GET", "/stats?log=0")["responses_429"].get<int>() >= 1);
}

TEST_CASE("an atomic group with compensate deletes what was sent when a member turns out blocked", "[telegram]") {
    TempDir dir;
    TelegramSandbox sandbox(dir.path());
    // Batches of one: alice's copy goes out before bob's send fails, so there is something to take back.
    write_file(dir / "switchboard.yaml",
          config(sandbox, "  - { plugin: announce, channels: [group] }\n", TelegramSandbox::kToken,
                 "groups:\n  team: { members: [alice, bob], delivery: atomic, on_failure: compensate }\n"
                 "strategies:\n  group: { batch_size: 1 }\n"));
    Host host(dir);
    REQUIRE(connected(host.process, sandbox));
    sandbox.control("POST", "/block", {{"user_id", 2002}});
    sandbox.control("POST", "/messages", {{"chat_id", -100}, {"from", 2001}, {"text", "!announce team all hands"}});
    INFO(host.process.err());
    REQUIRE(wait_until([&] { return host.process.err().find("announcement to 'team'") != std::string::npos; },
                       std::chrono::seconds(30)));
    REQUIRE(host.process.stop() == 0);
    const std::string log = host.process.err();
    CHECK(log.find("announcement to 'team': rejected (compensated)") != std::string::npos);
    const json to_alice = sandbox.control("GET", "/sent?chat_id=2001");
    INFO(to_alice.dump());
    REQUIRE(to_alice.size() == 1);
    CHECK(to_alice[0]["text"] == "[Alice] all hands");
    CHECK(to_alice[0]["deleted"] == true);  // deleteMessage took it back
    CHECK(sandbox.control("GET", "/stats?log=0")["requests"].value("deleteMessage", 0) == 1);
}
