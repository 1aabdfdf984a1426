#include "irc_protocol.hpp"

#include <catch2/catch.hpp>

using namespace switchboard::irc;

TEST_CASE("an IRCv3 line is parsed into tags, source, command and parameters", "[irc]") {
    const auto line = parse_line(
        "@time=2026-11-26T22:12:55.737Z;msgid=420~1~0;batch=1;x=a\\sb\\:c\\\\d :alice!al@127.0.0.1 PRIVMSG #ops :hello "
        "there\r\n");
    REQUIRE(line.has_value());
    CHECK(line->tag("msgid") == std::optional<std::string>("420~1~0"));
    CHECK(line->tag("batch") == std::optional<std::string>("1"));
    CHECK(line->tag("x") == std::optional<std::string>("a b;c\\d"));
    CHECK(line->source == "alice!al@127.0.0.1");
    CHECK(line->nick() == "alice");
    CHECK(line->command == "PRIVMSG");
    REQUIRE(line->params.size() == 2);
    CHECK(line->params[0] == "#ops");
    CHECK(line->params[1] == "hello there");
}

TEST_CASE("lines without a prefix, numerics and lower-case commands parse", "[irc]") {
    auto ping = parse_line("PING :irc.test");
    REQUIRE(ping.has_value());
    CHECK(ping->source.empty());
    CHECK(ping->command == "PING");
    CHECK(ping->param(0) == "irc.test");
    auto numeric = parse_line(":irc.test 005 bot CHANTYPES=# CHANMODES=b,k,Hl,imnt :are supported");
    REQUIRE(numeric.has_value());
    CHECK(numeric->command == "005");
    CHECK(numeric->params.size() == 4);
    CHECK(parse_line(":x privmsg #a :b")->command == "PRIVMSG");
    CHECK(parse_line(":irc.test BATCH :-1")->param(0) == "-1");
}

TEST_CASE("garbage is not a line", "[irc]") {
    CHECK_FALSE(parse_line("").has_value());
    CHECK_FALSE(parse_line(":onlyprefix").has_value());
    CHECK_FALSE(parse_line("@tags=only").has_value());
    CHECK_FALSE(parse_line(std::string("PRIV\0MSG #a :b", 15)).has_value());
    CHECK_FALSE(parse_line("\x93\xff\x01 garbage").has_value());
    CHECK_FALSE(parse_line("12 :short numeric").has_value());
    CHECK_FALSE(parse_line(std::string(kMaxInboundLine + 1, 'A')).has_value());
}

TEST_CASE("server-time is read to the millisecond", "[irc]") {
    CHECK(parse_server_time("1970-01-01T00:00:00.000Z") == std::optional<std::int64_t>(0));
    CHECK(parse_server_time("2026-11-26T22:12:55.737Z") == std::optional<std::int64_t>(1795731175737));
    CHECK(parse_server_time("2026-11-26T22:12:55Z") == std::optional<std::int64_t>(1795731175000));
    CHECK_FALSE(parse_server_time("2026-11-26 22:12:55Z").has_value());
    CHECK_FALSE(parse_server_time("yesterday").has_value());
}

TEST_CASE("text is split on lines and UTF-8 boundaries, never carrying CR, LF or NUL", "[irc]") {
    SECTION("newlines of every kind end a piece, empty lines and NUL go") {
        const auto pieces = split_text(std::string("one\r\ntwo\n\nthr\0ee\rfour", 22), 100);
        REQUIRE(pieces == std::vector<std::string>{"one", "two", "three", "four"});
    }
    SECTION("an injected command stays text of a PRIVMSG") {
        const auto pieces = split_text("hi\r\nQUIT :bye", 100);
        REQUIRE(pieces == std::vector<std::string>{"hi", "QUIT :bye"});
    }
    SECTION("long text is cut at spaces where one is near the end") {
        const auto pieces = split_text("aaaa bbbb cccc dddd", 10);
        REQUIRE(pieces == std::vector<std::string>{"aaaa bbbb", "cccc dddd"});
    }
    SECTION("multi-byte characters are never cut") {
        std::string text;
        for (int i = 0; i < 100; ++i) text += "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80";  // é € 😀 (9 bytes)
        for (std::size_t budget : {4, 5, 7, 10, 31, 400}) {
            const auto pieces = split_text(text, budget);
            std::string joined;
            for (const auto& piece : pieces) {
                CHECK(piece.size() <= budget);
                CHECK(valid_utf8(piece));
                joined += piece;
            }
            CHECK(joined == text);
        }
    }
}

TEST_CASE("a PRIVMSG's text budget leaves room for the source the server adds", "[irc]") {
    const std::string source = "switchbot!switchbot@127.0.0.1";
    const std::size_t budget = privmsg_budget(source.size(), "#ops");
    const std::string relayed = ":" + source + " PRIVMSG #ops :" + std::string(budget, 'x') + "\r\n";
    CHECK(relayed.size() == 512);
}

TEST_CASE("invalid UTF-8 is recognised and can be repaired", "[irc]") {
    CHECK(valid_utf8("plain"));
    CHECK(valid_utf8("\xC3\xA9t\xC3\xA9"));
    CHECK_FALSE(valid_utf8("\xC3"));
    CHECK_FALSE(valid_utf8("\xE9t\xE9"));        // latin-1
    CHECK_FALSE(valid_utf8("\xC0\xAF"));         // overlong
    CHECK_FALSE(valid_utf8("\xED\xA0\x80"));     // surrogate
    CHECK(repair_utf8("a\xFF" "b") == "a\xEF\xBF\xBD" "b");
}

TEST_CASE("messages without a msgid get a stable id from time, nick and text", "[irc]") {
    const auto a = fallback_message_id(1000, "Alice", "hi");
    CHECK(a == fallback_message_id(1000, "alice", "hi"));  // nicks compare case-insensitively
    CHECK(a != fallback_message_id(1001, "alice", "hi"));
    CHECK(a != fallback_message_id(1000, "bob", "hi"));
    CHECK(a != fallback_message_id(1000, "alice", "hi!"));
}

TEST_CASE("SASL PLAIN is base64 of user NUL user NUL password in 400-byte chunks", "[irc]") {
    CHECK(base64("") == "");
    CHECK(base64("f") == "Zg==");
    CHECK(base64("fo") == "Zm8=");
    CHECK(base64("foo") == "Zm9v");
    CHECK(sasl_plain_chunks("bot", "pw") == std::vector<std::string>{base64(std::string("bot\0bot\0pw", 10))});
    const auto chunks = sasl_plain_chunks("u", std::string(296, 'p'));  // 300 bytes: exactly 400 in base64
    REQUIRE(chunks.size() == 2);
    CHECK(chunks[0].size() == 400);
    CHECK(chunks[1] == "+");
}

TEST_CASE("CTCP, capability lists and case mapping", "[irc]") {
    const auto ctcp = parse_ctcp("\x01VERSION\x01");
    REQUIRE(ctcp.has_value());
    CHECK(ctcp->verb == "VERSION");
    CHECK(parse_ctcp("\x01" "ACTION waves\x01")->args == "waves");
    CHECK_FALSE(parse_ctcp("hello").has_value());
    const auto caps = parse_caps("sasl=PLAIN,EXTERNAL server-time -batch");
    CHECK(caps.at("sasl") == "PLAIN,EXTERNAL");
    CHECK(caps.count("server-time") == 1);
    CHECK(caps.count("batch") == 1);
    CHECK(irc_lower("#Ops[1]\\~") == "#ops{1}|^");
    CHECK(safe_param("#ops"));
    CHECK_FALSE(safe_param("#ops\r\nQUIT"));
    CHECK_FALSE(safe_param(":x"));
    CHECK_FALSE(safe_param("a b"));
}

TEST_CASE("tag values escape and unescape to the same text", "[irc]") {
    const std::string value = "a;b c\\d\r\ne";
    CHECK(escape_tag_value(value) == "a\\:b\\sc\\\\d\\r\\ne");
    CHECK(unescape_tag_value(escape_tag_value(value)) == value);
}
