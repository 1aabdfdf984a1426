#include "discord_protocol.hpp"
#include "discord_settings.hpp"

#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

using namespace switchboard;
using namespace switchboard::discord;
using nlohmann::json;

namespace {

json guild_message() {
    return json::parse(R"({
        "id": "1180000000000000001", "channel_id": "555", "guild_id": "777", "type": 0,
        "author": {"id": "42", "username": "alice", "global_name": "Alice A.", "discriminator": "0"},
        "content": "hello there", "timestamp": "2024-01-02T03:04:05.678000+00:00",
        "mentions": [], "attachments": [], "embeds": []
    })");
}

bool valid_utf8(const std::string& text) {
    for (std::size_t i = 0; i < text.size();) {
        const auto c = static_cast<unsigned char>(text[i]);
        std::size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (n == 0 || i + n > text.size()) return false;
        for (std::size_t k = 1; k < n; ++k) {
            if ((static_cast<unsigned char>(text[i + k]) & 0xC0) != 0x80) return false;
        }
        i += n;
    }
    return true;
}

}  // namespace

TEST_CASE("a gateway frame is parsed, and a garbled one is an error that names the field", "[discord]") {
    auto frame = parse_frame(R"({"op":0,"d":{"x":1},"s":7,"t":"MESSAGE_CREATE"})");
    REQUIRE(frame.has_value());
    CHECK(frame->op == 0);
    CHECK(frame->s == 7);
    CHECK(frame->t == "MESSAGE_CREATE");
    CHECK(frame->d["x"] == 1);

    auto ack = parse_frame(R"({"op":11})");
    REQUIRE(ack.has_value());
    CHECK(ack->op == 11);
    CHECK_FALSE(ack->s.has_value());

    CHECK_FALSE(parse_frame("{not json").has_value());
    CHECK(parse_frame("{not json").error().message.find("not valid JSON") != std::string::npos);
    CHECK(parse_frame(R"({"op":"0"})").error().message.find("op") != std::string::npos);
    CHECK(parse_frame(R"({"op":0,"s":"x","t":"A"})").error().message.find("frame.s") != std::string::npos);
    CHECK(parse_frame(R"({"op":0,"d":{}})").error().message.find("no event name") != std::string::npos);
    CHECK_FALSE(parse_frame("[1,2]").has_value());
}

TEST_CASE("Hello and READY give the heartbeat interval and the session to resume", "[discord]") {
    auto interval = parse_hello(json::parse(R"({"heartbeat_interval":41250})"));
    REQUIRE(interval.has_value());
    CHECK(*interval == 41250);
    CHECK_FALSE(parse_hello(json::parse(R"({"heartbeat_interval":"soon"})")).has_value());
    CHECK_FALSE(parse_hello(json::parse(R"({"heartbeat_interval":0})")).has_value());

    auto ready = parse_ready(json::parse(R"({"v":10,"session_id":"abc","resume_gateway_url":"wss://r.example",
        "user":{"id":"99","username":"bot"},"guilds":[],"application":{"id":"99","flags":0}})"));
    REQUIRE(ready.has_value());
    CHECK(ready->session_id == "abc");
    CHECK(ready->resume_gateway_url == "wss://r.example");
    CHECK(ready->user_id == "99");
    CHECK(ready->user_name == "bot");
    auto broken = parse_ready(json::parse(R"({"session_id":5,"resume_gateway_url":"x","user":{"id":"1"}})"));
    REQUIRE_FALSE(broken.has_value());
    CHECK(broken.error().message == "READY.session_id: expected a string, got number");
}

TEST_CASE("a guild MESSAGE_CREATE becomes a group message with every field", "[discord]") {
    auto parsed = parse_message(guild_message(), "99");
    REQUIRE(parsed.has_value());
    REQUIRE(parsed->has_value());
    const Message& m = **parsed;
    CHECK(m.id == "1180000000000000001");
    CHECK(m.channel == "555");
    CHECK(m.kind == MessageKind::group);
    CHECK(m.author.id == "42");
    CHECK(m.author.display_name == "Alice A.");
    CHECK_FALSE(m.author.is_bot);
    CHECK(m.text == "hello there");
    CHECK(m.timestamp_ms == 1704164645678);
    CHECK_FALSE(m.reply_to.has_value());
    CHECK_FALSE(m.recovered);
    CHECK(json::parse(m.raw)["guild_id"] == "777");
}

TEST_CASE("a DM is a private message, a reply names what it answers, names fall back to the username", "[discord]") {
    json d = guild_message();
    d.erase("guild_id");
    d["author"]["global_name"] = nullptr;
    d["author"]["bot"] = true;
    d["type"] = 19;
    d["message_reference"] = {{"message_id", "1170000000000000000"}, {"channel_id", "555"}};
    auto parsed = parse_message(d, "99");
    REQUIRE(parsed.has_value());
    REQUIRE(parsed->has_value());
    CHECK((*parsed)->kind == MessageKind::private_message);
    CHECK((*parsed)->author.display_name == "alice");
    CHECK((*parsed)->author.is_bot);
    CHECK((*parsed)->reply_to == std::optional<std::string>("1170000000000000000"));
}

TEST_CASE("the bot's own messages and system messages are skipped without an error", "[discord]") {
    auto own = parse_message(guild_message(), "42");
    REQUIRE(own.has_value());
    CHECK_FALSE(own->has_value());
    json join = guild_message();
    join["type"] = 7;
    auto system = parse_message(join, "99");
    REQUIRE(system.has_value());
    CHECK_FALSE(system->has_value());
}

TEST_CASE("a MESSAGE_CREATE with wrong types is an error naming the place", "[discord]") {
    json d = guild_message();
    d["content"] = 12;
    CHECK(parse_message(d, "99").error().message == "MESSAGE_CREATE.content: not a string");
    d = guild_message();
    d.erase("author");
    CHECK(parse_message(d, "99").error().message == "MESSAGE_CREATE.author: not an object");
    d = guild_message();
    d["channel_id"] = 555;
    CHECK(parse_message(d, "99").error().message == "MESSAGE_CREATE.channel_id: expected a string, got number");
    CHECK_FALSE(parse_message(json::array(), "99").has_value());
    d = guild_message();
    d["timestamp"] = "yesterday";
    auto fallback = parse_message(d, "99");
    REQUIRE(fallback.has_value());
    CHECK((*fallback)->timestamp_ms == *snowflake_ms("1180000000000000001"));
}

TEST_CASE("close codes are grouped into resume, identify anew and never reconnect", "[discord]") {
    for (int code : {0, 1000, 1001, 1006, 4000, 4001, 4002, 4003, 4005, 4008}) {
        INFO(code);
        CHECK(classify_close(code).action == CloseAction::resume);
    }
    for (int code : {4007, 4009}) {
        INFO(code);
        CHECK(classify_close(code).action == CloseAction::identify);
    }
    for (int code : {4004, 4010, 4011, 4012, 4013, 4014}) {
        INFO(code);
        CHECK(classify_close(code).action == CloseAction::fatal);
    }
    CHECK(classify_close(4004).reason.rfind("token rejected (4004)", 0) == 0);
    CHECK(classify_close(4014).reason.find("MESSAGE_CONTENT") != std::string::npos);
}

TEST_CASE("identify, resume and heartbeat payloads carry what the gateway needs", "[discord]") {
    const json identify = json::parse(identify_payload("tok", kIntentGuilds | kIntentMessageContent));
    CHECK(identify["op"] == 2);
    CHECK(identify["d"]["token"] == "tok");
    CHECK(identify["d"]["intents"] == (1 | (1 << 15)));
    CHECK(identify["d"]["properties"]["os"] == "linux");
    const json resume = json::parse(resume_payload("tok", "sess", 41));
    CHECK(resume["op"] == 6);
    CHECK(resume["d"]["session_id"] == "sess");
    CHECK(resume["d"]["seq"] == 41);
    CHECK(json::parse(heartbeat_payload(std::nullopt))["d"].is_null());
    CHECK(json::parse(heartbeat_payload(12))["d"] == 12);
}

TEST_CASE("rate-limit headers and 429 bodies become what the scheduler learns", "[discord]") {
    RateLimitHeaders headers;
    headers.limit = "5";
    headers.remaining = "0";
    headers.reset_after = "1.25";
    headers.bucket = "abcd1234";
    auto ok = parse_rate_limit(200, headers, "{}");
    CHECK(ok.bucket == std::optional<std::string>("abcd1234"));
    CHECK(ok.limit == std::optional<std::uint32_t>(5));
    CHECK(ok.remaining == std::optional<std::uint32_t>(0));
    CHECK(ok.reset_after_s == Approx(1.25));
    CHECK_FALSE(ok.limited);
    CHECK_FALSE(ok.invalid);

    auto limited = parse_rate_limit(429, headers, R"({"message":"You are being rate limited.","retry_after":0.64,"global":false})");
    CHECK(limited.limited);
    CHECK_FALSE(limited.global);
    CHECK(limited.retry_after_s == Approx(0.64));
    CHECK(limited.invalid);

    RateLimitHeaders global_headers;
    global_headers.global = "true";
    global_headers.scope = "global";
    global_headers.retry_after = "3";
    auto global = parse_rate_limit(429, global_headers, "not json");
    CHECK(global.global);
    CHECK(global.retry_after_s == Approx(3.0));

    RateLimitHeaders shared;
    shared.scope = "shared";
    auto shared_limit = parse_rate_limit(429, shared, R"({"retry_after":2,"global":false})");
    CHECK(shared_limit.limited);
    CHECK_FALSE(shared_limit.invalid);

    CHECK(parse_rate_limit(401, {}, "").invalid);
    CHECK(parse_rate_limit(403, {}, "").invalid);
    CHECK_FALSE(parse_rate_limit(404, {}, "").invalid);

    RateLimitHeaders garbage;
    garbage.limit = "five";
    garbage.reset_after = "-1";
    auto ignored = parse_rate_limit(200, garbage, "");
    CHECK_FALSE(ignored.limit.has_value());
    CHECK_FALSE(ignored.reset_after_s.has_value());
}

TEST_CASE("failed responses map to stable error codes, retryable where trying again can help", "[discord]") {
    RateLimitInfo rate;
    rate.limited = true;
    rate.retry_after_s = 0.25;
    auto limited = response_error(429, "{}", rate, "send to channel 5");
    CHECK(limited.code == "rate_limited");
    CHECK(limited.retryable);
    CHECK(limited.retry_after_ms == 250);

    auto down = response_error(502, "", {}, "send to channel 5");
    CHECK(down.code == "discord_unavailable");
    CHECK(down.retryable);

    auto unknown = response_error(404, R"({"message":"Unknown Channel","code":10003})", {}, "send to channel 5");
    CHECK(unknown.code == "unknown_channel");
    CHECK_FALSE(unknown.retryable);
    CHECK(unknown.message.find("channel 5") != std::string::npos);
    CHECK(unknown.message.find("Unknown Channel") != std::string::npos);

    auto forbidden = response_error(403, R"({"message":"Missing Access","code":50001})", {}, "send to channel 5");
    CHECK(forbidden.code == "missing_access");
    CHECK_FALSE(forbidden.retryable);
    CHECK(forbidden.message.find("channel 5") != std::string::npos);

    CHECK(response_error(403, R"({"message":"Cannot send messages to this user","code":50007})", {}, "x").code ==
          "cannot_message_user");
    CHECK(response_error(404, R"({"message":"Unknown Message","code":10008})", {}, "x").code == "unknown_message");
    CHECK(response_error(401, "", {}, "x").code == "token_rejected");
    CHECK(response_error(400, R"({"message":"Invalid Form Body","code":50035})", {}, "x").code == "discord_error");
}

TEST_CASE("long texts are split into parts of at most 2000 characters on UTF-8 boundaries", "[discord]") {
    SECTION("a short text is one part") {
        CHECK(split_text("hi", 2000) == std::vector<std::string>{"hi"});
        CHECK(split_text("", 2000) == std::vector<std::string>{""});
    }
    SECTION("plain text without spaces is cut hard and loses nothing") {
        const std::string text(4500, 'a');
        const auto parts = split_text(text, 2000);
        REQUIRE(parts.size() == 3);
        CHECK(parts[0].size() == 2000);
        CHECK(parts[0] + parts[1] + parts[2] == text);
    }
    SECTION("multi-byte characters are never cut and count as one character each") {
        std::string text;
        for (int i = 0; i < 2500; ++i) text += "\xC3\xA9";  // é
        const auto parts = split_text(text, 2000);
        REQUIRE(parts.size() == 2);
        CHECK(utf8_length(parts[0]) == 2000);
        CHECK(parts[0].size() == 4000);
        std::string joined;
        for (const auto& part : parts) {
            CHECK(valid_utf8(part));
            joined += part;
        }
        CHECK(joined == text);
    }
    SECTION("characters outside the BMP count two, as Discord counts them, and stay whole") {
        std::string text = "x";
        for (int i = 0; i < 1500; ++i) text += "\xF0\x9F\x98\x80";  // 😀
        CHECK(utf8_length(text) == 3001);
        const auto parts = split_text(text, 2000);
        std::string joined;
        for (const auto& part : parts) {
            CHECK(valid_utf8(part));
            CHECK(utf8_length(part) <= 2000);
            joined += part;
        }
        CHECK(joined == text);
    }
    SECTION("a cut prefers the end of a line, then a space") {
        const std::string line(1700, 'b');
        const std::string text = line + "\n" + std::string(250, 'c') + " " + std::string(600, 'd');
        const auto parts = split_text(text, 2000);
        REQUIRE(parts.size() == 2);
        CHECK(parts[0] == line + "\n");
        CHECK(parts[0] + parts[1] == text);
        const std::string words = std::string(1800, 'e') + " " + std::string(600, 'f');
        CHECK(split_text(words, 2000)[0] == std::string(1800, 'e') + " ");
    }
    SECTION("invalid bytes count one each and pass through unchanged") {
        const std::string text = std::string(1999, 'a') + "\xC3" + "\xFF" + "zz";
        const auto parts = split_text(text, 2000);
        CHECK(parts[0] + parts[1] == text);
        CHECK(parts[0].size() == 2000);
    }
}

TEST_CASE("a nonce is short, stable for an idempotency key and different across keys and parts", "[discord]") {
    const auto nonce = nonce_for("plan-17/recipient-3");
    CHECK(nonce.size() <= 25);
    CHECK(nonce == nonce_for("plan-17/recipient-3"));
    CHECK(nonce != nonce_for("plan-17/recipient-4"));
    CHECK(nonce != nonce_for("plan-17/recipient-3", 1));
    for (char c : nonce) CHECK(std::isalnum(static_cast<unsigned char>(c)));
    const json body = json::parse(create_message_body("hi", nonce, std::optional<std::string>("123")));
    CHECK(body["content"] == "hi");
    CHECK(body["nonce"] == nonce);
    CHECK(body["enforce_nonce"] == true);
    CHECK(body["message_reference"]["message_id"] == "123");
    const json plain = json::parse(create_message_body("hi", std::nullopt, std::nullopt));
    CHECK_FALSE(plain.contains("nonce"));
    CHECK_FALSE(plain.contains("message_reference"));
}

TEST_CASE("a history page comes back oldest first, recovered, and complete when short", "[discord]") {
    json page = json::array();
    for (const char* id : {"1180000000000000003", "1180000000000000002", "1180000000000000001"}) {
        json m = guild_message();
        m["id"] = id;
        page.push_back(m);
    }
    json own = guild_message();
    own["id"] = "1180000000000000004";
    own["author"]["id"] = "99";
    page.insert(page.begin(), own);
    json broken = guild_message();
    broken["content"] = false;
    page.push_back(broken);
    std::size_t skipped = 0;
    auto parsed = parse_history(page.dump(), 5, "99", MessageKind::group, skipped);
    REQUIRE(parsed.has_value());
    CHECK(skipped == 1);
    REQUIRE(parsed->messages.size() == 3);
    CHECK(parsed->messages[0].id == "1180000000000000001");
    CHECK(parsed->messages[2].id == "1180000000000000003");
    CHECK(parsed->messages[0].recovered);
    CHECK(parsed->messages[0].kind == MessageKind::group);
    CHECK_FALSE(parsed->complete);  // 5 came back for a limit of 5
    // REST messages carry no guild_id: the kind is the channel's, as the caller says.
    json dm_page = json::array({guild_message()});
    dm_page[0].erase("guild_id");
    auto dm = parse_history(dm_page.dump(), 100, "99", MessageKind::private_message, skipped);
    REQUIRE(dm.has_value());
    REQUIRE(dm->messages.size() == 1);
    CHECK(dm->messages[0].kind == MessageKind::private_message);
    json without_guild = json::array({guild_message()});
    without_guild[0].erase("guild_id");
    auto guild = parse_history(without_guild.dump(), 100, "99", MessageKind::group, skipped);
    REQUIRE(guild.has_value());
    CHECK(guild->messages[0].kind == MessageKind::group);
    auto short_page = parse_history(page.dump(), 100, "99", MessageKind::group, skipped);
    REQUIRE(short_page.has_value());
    CHECK(short_page->complete);
    CHECK_FALSE(parse_history(R"({"message":"no"})", 100, "99", MessageKind::group, skipped).has_value());
}

TEST_CASE("snowflakes, timestamps, intents and backoff", "[discord]") {
    CHECK(snowflake_ms("175928847299117063") == 1462015105796);
    CHECK_FALSE(snowflake_ms("abc").has_value());
    CHECK(parse_timestamp("2024-01-02T03:04:05Z") == 1704164645000);
    CHECK(parse_timestamp("2024-01-02T05:04:05.5+02:00") == 1704164645500);
    CHECK_FALSE(parse_timestamp("2024-01-02").has_value());
    CHECK(parse_intents({"GUILDS", "GUILD_MESSAGES", "DIRECT_MESSAGES", "MESSAGE_CONTENT"}).value() ==
          (1 | 1 << 9 | 1 << 12 | 1 << 15));
    CHECK(parse_intents({"513"}).value() == 513);
    CHECK(parse_intents({"GUILD_PRESENCES"}).error().message.find("GUILD_PRESENCES") != std::string::npos);
    CHECK(backoff_ms(0, 1000, 60000, 0.99) == 1000);
    CHECK(backoff_ms(3, 1000, 60000, 0.0) == 1000);
    CHECK(backoff_ms(3, 1000, 60000, 1.0) == 8000);
    CHECK(backoff_ms(20, 1000, 60000, 1.0) == 60000);
    CHECK(backoff_ms(20, 1000, 60000, 0.5) <= 60000);
}

TEST_CASE("api_base and gateway URLs are parsed with their defaults", "[discord]") {
    auto https = parse_endpoint("https://discord.com/api/v10");
    REQUIRE(https.has_value());
    CHECK(https->tls);
    CHECK(https->host == "discord.com");
    CHECK(https->port == "443");
    CHECK(https->path == "/api/v10");
    CHECK(https->host_header() == "discord.com");
    auto local = parse_endpoint("http://127.0.0.1:5123/api/v10/");
    REQUIRE(local.has_value());
    CHECK_FALSE(local->tls);
    CHECK(local->port == "5123");
    CHECK(local->path == "/api/v10");
    CHECK(local->host_header() == "127.0.0.1:5123");
    auto wss = parse_endpoint("wss://gateway.discord.gg/?v=10&encoding=json");
    REQUIRE(wss.has_value());
    CHECK(wss->tls);
    CHECK(wss->path.empty());
    CHECK(wss->query == "v=10&encoding=json");
    CHECK(parse_endpoint("ftp://x").error().message.find("scheme") != std::string::npos);
    CHECK_FALSE(parse_endpoint("not a url").has_value());
}
