// The Discord connector against the real sandbox binary (tools/sandbox): gateway sessions, faults, REST sends.
#include "harness.hpp"

#include <catch2/catch.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <set>

using namespace switchboard;
using namespace switchboard::discord;
using namespace switchboard::discord::testing;

namespace {

// One connector under test with everything it runs on. Members are destroyed in reverse: connector first.
struct Rig {
    explicit Rig(std::vector<std::string> sandbox_args = {"--route-limit", "1000"}, std::string token = "sandbox-token")
        : sandbox(std::move(sandbox_args)), host(threads.io()), context("discord-test", logger, threads.io()),
          settings(sandbox_settings(sandbox, std::move(token))) {}

    DiscordConnector& start() {
        connector = std::make_unique<DiscordConnector>(context, settings);
        connector->start(host);
        return *connector;
    }

    std::string diagnostics() const { return logger.dump(); }

    Sandbox sandbox;
    IoThreads threads;
    RecordingLogger logger;
    RecordingHost host;
    PluginContext context;
    DiscordSettings settings;
    std::unique_ptr<DiscordConnector> connector;
};

OutboundMessage to_channel(const std::string& channel, const std::string& text, const std::string& key) {
    OutboundMessage message;
    message.to = Address::channel("discord-test", channel);
    message.text = text;
    message.idempotency_key = key;
    return message;
}

std::size_t count_content(const json& sent, const std::string& content) {
    std::size_t n = 0;
    for (const auto& message : sent["messages"]) n += message["content"] == content ? 1 : 0;
    return n;
}

}  // namespace

TEST_CASE("the connector identifies, reports connected and delivers guild and direct messages in order",
          "[discord][integration]") {
    Rig rig;
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());

    for (int i = 1; i <= 3; ++i) {
        rig.sandbox.post("/messages", {{"author_id", "2001"}, {"channel_id", "100"}, {"content", "line " + std::to_string(i)}});
    }
    const json dm = rig.sandbox.post("/messages", {{"author_id", "2002"}, {"dm", true}, {"content", "psst"}});
    REQUIRE(rig.host.wait_for_messages(4));
    const auto messages = rig.host.messages();
    REQUIRE(messages.size() == 4);
    for (int i = 0; i < 3; ++i) {
        CHECK(messages[i].text == "line " + std::to_string(i + 1));
        CHECK(messages[i].channel == "100");
        CHECK(messages[i].kind == MessageKind::group);
        CHECK(messages[i].author.id == "2001");
        CHECK(messages[i].author.display_name == "Alice");
        CHECK(messages[i].timestamp_ms > 0);
        CHECK_FALSE(messages[i].id.empty());
    }
    CHECK(messages[3].kind == MessageKind::private_message);
    CHECK(messages[3].author.id == "2002");
    CHECK(messages[3].channel == dm["channel_id"].get<std::string>());
    CHECK(messages[3].text == "psst");

    // The resume state is saved for a restart: session, resume URL and the sequence.
    const auto saved = json::parse(rig.host.state().at(kSessionStateKey));
    CHECK(saved["session_id"].is_string());
    CHECK(saved["resume_url"].get<std::string>().rfind("ws://127.0.0.1:", 0) == 0);
    CHECK(rig.connector->gateway_stats().identifies == 1);
    const auto defined = rig.host.scheduler().defined();
    REQUIRE(defined.count("global") == 1);
    CHECK(defined.at("global").first == Approx(50));
    CHECK(rig.host.scheduler().routes_observed().count("GET /gateway/bot") == 1);
}

TEST_CASE("the bot's own messages are not delivered back to it", "[discord][integration]") {
    Rig rig;
    auto& connector = rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    REQUIRE(send_like_engine(connector, rig.host, to_channel("100", "from the bot", "own-1")).has_value());
    rig.sandbox.post("/messages", {{"author_id", "2001"}, {"channel_id", "100"}, {"content", "after"}});
    REQUIRE(rig.host.wait_for_messages(1));
    // The bot's MESSAGE_CREATE came first in gateway order; only alice's line arrived.
    const auto messages = rig.host.messages();
    REQUIRE(messages.size() == 1);
    CHECK(messages[0].text == "after");
}

TEST_CASE("a send carries a nonce, so a retried send with the same idempotency key is not doubled",
          "[discord][integration]") {
    Rig rig;
    auto& connector = rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    const auto message = to_channel("100", "exactly once", "plan-1/recipient-1");
    auto first = send_like_engine(connector, rig.host, message);
    REQUIRE(first.has_value());
    auto again = send_like_engine(connector, rig.host, message);
    REQUIRE(again.has_value());
    CHECK(first->message_id == again->message_id);
    const json sent = rig.sandbox.sent("100");
    CHECK(count_content(sent, "exactly once") == 1);
    CHECK(rig.sandbox.stats()["nonce_reuses"].get<int>() >= 1);

    auto other = send_like_engine(connector, rig.host, to_channel("100", "exactly once", "plan-1/recipient-2"));
    REQUIRE(other.has_value());
    CHECK(other->message_id != first->message_id);
    CHECK(count_content(rig.sandbox.sent("100"), "exactly once") == 2);
    // Every grant was followed by one observe.
    CHECK(rig.host.scheduler().granted() == rig.host.scheduler().observed());
}

TEST_CASE("a reply references its message, a private send opens the DM channel once, long texts are split",
          "[discord][integration]") {
    Rig rig;
    auto& connector = rig.start();
    INFO(rig.diagnostics());
    const json original = rig.sandbox.post("/messages", {{"author_id", "2001"}, {"channel_id", "100"}, {"content", "q?"}});
    auto reply = to_channel("100", "answer", "reply-1");
    reply.reply_to = original["id"].get<std::string>();
    REQUIRE(send_like_engine(connector, rig.host, reply).has_value());
    json sent = rig.sandbox.sent("100");
    REQUIRE(sent["messages"].size() == 1);
    CHECK(sent["messages"][0]["message_reference"]["message_id"] == original["id"]);

    OutboundMessage private_message;
    private_message.to = Address::user("discord-test", "2002");
    private_message.text = "just for you";
    private_message.idempotency_key = "dm-1";
    auto dm = send_like_engine(connector, rig.host, private_message);
    REQUIRE(dm.has_value());
    private_message.idempotency_key = "dm-2";
    private_message.text = "again";
    REQUIRE(send_like_engine(connector, rig.host, private_message).has_value());
    CHECK(rig.host.scheduler().routes_observed()["POST /users/@me/channels"] == 1);  // cached after the first
    sent = rig.sandbox.sent();
    std::set<std::string> dm_channels;
    for (const auto& m : sent["messages"]) {
        if (m["content"] == "just for you" || m["content"] == "again") dm_channels.insert(m["channel_id"].get<std::string>());
    }
    CHECK(dm_channels.size() == 1);

    std::string long_text;
    for (int i = 0; i < 450; ++i) long_text += "word\xC3\xA9 ";  // 450 * 6 characters, with two-byte ones
    auto split = send_like_engine(connector, rig.host, to_channel("101", long_text, "long-1"));
    REQUIRE(split.has_value());
    const auto parts = rig.sandbox.sent("101")["messages"];
    REQUIRE(parts.size() == 2);
    CHECK(parts[0]["content"].get<std::string>() + parts[1]["content"].get<std::string>() == long_text);
    CHECK(split->message_id == parts[0]["id"].get<std::string>() + "," + parts[1]["id"].get<std::string>());

    // remove() deletes every part of a split message.
    REQUIRE(remove_once(connector, Address::channel("discord-test", "101"), split->message_id).has_value());
    CHECK(rig.sandbox.sent("101")["deleted"].size() == 2);
}

TEST_CASE("sends to an unknown channel fail for good with a code naming the channel", "[discord][integration]") {
    Rig rig;
    auto& connector = rig.start();
    INFO(rig.diagnostics());
    auto result = send_like_engine(connector, rig.host, to_channel("999999", "nobody", "lost-1"));
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().code == "unknown_channel");
    CHECK_FALSE(result.error().retryable);
    CHECK(result.error().message.find("999999") != std::string::npos);
}

TEST_CASE("op 7 makes the connector resume without a second identify", "[discord][integration]") {
    Rig rig;
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    rig.sandbox.post("/gateway/reconnect");
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::resumed));
    CHECK(rig.host.count(ConnectionEvent::Type::disconnected) == 1);
    CHECK(rig.host.count(ConnectionEvent::Type::connected) == 1);
    const json stats = rig.sandbox.stats();
    CHECK(stats["identifies"] == 1);
    CHECK(stats["resumes"] == 1);
    CHECK(rig.connector->gateway_stats().identifies == 1);

    // Still live afterwards.
    rig.sandbox.post("/messages", {{"author_id", "2001"}, {"channel_id", "100"}, {"content", "after op 7"}});
    REQUIRE(rig.host.wait_for_messages(1));
    CHECK(rig.host.messages().back().text == "after op 7");
}

TEST_CASE("messages sent while the connection was down are replayed by the resume, in order",
          "[discord][integration]") {
    Rig rig;
    rig.settings.reconnect_min_ms = 1500;  // time enough to post while disconnected
    rig.settings.reconnect_max_ms = 3000;
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    rig.sandbox.post("/gateway/drop");
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::disconnected));
    rig.sandbox.post("/messages", {{"author_id", "2001"}, {"channel_id", "100"}, {"count", 5}, {"content_prefix", "gap "}});
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::resumed));
    REQUIRE(rig.host.wait_for_messages(5));
    const auto messages = rig.host.messages();
    for (int i = 0; i < 5; ++i) CHECK(messages[i].text == "gap " + std::to_string(i + 1));
    CHECK(rig.sandbox.stats()["identifies"] == 1);
}

TEST_CASE("op 9 with d:false makes the connector identify anew after a pause", "[discord][integration]") {
    Rig rig;
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    const auto first = json::parse(rig.host.state().at(kSessionStateKey))["session_id"].get<std::string>();
    const auto before = std::chrono::steady_clock::now();
    rig.sandbox.post("/gateway/invalid_session", {{"resumable", false}});
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected, 2, 20s));
    CHECK(std::chrono::steady_clock::now() - before >= 1s);  // Discord asks for 1-5 s before identifying again
    CHECK(rig.host.count(ConnectionEvent::Type::resumed) == 0);
    CHECK(rig.sandbox.stats()["identifies"] == 2);
    CHECK(rig.sandbox.stats()["resumes"] == 0);
    // The new session is saved (polled: the host's own wait holds its lock while it tests).
    CHECK(testing_support::wait_until(
        [&] { return json::parse(rig.host.state().at(kSessionStateKey)).value("session_id", "") != first; }, 5s));
}

TEST_CASE("close code 4004 ends the connection for good with a clear error", "[discord][integration]") {
    Rig rig;
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    rig.sandbox.post("/gateway/close", {{"code", 4004}, {"reason", "Authentication failed."}});
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::finished));
    const auto events = rig.host.events();
    CHECK(events.back().type == ConnectionEvent::Type::finished);
    CHECK(events.back().detail.find("token rejected (4004)") != std::string::npos);
    // The run loop has ended: stopping is immediate and nothing reconnected.
    rig.connector->stop();
    CHECK(rig.sandbox.stats()["gateway_connections"] == 1);
    CHECK(rig.connector->gateway_stats().connections == 1);
    CHECK(rig.host.count(ConnectionEvent::Type::disconnected) == 0);
}

TEST_CASE("a rejected token at GET /gateway/bot finishes at once instead of retrying", "[discord][integration]") {
    Rig rig({"--route-limit", "1000"}, "not-the-token");
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::finished));
    INFO(rig.diagnostics());
    CHECK(rig.host.events().back().detail.find("token rejected") != std::string::npos);
    CHECK(rig.sandbox.stats()["gateway_connections"] == 0);
}

TEST_CASE("a zombie connection (heartbeat ACKs stopped) is closed, reconnected and resumed", "[discord][integration]") {
    Rig rig({"--route-limit", "1000", "--heartbeat-interval", "300"});
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    rig.sandbox.post("/gateway/heartbeat_acks", {{"enabled", false}});
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::resumed, 1, 20s));
    CHECK(rig.connector->gateway_stats().zombies >= 1);
    CHECK(rig.logger.contains("zombie"));
    const json stats = rig.sandbox.stats();
    CHECK(stats["identifies"] == 1);
    CHECK(stats["resumes"] >= 1);
}

TEST_CASE("a restarted connector resumes the session an earlier run saved", "[discord][integration]") {
    Rig rig;
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    rig.connector->stop();
    rig.connector.reset();
    const auto saved = rig.host.state();
    REQUIRE(saved.count(kSessionStateKey) == 1);
    rig.sandbox.post("/messages", {{"author_id", "2001"}, {"channel_id", "100"}, {"content", "while restarting"}});

    RecordingHost second(rig.threads.io());
    second.set_state(saved);
    DiscordConnector restarted(rig.context, rig.settings);
    restarted.start(second);
    REQUIRE(second.wait_for_event(ConnectionEvent::Type::resumed));
    REQUIRE(second.wait_for_messages(1));
    CHECK(second.messages()[0].text == "while restarting");
    CHECK(second.count(ConnectionEvent::Type::connected) == 0);
    CHECK(rig.sandbox.stats()["identifies"] == 1);
    restarted.stop();
}

TEST_CASE("in a 429 storm sends are retried after retry_after: none lost, none doubled", "[discord][integration]") {
    Rig rig;
    auto& connector = rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::connected));
    INFO(rig.diagnostics());
    rig.sandbox.post("/rest/storm", {{"count", 8}, {"retry_after", 0.3}});
    constexpr int kSends = 12;
    std::vector<std::thread> senders;
    std::vector<Result<SentMessage>> results(kSends, fail("not_run", ""));
    for (int i = 0; i < kSends; ++i) {
        senders.emplace_back([&, i] {
            results[i] = send_like_engine(connector, rig.host,
                                          to_channel(i % 2 == 0 ? "100" : "101", "storm " + std::to_string(i),
                                                     "storm-key-" + std::to_string(i)));
        });
    }
    for (auto& sender : senders) sender.join();
    for (int i = 0; i < kSends; ++i) {
        INFO("send " << i);
        REQUIRE(results[i].has_value());
    }
    const json sent = rig.sandbox.sent();
    CHECK(sent["messages"].size() == kSends);
    for (int i = 0; i < kSends; ++i) CHECK(count_content(sent, "storm " + std::to_string(i)) == 1);
    CHECK(rig.host.scheduler().limited() >= 1);
    CHECK(rig.sandbox.stats()["rate_limited"].get<int>() >= 1);
    CHECK(rig.host.scheduler().granted() == rig.host.scheduler().observed());
}

TEST_CASE("history comes back oldest first after a cursor, as backfill, and pages until complete",
          "[discord][integration]") {
    Rig rig;
    auto& connector = rig.start();
    INFO(rig.diagnostics());
    // Stored but never dispatched: what a bot that was away would have missed.
    const json posted = rig.sandbox.post(
        "/messages", {{"author_id", "2001"}, {"channel_id", "102"}, {"count", 5}, {"content_prefix", "old "}, {"dispatch", false}});
    const std::string first = posted["first_id"].get<std::string>();

    auto page = fetch_history_once(connector, HistoryRequest{"102", first, 2});
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 2);
    CHECK(page->messages[0].text == "old 2");
    CHECK(page->messages[1].text == "old 3");
    CHECK(page->messages[0].recovered);
    CHECK_FALSE(page->complete);
    auto rest = fetch_history_once(connector, HistoryRequest{"102", page->messages[1].id, 100});
    REQUIRE(rest.has_value());
    REQUIRE(rest->messages.size() == 2);
    CHECK(rest->messages[1].text == "old 5");
    CHECK(rest->complete);
    const auto priorities = rig.host.scheduler().priorities("GET /channels/102/messages");
    REQUIRE(priorities.size() == 2);
    CHECK(std::all_of(priorities.begin(), priorities.end(), [](auto p) { return p == RequestPriority::backfill; }));

    auto missing = fetch_history_once(connector, HistoryRequest{"424242", std::nullopt, 10});
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code == "unknown_channel");
}

TEST_CASE("asking for MESSAGE_CONTENT without the portal switch ends with a clear 4014 error", "[discord][integration]") {
    Rig rig({"--route-limit", "1000", "--no-message-content"});
    rig.start();
    REQUIRE(rig.host.wait_for_event(ConnectionEvent::Type::finished));
    INFO(rig.diagnostics());
    CHECK(rig.host.events().back().detail.find("disallowed intents (4014)") != std::string::npos);
    CHECK(rig.host.count(ConnectionEvent::Type::connected) == 0);
    rig.connector->stop();
    CHECK(rig.sandbox.stats()["gateway_connections"] == 1);
}
