#include "fake_irc.hpp"
#include "irc_connector.hpp"
#include "irc_protocol.hpp"

#include <catch2/catch.hpp>

#include <future>
#include <set>
#include <thread>

using namespace switchboard;
using namespace switchboard::testing_support;
using namespace std::chrono_literals;

namespace {

class CapturingLogger final : public Logger {
public:
    void log(LogLevel level, std::string_view text, const LogFields&) noexcept override {
        std::lock_guard lock(mutex_);
        if (level >= LogLevel::info) lines_.emplace_back(text);
    }
    bool contains(const std::string& what) {
        std::lock_guard lock(mutex_);
        for (const auto& line : lines_) {
            if (line.find(what) != std::string::npos) return true;
        }
        return false;
    }
    std::string all() {
        std::lock_guard lock(mutex_);
        std::string out;
        for (const auto& line : lines_) out += line + "\n";
        return out;
    }

private:
    std::mutex mutex_;
    std::vector<std::string> lines_;
};

/// An io_context run by one thread, and a connector on it talking to a FakeIrcServer.
struct Rig {
    explicit Rig(irc::IrcSettings settings)
        : connector(std::make_shared<irc::IrcConnector>(std::move(settings), logger, "irc")) {}
    ~Rig() { connector->stop(); }

    static irc::IrcSettings settings(std::uint16_t port) {
        irc::IrcSettings s;
        s.port = port;
        s.nick = "bot";
        s.username = "bot";
        s.channels = {{"#ops", ""}};
        s.reconnect_min = 20ms;
        s.reconnect_max = 100ms;
        s.recovery_wait = 300ms;
        return s;
    }

    Result<SentMessage> send(const std::string& to, const std::string& text, bool user = false) {
        std::promise<Result<SentMessage>> promise;
        OutboundMessage message;
        message.to = user ? Address::user("irc", to) : Address::channel("irc", to);
        message.text = text;
        connector->send(message, [&promise](Result<SentMessage> r) { promise.set_value(std::move(r)); });
        auto future = promise.get_future();
        if (future.wait_for(5s) != std::future_status::ready) return fail("timeout", "no send result");
        return future.get();
    }

    Result<HistoryPage> history(const std::string& channel, std::optional<std::string> after, std::uint32_t limit) {
        std::promise<Result<HistoryPage>> promise;
        connector->fetch_history({channel, std::move(after), limit},
                                 [&promise](Result<HistoryPage> r) { promise.set_value(std::move(r)); });
        auto future = promise.get_future();
        if (future.wait_for(5s) != std::future_status::ready) return fail("timeout", "no history result");
        return future.get();
    }

    CapturingLogger logger;
    RecordingHost host;
    std::shared_ptr<irc::IrcConnector> connector;
};

// Completes joining #ops after registration: JOIN echo, names, and the PONG of the barrier PING.
bool finish_join(FakeIrcPeer& peer, const std::string& between = {}) {
    auto join = peer.expect("JOIN #ops");
    if (!join) return false;
    peer.send(":bot!bot@127.0.0.1 JOIN #ops");
    peer.send(":fake 366 bot #ops :End of /NAMES list.");
    if (!between.empty()) peer.send_raw(between);
    auto barrier = peer.expect("PING :");
    if (!barrier) return false;
    peer.send(":fake PONG fake :" + barrier->substr(barrier->find(':') + 1));
    return true;
}

}  // namespace

TEST_CASE("the connector negotiates capabilities, logs in with SASL PLAIN, joins with a key and reports connected",
          "[irc]") {
    FakeIrcServer server;
    auto settings = Rig::settings(server.port());
    settings.sasl_user = "bot";
    settings.sasl_password = "s3cret";
    settings.channels = {{"#ops", "hunter2"}};
    settings.password = "serverpw";
    Rig rig(settings);
    rig.connector->start(rig.host);
    CHECK(rig.host.scheduler.defined.at("global") == std::make_pair(2.0, std::uint32_t{5}));

    auto peer = server.accept();
    REQUIRE(peer);
    CHECK(peer->read_line() == std::optional<std::string>("PASS serverpw"));
    REQUIRE(peer->expect("CAP LS 302"));
    peer->send(":fake CAP * LS * :multi-prefix sasl=PLAIN server-time");
    peer->send(":fake CAP * LS :message-tags batch echo-message draft/chathistory");
    auto request = peer->expect("CAP REQ");
    REQUIRE(request);
    for (const char* cap : {"server-time", "message-tags", "batch", "echo-message", "draft/chathistory", "sasl"}) {
        CHECK(request->find(cap) != std::string::npos);
    }
    CHECK(request->find("multi-prefix") == std::string::npos);
    peer->send(":fake CAP * ACK :" + request->substr(request->find(':') + 1));
    REQUIRE(peer->expect("AUTHENTICATE PLAIN"));
    peer->send("AUTHENTICATE +");
    auto credentials = peer->expect("AUTHENTICATE ");
    REQUIRE(credentials);
    CHECK(*credentials == "AUTHENTICATE " + irc::base64(std::string("bot\0bot\0s3cret", 14)));
    peer->send(":fake 903 bot :SASL authentication successful");
    REQUIRE(peer->expect("CAP END"));
    peer->send(":fake 001 bot :Welcome");
    peer->send(":fake 376 bot :End of MOTD");
    auto join = peer->expect("JOIN ");
    REQUIRE(join);
    CHECK(*join == "JOIN #ops hunter2");
    peer->send(":bot!bot@127.0.0.1 JOIN #ops");
    auto barrier = peer->expect("PING :");
    REQUIRE(barrier);
    CHECK_FALSE(rig.host.count(ConnectionEvent::Type::connected));  // not before the joins are through
    peer->send(":fake PONG fake :" + barrier->substr(barrier->find(':') + 1));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));
    CHECK(rig.host.events().back().detail.find("joined #ops") != std::string::npos);
}

TEST_CASE("a taken nick is replaced by the alternatives, then by nick_", "[irc]") {
    FakeIrcServer server;
    auto settings = Rig::settings(server.port());
    settings.alt_nicks = {"bot2"};
    Rig rig(settings);
    rig.connector->start(rig.host);
    auto peer = server.accept();
    REQUIRE(peer);
    REQUIRE(peer->expect("NICK bot"));
    peer->send(":fake 433 * bot :Nickname is already in use");
    auto second = peer->expect("NICK ");
    REQUIRE(second);
    CHECK(*second == "NICK bot2");
    peer->send(":fake 433 * bot2 :Nickname is already in use");
    auto third = peer->expect("NICK ");
    REQUIRE(third);
    CHECK(*third == "NICK bot_");
    peer->send(":fake 001 bot_ :Welcome");
    peer->send(":fake 376 bot_ :End of MOTD");
    REQUIRE(peer->expect("JOIN #ops"));
    peer->send(":bot_!bot@127.0.0.1 JOIN #ops");
    auto barrier = peer->expect("PING :");
    REQUIRE(barrier);
    peer->send(":fake PONG fake :" + barrier->substr(barrier->find(':') + 1));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));
    CHECK(rig.host.events().back().detail.find("registered as bot_") != std::string::npos);
}

TEST_CASE("channel and private PRIVMSGs become group and private messages with msgid and server time", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->start(rig.host);
    auto peer = server.accept_registered("bot", "server-time message-tags batch echo-message");
    REQUIRE(peer);
    REQUIRE(finish_join(*peer));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));
    peer->send("@time=2026-11-26T22:12:55.737Z;msgid=abc :alice!a@h PRIVMSG #OPS :hello");
    peer->send(":bob!b@h PRIVMSG bot :psst");
    peer->send("@msgid=own :bot!bot@127.0.0.1 PRIVMSG #ops :my own echo");
    peer->send("@bot;msgid=b1;+draft/reply=abc :otherbot!o@h PRIVMSG #ops :beep");
    REQUIRE(rig.host.wait_messages(3));
    const auto messages = rig.host.messages();
    REQUIRE(messages.size() == 3);
    CHECK(messages[0].id == "abc");
    CHECK(messages[0].channel == "#ops");  // the configured spelling
    CHECK(messages[0].kind == MessageKind::group);
    CHECK(messages[0].timestamp_ms == 1795731175737);
    CHECK(messages[0].author.id == "alice");
    CHECK(messages[0].text == "hello");
    CHECK_FALSE(messages[0].recovered);
    CHECK(messages[1].kind == MessageKind::private_message);
    CHECK(messages[1].channel == "@bob");
    CHECK(messages[1].author.id == "bob");
    CHECK(messages[1].id.rfind("h-", 0) == 0);  // no msgid: the (time, nick, text) hash
    CHECK(messages[2].author.is_bot);
    CHECK(messages[2].reply_to == std::optional<std::string>("abc"));
    CHECK_FALSE(messages[0].reply_to.has_value());
}

TEST_CASE("hostile input is logged and skipped and the connector keeps running", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->start(rig.host);
    auto peer = server.accept_registered();
    REQUIRE(peer);
    REQUIRE(finish_join(*peer));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));
    peer->send(":alice!a@h PRIVMSG #ops :" + std::string(10'000, 'x'));                 // 10 kB line
    peer->send(":alice!a@h PRIVMSG #ops :caf\xE9 latin-1");                                // invalid UTF-8
    peer->send(":alice!a@h PRIVMSG #ops :\x01VERSION\x01");                               // CTCP
    peer->send("PRIVMSG #ops :no prefix");                                                 // no source
    peer->send_raw(std::string("\x00\xff\xfe random \x01\x02 bytes\r\n", 22));             // garbage
    peer->send(":alice!a@h PRIVMSG #ops");                                                 // no text
    peer->send("@" + std::string(9000, 't') + " :alice!a@h PRIVMSG #ops :huge tags");     // over the tag limit
    peer->send(":fake 401 bot ghost :No such nick/channel");                               // a refused send
    peer->send(":alice!a@h PRIVMSG #ops :still here");
    REQUIRE(rig.host.wait_messages(1));
    rig.host.wait_messages(2, 300ms);
    const auto messages = rig.host.messages();
    REQUIRE(messages.size() == 1);
    CHECK(messages[0].text == "still here");
    CHECK(rig.logger.contains("overlong line"));
    CHECK(rig.logger.contains("not valid UTF-8"));
    CHECK(rig.logger.contains("not IRC"));
    CHECK(rig.logger.contains("refused a message to ghost"));
    CHECK(rig.host.count(ConnectionEvent::Type::disconnected) == 0);
    // and it still sends
    REQUIRE(rig.send("#ops", "ok").has_value());
    CHECK(peer->expect("PRIVMSG #ops :ok"));
}

TEST_CASE("outbound text is split to fit 512 bytes and cannot inject commands", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->start(rig.host);
    auto peer = server.accept_registered("bot", "server-time message-tags batch echo-message");
    REQUIRE(peer);
    REQUIRE(finish_join(*peer));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));

    REQUIRE(rig.send("#ops", std::string("hi\r\nQUIT :bye\0\nJOIN #evil", 25)).has_value());
    CHECK(peer->expect("PRIVMSG") == std::optional<std::string>("PRIVMSG #ops :hi"));
    CHECK(peer->expect("PRIVMSG") == std::optional<std::string>("PRIVMSG #ops :QUIT :bye"));
    CHECK(peer->expect("PRIVMSG") == std::optional<std::string>("PRIVMSG #ops :JOIN #evil"));
    CHECK(rig.send("#ops\r\nQUIT", "x").has_value() == false);

    // the message it answers goes as an IRCv3 client tag, escaped, on the first line only
    OutboundMessage reply;
    reply.to = Address::channel("irc", "#ops");
    reply.text = "re 1\nre 2";
    reply.reply_to = "id;with space";
    std::promise<Result<SentMessage>> replied;
    rig.connector->send(reply, [&replied](Result<SentMessage> r) { replied.set_value(std::move(r)); });
    const auto tagged = peer->expect("@+draft/reply");
    CHECK(tagged == std::optional<std::string>("@+draft/reply=id\\:with\\s"
                                                                         "space PRIVMSG #ops :re 1"));
    CHECK(peer->expect("PRIVMSG") == std::optional<std::string>("PRIVMSG #ops :re 2"));
    REQUIRE(replied.get_future().get().has_value());

    std::string text;
    for (int i = 0; i < 300; ++i) text += (i == 0 ? "" : " ") + std::string("w\xC3\xB6rd") + std::to_string(i);
    REQUIRE(rig.send("alice", text, true).has_value());
    std::string joined;
    const std::string source = "bot!bot@127.0.0.1";  // as the server showed it in the JOIN
    while (joined.size() < text.size()) {
        auto line = peer->expect("PRIVMSG alice :", 2s);
        REQUIRE(line);
        const std::string piece = line->substr(15);
        CHECK((":" + source + " " + *line + "\r\n").size() <= 512);
        CHECK(irc::valid_utf8(piece));
        joined += (joined.empty() ? "" : " ") + piece;
    }
    CHECK(joined == text);
    // every line after the first took its own token from the connection's scheduler
    CHECK(rig.host.scheduler.routes.size() >= 2);
}

TEST_CASE("no PONG in time means reconnect, reported as disconnected and connected again", "[irc]") {
    FakeIrcServer server;
    auto settings = Rig::settings(server.port());
    settings.ping_interval = 100ms;
    settings.ping_timeout = 200ms;
    Rig rig(settings);
    rig.connector->start(rig.host);
    auto peer = server.accept_registered();
    REQUIRE(peer);
    REQUIRE(finish_join(*peer));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));
    REQUIRE(peer->expect("PING :switchboard-lag", 2s));  // and no answer
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::disconnected, 1, 3s));
    CHECK(rig.logger.contains("no PONG"));
    auto again = server.accept_registered();
    REQUIRE(again);
    REQUIRE(finish_join(*again));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected, 2));
}

TEST_CASE("history replayed on join waits for the policy, and live lines wait behind it", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->start(rig.host);
    auto peer = server.accept_registered("bot", "server-time message-tags batch echo-message",
                                         "CHANTYPES=# CHANMODES=b,k,Hl,imnt");
    REQUIRE(peer);
    const std::string replay =
        ":fake BATCH +r1 chathistory :#ops\r\n"
        "@batch=r1;msgid=m1;time=2026-11-26T22:00:01.000Z :alice!a@h PRIVMSG #ops :one\r\n"
        "@batch=r1;msgid=m2;time=2026-11-26T22:00:02.000Z :alice!a@h PRIVMSG #ops :two\r\n"
        "@batch=r1;msgid=own;time=2026-11-26T22:00:02.000Z :bot!bot@h PRIVMSG #ops :echo: one\r\n"
        "@batch=r1;msgid=m3;time=2026-11-26T22:00:03.000Z :alice!a@h PRIVMSG #ops :three\r\n"
        ":fake BATCH :-r1\r\n"
        "@msgid=m4;time=2026-11-26T22:00:04.000Z :alice!a@h PRIVMSG #ops :four (live)\r\n";
    REQUIRE(finish_join(*peer, replay));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));
    CHECK(rig.host.events().back().detail.find("history: replay on join") != std::string::npos);
    CHECK(rig.host.messages().empty());  // m4 waits for the replay to be taken
    auto page = rig.history("#ops", std::string("m1"), 100);
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 2);
    CHECK(page->messages[0].id == "m2");
    CHECK(page->messages[0].recovered);
    CHECK(page->messages[1].id == "m3");
    CHECK(page->complete);
    REQUIRE(rig.host.wait_messages(1));
    CHECK(rig.host.messages()[0].id == "m4");
    CHECK_FALSE(rig.host.messages()[0].recovered);
}

TEST_CASE("without history, fetch_history says so and live lines flow at once", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->start(rig.host);
    auto peer = server.accept_registered();
    REQUIRE(peer);
    REQUIRE(finish_join(*peer, ":alice!a@h PRIVMSG #ops :early\r\n"));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));
    REQUIRE(rig.host.wait_messages(1));
    auto page = rig.history("#ops", std::nullopt, 100);
    REQUIRE_FALSE(page.has_value());
    CHECK(page.error().code == "no_history");
}

TEST_CASE("lines said during the join reach the host after it was told the connection is up", "[irc]") {
    // The host handles events and messages in order; a line handled before `connected` would find the connection
    // down, and a route from this channel to another of the same connection would not be sent.
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->start(rig.host);
    auto peer = server.accept_registered();
    REQUIRE(peer);
    REQUIRE(finish_join(*peer, ":alice!a@h PRIVMSG #ops :during the join\r\n"));
    REQUIRE(rig.host.wait_messages(1));
    const auto events = rig.host.events();
    REQUIRE_FALSE(events.empty());
    CHECK(events.front().type == ConnectionEvent::Type::connected);
    CHECK(rig.host.events_before_message(0) == 1);
}

TEST_CASE("a replay nobody asks for is dropped after recovery_wait and the live lines go", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->start(rig.host);
    auto peer = server.accept_registered("bot", "batch message-tags", "CHANMODES=b,k,Hl,imnt");
    REQUIRE(peer);
    REQUIRE(finish_join(*peer,
                        ":fake BATCH +r chathistory #ops\r\n@batch=r;msgid=old :alice!a@h PRIVMSG #ops :old\r\n"
                        ":fake BATCH -r\r\n@msgid=new :alice!a@h PRIVMSG #ops :new\r\n"));
    REQUIRE(rig.host.wait_messages(1, 3s));
    const auto messages = rig.host.messages();
    REQUIRE(messages.size() == 1);
    CHECK(messages[0].id == "new");
}

TEST_CASE("CHATHISTORY AFTER is sent where the server offers it and its batch is the page", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->start(rig.host);
    auto peer = server.accept_registered("bot", "batch message-tags server-time draft/chathistory",
                                         "CHANTYPES=# CHATHISTORY=50");
    REQUIRE(peer);
    REQUIRE(finish_join(*peer));
    REQUIRE(rig.host.wait_event(ConnectionEvent::Type::connected));
    std::promise<Result<HistoryPage>> promise;
    rig.connector->fetch_history({"#ops", std::string("m1"), 100},
                                 [&promise](Result<HistoryPage> r) { promise.set_value(std::move(r)); });
    auto request = peer->expect("CHATHISTORY");
    REQUIRE(request);
    CHECK(*request == "CHATHISTORY AFTER #ops msgid=m1 50");  // capped at the server's CHATHISTORY=50
    peer->send(":fake BATCH +h chathistory #ops");
    peer->send("@batch=h;msgid=m2;time=2026-11-26T22:00:02.000Z :alice!a@h PRIVMSG #ops :two");
    peer->send(":fake BATCH -h");
    auto future = promise.get_future();
    REQUIRE(future.wait_for(5s) == std::future_status::ready);
    auto page = future.get();
    REQUIRE(page.has_value());
    REQUIRE(page->messages.size() == 1);
    CHECK(page->messages[0].id == "m2");
    CHECK(page->complete);
}

TEST_CASE("sending while disconnected is retryable", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    const auto result = rig.send("#ops", "hello");
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().retryable);
}

TEST_CASE("after stop, sends and history requests are answered at once", "[irc]") {
    FakeIrcServer server;
    Rig rig(Rig::settings(server.port()));
    rig.connector->stop();
    const auto sent = rig.send("#ops", "late");
    REQUIRE_FALSE(sent.has_value());
    CHECK(sent.error().code == "cancelled");
    const auto page = rig.history("#ops", std::nullopt, 10);
    REQUIRE_FALSE(page.has_value());
    CHECK(page.error().code == "cancelled");
}

TEST_CASE("settings: the server address, TLS port default, channels with keys, and what check_config refuses",
          "[irc]") {
    PluginConfig config;
    config.set("server", std::string("irc.example.org"));
    config.set("tls", true);
    config.set("join", std::vector<std::string>{"#ops", "#secret  hunter2"});
    config.set("nick", std::string("sb"));
    auto settings = irc::settings_from_config(config);
    CHECK(settings.host == "irc.example.org");
    CHECK(settings.port == 6697);
    CHECK(settings.username == "sb");
    REQUIRE(settings.channels.size() == 2);
    CHECK(settings.channels[1].name == "#secret");
    CHECK(settings.channels[1].key == "hunter2");
    CHECK(irc::check_irc_config(config).empty());

    config.set("server", std::string("[::1]:7000"));
    config.set("tls", false);
    settings = irc::settings_from_config(config);
    CHECK(settings.host == "::1");
    CHECK(settings.port == 7000);

    PluginConfig bad;
    bad.set("server", std::string("host:99999"));
    bad.set("nick", std::string("two words"));
    bad.set("join", std::vector<std::string>{"ops", "#a,#b"});
    bad.set("sasl_user", std::string("only-user"));
    bad.set("realname", std::string("line\r\nQUIT"));
    const auto problems = irc::check_irc_config(bad);
    std::set<std::string> keys;
    for (const auto& problem : problems) keys.insert(problem.key);
    CHECK(keys == std::set<std::string>{"server", "nick", "join", "sasl_user", "realname"});
    CHECK_THROWS_AS(irc::settings_from_config(bad), ErrorException);
}
