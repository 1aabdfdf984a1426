// The Telegram protocol without the network: the envelope, updates into messages, errors into delivery outcomes,
// splitting at 4096 UTF-16 code units, the offset ledger and gap detection.
#include <catch2/catch.hpp>
#include <map>

#include "telegram_protocol.hpp"

using namespace switchboard;
using namespace switchboard::telegram;
using nlohmann::json;

namespace {

json message_update(std::int64_t update_id, std::int64_t chat, const std::string& chat_type, std::int64_t from,
                    const std::string& text, std::int64_t message_id = 7) {
    return json{{"update_id", update_id},
                {"message",
                 {{"message_id", message_id},
                  {"date", 1700000000},
                  {"chat", {{"id", chat}, {"type", chat_type}}},
                  {"from", {{"id", from}, {"is_bot", false}, {"first_name", "Alice"}}},
                  {"text", text}}}};
}

std::string repeat(const std::string& piece, std::size_t times) {
    std::string out;
    for (std::size_t i = 0; i < times; ++i) out += piece;
    return out;
}

}  // namespace

TEST_CASE("the Bot API envelope is read for success and failure", "[telegram]") {
    auto ok = parse_response(200, R"({"ok":true,"result":[1,2]})");
    CHECK(ok.ok);
    CHECK(ok.result == json::array({1, 2}));

    auto limited = parse_response(
        429,
        R"({"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}})");
    CHECK_FALSE(limited.ok);
    CHECK(limited.error_code == 429);
    CHECK(limited.description == "Too Many Requests: retry after 3");
    REQUIRE(limited.retry_after_s);
    CHECK(*limited.retry_after_s == 3);

    auto migrated = parse_response(
        400,
        R"({"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001}})");
    REQUIRE(migrated.migrate_to_chat_id);
    CHECK(*migrated.migrate_to_chat_id == -1001);

    auto proxy = parse_response(502, "<html>Bad Gateway</html>");
    CHECK_FALSE(proxy.ok);
    CHECK(proxy.error_code == 502);
}

TEST_CASE("updates become private and group messages but other updates and the bot's own are not delivered",
          "[telegram]") {
    json result = json::array();
    result.push_back(message_update(10, 2001, "private", 2001, "hi"));
    result.push_back(message_update(11, -100, "group", 2002, "in the group", 8));
    result.push_back(message_update(12, -1001000000001, "supergroup", 2001, "in the supergroup", 9));
    result.push_back(message_update(13, -100, "group", 1000, "the bot itself", 10));
    result.push_back(message_update(14, -200, "channel", 2001, "a channel post", 11));
    result.push_back(json{{"update_id", 15}, {"edited_message", {{"message_id", 7}}}});
    json photo = message_update(16, 2001, "private", 2001, "");
    photo["message"].erase("text");
    result.push_back(photo);
    json reply = message_update(17, -100, "group", 2002, "a reply", 12);
    reply["message"]["reply_to_message"] = {{"message_id", 8}};
    reply["message"]["from"] = {{"id", 2002}, {"is_bot", false}, {"first_name", "Bob"}, {"last_name", "B"}};
    result.push_back(reply);
    json nameless = message_update(18, 2003, "private", 2003, "hello", 1);
    nameless["message"]["from"] = {{"id", 2003}, {"is_bot", true}, {"username", "otherbot"}};
    result.push_back(nameless);

    auto updates = parse_updates(result, 1000);
    REQUIRE(updates.has_value());
    REQUIRE(updates->size() == 9);
    const auto& first = *(*updates)[0].message;
    CHECK(first.kind == MessageKind::private_message);
    CHECK(first.channel == "2001");
    CHECK(first.author.id == "2001");
    CHECK(first.author.display_name == "Alice");
    CHECK(first.id == "7");
    CHECK(first.text == "hi");
    CHECK(first.timestamp_ms == 1700000000000);
    CHECK(json::parse(first.raw)["update_id"] == 10);
    CHECK((*updates)[1].message->kind == MessageKind::group);
    CHECK((*updates)[1].message->channel == "-100");
    CHECK((*updates)[2].message->kind == MessageKind::group);
    CHECK((*updates)[2].message->channel == "-1001000000001");
    CHECK_FALSE((*updates)[3].message);
    CHECK((*updates)[3].skipped == "the bot's own message");
    CHECK_FALSE((*updates)[4].message);
    CHECK_FALSE((*updates)[5].message);
    CHECK((*updates)[5].skipped.find("edited_message") != std::string::npos);
    CHECK_FALSE((*updates)[6].message);
    REQUIRE((*updates)[7].message);
    CHECK((*updates)[7].message->reply_to == std::optional<std::string>("8"));
    CHECK((*updates)[7].message->author.display_name == "Bob B");
    CHECK((*updates)[8].message->author.display_name == "otherbot");
    CHECK((*updates)[8].message->author.is_bot);
    CHECK((*updates)[3].date_ms == 1700000000000);

    json broken = json::array({json{{"message", json::object()}}});
    auto bad = parse_updates(broken, 1000);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message.find("update_id") != std::string::npos);
}

TEST_CASE("request bodies carry chat ids as numbers usernames as strings and replies as reply_parameters",
          "[telegram]") {
    auto body = json::parse(send_message_body("-100", "hi", std::string("42")));
    CHECK(body["chat_id"] == -100);
    CHECK(body["text"] == "hi");
    CHECK(body["reply_parameters"]["message_id"] == 42);
    CHECK(body["reply_parameters"]["allow_sending_without_reply"] == true);
    body = json::parse(send_message_body("@sandbox_supergroup", "x", std::nullopt));
    CHECK(body["chat_id"] == "@sandbox_supergroup");
    CHECK_FALSE(body.contains("reply_parameters"));
    body = json::parse(send_message_body("2001", "x", std::string("5,6")));
    CHECK(body["reply_parameters"]["message_id"] == 5);  // a reply to a split message answers its first part

    auto poll = json::parse(get_updates_body(51, 100, 25, {"message"}));
    CHECK(poll["offset"] == 51);
    CHECK(poll["limit"] == 100);
    CHECK(poll["timeout"] == 25);
    CHECK(poll["allowed_updates"] == json::array({"message"}));
    CHECK_FALSE(json::parse(get_updates_body(std::nullopt, 10, 0, {})).contains("offset"));

    auto remove = json::parse(delete_message_body("2002", "9"));
    CHECK(remove["chat_id"] == 2002);
    CHECK(remove["message_id"] == 9);
    auto sent = parse_sent_message_id(json{{"message_id", 77}, {"chat", {{"id", 1}}}});
    REQUIRE(sent.has_value());
    CHECK(*sent == "77");
}

TEST_CASE("failed responses map to delivery outcomes", "[telegram]") {
    const auto error_of = [](unsigned status, const std::string& body) {
        return response_error(parse_response(status, body), "send to chat 2002");
    };
    auto blocked =
        error_of(403, R"({"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"})");
    CHECK(blocked.code == "unreachable");  // what the delivery engine reports as an unreachable recipient
    CHECK_FALSE(blocked.retryable);
    CHECK(blocked.message.find("bot was blocked by the user") != std::string::npos);

    auto limited = error_of(
        429,
        R"({"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}})");
    CHECK(limited.code == "rate_limited");
    CHECK(limited.retryable);
    CHECK(limited.retry_after_ms == 3000);
    const auto info = rate_limit_info(
        parse_response(429, R"({"ok":false,"error_code":429,"description":"x","parameters":{"retry_after":3}})"));
    CHECK(info.limited);
    CHECK_FALSE(info.global);
    CHECK(info.retry_after_s == 3);
    CHECK_FALSE(rate_limit_info(parse_response(200, R"({"ok":true,"result":true})")).limited);

    auto token = error_of(401, R"({"ok":false,"error_code":401,"description":"Unauthorized"})");
    CHECK(token.code == "token_rejected");
    CHECK_FALSE(token.retryable);
    auto conflict = error_of(
        409, R"({"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request"})");
    CHECK(conflict.code == "conflict");
    CHECK(conflict.message.find("another instance is polling") != std::string::npos);
    auto gateway = error_of(502, R"({"ok":false,"error_code":502,"description":"Bad Gateway"})");
    CHECK(gateway.code == "telegram_unavailable");
    CHECK(gateway.retryable);
    CHECK(error_of(400, R"({"ok":false,"error_code":400,"description":"Bad Request: chat not found"})").code ==
          "chat_not_found");
    CHECK(error_of(400, R"({"ok":false,"error_code":400,"description":"Bad Request: message to delete not found"})")
              .code == "message_not_found");
    auto migrated = error_of(
        400,
        R"({"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded","parameters":{"migrate_to_chat_id":-1001}})");
    CHECK(migrated.code == "chat_migrated");
    CHECK(migrated.message.find("-1001") != std::string::npos);
}

TEST_CASE("texts are split at 4096 UTF-16 code units between code points at a newline or space if one is near",
          "[telegram]") {
    CHECK(utf16_length("abc") == 3);
    CHECK(utf16_length("\xC3\xA9") == 1);          // é
    CHECK(utf16_length("\xF0\x9F\x98\x80") == 2);  // 😀, a surrogate pair in UTF-16
    CHECK(utf16_length("\xFF") == 1);              // an invalid byte becomes one U+FFFD

    CHECK(split_text("short") == std::vector<std::string>{"short"});
    CHECK(split_text("") == std::vector<std::string>{""});
    const std::string exact(4096, 'a');
    CHECK(split_text(exact) == std::vector<std::string>{exact});

    SECTION("a long word is cut at the limit") {
        const auto parts = split_text(std::string(5000, 'a'));
        REQUIRE(parts.size() == 2);
        CHECK(parts[0].size() == 4096);
        CHECK(parts[1].size() == 904);
    }
    SECTION("a surrogate pair at the limit is never cut in two") {
        // 4095 units, then an emoji of 2 units: it does not fit in the first part
        const std::string text = std::string(4095, 'a') + "\xF0\x9F\x98\x80" + "b";
        const auto parts = split_text(text);
        REQUIRE(parts.size() == 2);
        CHECK(parts[0] == std::string(4095, 'a'));
        CHECK(parts[1] ==
              "\xF0\x9F\x98\x80"
              "b");
    }
    SECTION("emoji-only texts split into whole emoji within the limit") {
        const std::string text = repeat("\xF0\x9F\x98\x80", 3000);  // 6000 units
        const auto parts = split_text(text);
        REQUIRE(parts.size() == 2);
        CHECK(utf16_length(parts[0]) == 4096);
        CHECK(parts[0].size() == 2048 * 4);
        CHECK(parts[0] + parts[1] == text);
    }
    SECTION("a newline in the last quarter is preferred, then a space") {
        const std::string text = std::string(3500, 'a') + "\n" + std::string(500, 'b') + " " + std::string(500, 'c');
        const auto parts = split_text(text);
        REQUIRE(parts.size() == 2);
        CHECK(parts[0] == std::string(3500, 'a') + "\n");
        const std::string spaced = std::string(3500, 'a') + " " + std::string(1000, 'b');
        CHECK(split_text(spaced)[0] == std::string(3500, 'a') + " ");
        const std::string early = std::string(100, 'a') + "\n" + std::string(5000, 'b');
        CHECK(split_text(early)[0].size() == 4096);  // a newline far back would waste most of a message
    }
    SECTION("every part of a mixed text fits and nothing is lost") {
        std::string text;
        for (int i = 0; i < 3000; ++i) text += i % 7 == 0 ? "\xE2\x82\xAC " : i % 5 == 0 ? "\xF0\x9F\x8E\x89\n" : "ab";
        const auto parts = split_text(text);
        std::string joined;
        for (const auto& part : parts) {
            CHECK(utf16_length(part) <= 4096);
            joined += part;
        }
        CHECK(joined == text);
    }
}

TEST_CASE("the ledger confirms only the leading run of handled updates and never delivers one twice", "[telegram]") {
    UpdateLedger ledger(std::optional<std::int64_t>(5));
    CHECK(ledger.next_offset() == std::optional<std::int64_t>(5));

    std::vector<Update> poll;
    for (std::int64_t id = 5; id <= 9; ++id) {
        Update update;
        update.update_id = id;
        if (id != 7) {  // update 7 is something the host does not handle
            Message message;
            message.id = std::to_string(100 + id);
            message.channel = "-100";
            update.message = message;
        }
        poll.push_back(update);
    }
    auto taken = ledger.take(poll, 0);
    CHECK(taken.deliver.size() == 4);
    CHECK(taken.fresh == 5);
    REQUIRE(taken.not_delivered.size() == 1);
    CHECK(taken.not_delivered[0].first == 7);
    CHECK(ledger.unconfirmed() == 5);
    CHECK(ledger.next_offset() == std::optional<std::int64_t>(5));

    std::map<std::string, bool> handled;
    const auto check = [&](const Message& message) -> Result<bool> { return handled[message.id]; };
    CHECK(ledger.advance(check) == 0);
    handled["106"] = true;  // 6 handled before 5: nothing may be confirmed yet
    CHECK(ledger.advance(check) == 0);
    handled["105"] = true;
    CHECK(ledger.advance(check) == 3);  // 5, 6, and 7 which needs no handling
    CHECK(ledger.next_offset() == std::optional<std::int64_t>(8));

    // The server sends the unconfirmed ones again, with a new one: only the new one is delivered.
    Update fresh;
    fresh.update_id = 10;
    Message m;
    m.id = "110";
    m.channel = "2001";
    fresh.message = m;
    std::vector<Update> again(poll.begin() + 3, poll.end());
    again.push_back(fresh);
    taken = ledger.take(again, 10);
    CHECK(taken.repeated == 2);
    REQUIRE(taken.deliver.size() == 1);
    CHECK(taken.deliver[0].id == "110");

    SECTION("a failing store check stops confirmation and says why") {
        std::optional<Error> error;
        CHECK(ledger.advance([](const Message&) -> Result<bool> { return fail("store_failed", "disk"); }, &error) == 0);
        REQUIRE(error);
        CHECK(error->code == "store_failed");
        CHECK(ledger.next_offset() == std::optional<std::int64_t>(8));
    }
    SECTION("once everything is handled the offset is past the last update") {
        handled["108"] = handled["109"] = handled["110"] = true;
        CHECK(ledger.advance(check) == 3);
        CHECK(ledger.unconfirmed() == 0);
        CHECK(ledger.next_offset() == std::optional<std::int64_t>(11));
    }
}

TEST_CASE("the ledger is capped: updates past the cap wait on the server", "[telegram]") {
    UpdateLedger ledger(std::nullopt, 2);
    CHECK_FALSE(ledger.next_offset());
    std::vector<Update> poll;
    for (std::int64_t id = 1; id <= 4; ++id) {
        Update update;
        update.update_id = id;
        Message message;
        message.id = std::to_string(id);
        message.channel = "1";
        update.message = message;
        poll.push_back(update);
    }
    auto taken = ledger.take(poll, 0);
    CHECK(taken.deliver.size() == 2);
    CHECK(taken.deferred == 2);
    CHECK(ledger.advance([](const Message&) -> Result<bool> { return true; }) == 2);
    taken = ledger.take(poll, 0);  // the server sends 3 and 4 again
    CHECK(taken.repeated == 2);
    REQUIRE(taken.deliver.size() == 2);
    CHECK(taken.deliver[0].id == "3");
}

TEST_CASE("a new session reports a gap when updates were dropped or the last poll is over 24 h old", "[telegram]") {
    constexpr std::int64_t kHour = 3600 * 1000;
    GapInputs inputs;
    inputs.now_ms = 100 * kHour;
    CHECK_FALSE(detect_gap(inputs));  // a first run: nothing to compare with

    inputs.stored_offset = 51;
    inputs.last_poll_ms = 99 * kHour;
    inputs.first_update_id = 51;
    CHECK_FALSE(detect_gap(inputs));
    inputs.first_update_id = std::nullopt;
    CHECK_FALSE(detect_gap(inputs));

    inputs.first_update_id = 61;
    auto gap = detect_gap(inputs);
    REQUIRE(gap);
    CHECK(gap->from == std::optional<std::int64_t>(51));
    CHECK(gap->to == std::optional<std::int64_t>(60));
    CHECK(gap->reason.find("51 to 60") != std::string::npos);

    inputs.first_update_id = 51;
    inputs.last_poll_ms = 75 * kHour;
    gap = detect_gap(inputs);
    REQUIRE(gap);
    CHECK(gap->reason.find("25 h 0 min") != std::string::npos);
    const auto record = json::parse(gap->to_json());
    CHECK(record["from"].is_null());  // which update ids expired is not known
    CHECK(record["to"].is_null());
    CHECK(record["reason"] == gap->reason);
}

TEST_CASE("backoff is capped and jittered", "[telegram]") {
    CHECK(backoff_ms(0, 1000, 60000, 0.0) == 1000);
    CHECK(backoff_ms(3, 1000, 60000, 1.0) == 8000);
    CHECK(backoff_ms(30, 1000, 60000, 1.0) == 60000);
    CHECK(backoff_ms(30, 1000, 60000, 0.5) == 30500);
}
