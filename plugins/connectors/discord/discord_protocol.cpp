#include "discord_protocol.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdlib>

namespace switchboard::discord {
namespace {

using nlohmann::json;

constexpr std::int64_t kDiscordEpochMs = 1420070400000LL;

// Field readers that say where a payload was wrong instead of throwing.
Result<std::string> string_field(const json& object, const char* key, std::string_view place) {
    if (!object.is_object()) return fail("bad_payload", std::string(place) + ": not an object");
    auto it = object.find(key);
    if (it == object.end()) return fail("bad_payload", std::string(place) + "." + key + ": missing");
    if (!it->is_string()) {
        return fail("bad_payload", std::string(place) + "." + key + ": expected a string, got " + it->type_name());
    }
    return ok_string(it->get<std::string>());
}

std::optional<std::string> optional_string(const json& object, const char* key) {
    if (!object.is_object()) return std::nullopt;
    auto it = object.find(key);
    if (it == object.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
}

std::optional<double> parse_double(const std::optional<std::string>& text) {
    if (!text || text->empty()) return std::nullopt;
    char* end = nullptr;
    const double value = std::strtod(text->c_str(), &end);
    if (end == text->c_str() || *end != '\0' || !std::isfinite(value) || value < 0) return std::nullopt;
    return value;
}

std::optional<std::uint32_t> parse_uint(const std::optional<std::string>& text) {
    if (!text || text->empty()) return std::nullopt;
    std::uint32_t value = 0;
    const char* first = text->data();
    const char* last = first + text->size();
    auto [ptr, ec] = std::from_chars(first, last, value);
    if (ec != std::errc() || ptr != last) return std::nullopt;
    return value;
}

// Length in bytes of the UTF-8 sequence at @p pos (1 for an invalid byte), and its width in UTF-16 code units.
std::pair<std::size_t, std::size_t> utf8_sequence(std::string_view text, std::size_t pos) {
    const auto lead = static_cast<unsigned char>(text[pos]);
    std::size_t length = 1;
    if ((lead & 0xE0U) == 0xC0U) {
        length = 2;
    } else if ((lead & 0xF0U) == 0xE0U) {
        length = 3;
    } else if ((lead & 0xF8U) == 0xF0U) {
        length = 4;
    }
    if (length == 1 || pos + length > text.size()) return {1, 1};
    for (std::size_t i = 1; i < length; ++i) {
        if ((static_cast<unsigned char>(text[pos + i]) & 0xC0U) != 0x80U) return {1, 1};
    }
    return {length, length == 4 ? 2 : 1};
}

std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

std::uint64_t fnv1a(std::string_view bytes, std::uint64_t seed) {
    std::uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (const char c : bytes) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33;  // murmur3's finaliser spreads the last bytes over every bit
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

void append_base62(std::string& out, std::uint64_t value) {
    static constexpr char kDigits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    for (int i = 0; i < 11; ++i) {  // 62^11 > 2^64
        out.push_back(kDigits[value % 62]);
        value /= 62;
    }
}

std::string body_message(std::string_view body, int& code) {
    code = 0;
    const json parsed = json::parse(body, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object()) return {};
    if (auto it = parsed.find("code"); it != parsed.end() && it->is_number_integer()) code = it->get<int>();
    return optional_string(parsed, "message").value_or("");
}

}  // namespace

Result<std::uint64_t> parse_intents(const std::vector<std::string>& names) {
    static const std::array<std::pair<std::string_view, std::uint64_t>, 4> kNamed{{
        {"GUILDS", kIntentGuilds},
        {"GUILD_MESSAGES", kIntentGuildMessages},
        {"DIRECT_MESSAGES", kIntentDirectMessages},
        {"MESSAGE_CONTENT", kIntentMessageContent},
    }};
    std::uint64_t mask = 0;
    for (const auto& name : names) {
        std::uint64_t number = 0;
        auto [ptr, ec] = std::from_chars(name.data(), name.data() + name.size(), number);
        if (!name.empty() && ec == std::errc() && ptr == name.data() + name.size()) {
            mask |= number;
            continue;
        }
        auto it = std::find_if(kNamed.begin(), kNamed.end(), [&](const auto& entry) { return entry.first == name; });
        if (it == kNamed.end()) {
            return fail("bad_intent", "unknown intent '" + name +
                                          "': use GUILDS, GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT or a "
                                          "number (the intent's bit value)");
        }
        mask |= it->second;
    }
    return mask;
}

Result<GatewayFrame> parse_frame(std::string_view text) {
    json parsed = json::parse(text, nullptr, false);
    if (parsed.is_discarded()) return fail("bad_payload", "gateway frame: not valid JSON");
    if (!parsed.is_object()) return fail("bad_payload", "gateway frame: not an object");
    GatewayFrame frame;
    auto op = parsed.find("op");
    if (op == parsed.end() || !op->is_number_integer()) return fail("bad_payload", "gateway frame.op: not an integer");
    frame.op = op->get<int>();
    if (auto d = parsed.find("d"); d != parsed.end()) frame.d = std::move(*d);
    if (auto s = parsed.find("s"); s != parsed.end() && !s->is_null()) {
        if (!s->is_number_integer()) return fail("bad_payload", "gateway frame.s: not an integer");
        frame.s = s->get<std::int64_t>();
    }
    if (auto t = parsed.find("t"); t != parsed.end() && !t->is_null()) {
        if (!t->is_string()) return fail("bad_payload", "gateway frame.t: not a string");
        frame.t = t->get<std::string>();
    }
    if (frame.op == static_cast<int>(Op::dispatch) && frame.t.empty()) {
        return fail("bad_payload", "gateway dispatch: no event name (t)");
    }
    return frame;
}

Result<std::int64_t> parse_hello(const json& d) {
    if (!d.is_object()) return fail("bad_payload", "HELLO.d: not an object");
    auto it = d.find("heartbeat_interval");
    if (it == d.end() || !it->is_number() || it->get<double>() <= 0) {
        return fail("bad_payload", "HELLO.d.heartbeat_interval: not a positive number");
    }
    return static_cast<std::int64_t>(it->get<double>());
}

Result<ReadyInfo> parse_ready(const json& d) {
    ReadyInfo ready;
    auto session = string_field(d, "session_id", "READY");
    if (!session) return session.error();
    ready.session_id = *session;
    auto resume_url = string_field(d, "resume_gateway_url", "READY");
    if (!resume_url) return resume_url.error();
    ready.resume_gateway_url = *resume_url;
    auto user = d.find("user");
    if (user == d.end()) return fail("bad_payload", "READY.user: missing");
    auto id = string_field(*user, "id", "READY.user");
    if (!id) return id.error();
    ready.user_id = *id;
    ready.user_name = optional_string(*user, "username").value_or(ready.user_id);
    return ready;
}

Result<std::optional<Message>> parse_message(const json& d, std::string_view self_id) {
    constexpr std::string_view kPlace = "MESSAGE_CREATE";
    auto id = string_field(d, "id", kPlace);
    if (!id) return id.error();
    auto channel = string_field(d, "channel_id", kPlace);
    if (!channel) return channel.error();
    auto author = d.find("author");
    if (author == d.end() || !author->is_object()) return fail("bad_payload", "MESSAGE_CREATE.author: not an object");
    auto author_id = string_field(*author, "id", "MESSAGE_CREATE.author");
    if (!author_id) return author_id.error();
    if (!self_id.empty() && *author_id == self_id) return std::optional<Message>{};
    if (auto type = d.find("type"); type != d.end()) {
        if (!type->is_number_integer()) return fail("bad_payload", "MESSAGE_CREATE.type: not an integer");
        const int value = type->get<int>();
        if (value != 0 && value != 19) return std::optional<Message>{};  // only plain messages and replies
    }
    Message message;
    message.id = *id;
    message.channel = *channel;
    message.author.id = *author_id;
    message.author.display_name = optional_string(*author, "global_name")
                                      .value_or(optional_string(*author, "username").value_or(*author_id));
    if (auto bot = author->find("bot"); bot != author->end() && bot->is_boolean()) message.author.is_bot = bot->get<bool>();
    if (auto content = d.find("content"); content != d.end() && !content->is_null()) {
        if (!content->is_string()) return fail("bad_payload", "MESSAGE_CREATE.content: not a string");
        message.text = content->get<std::string>();
    }
    std::optional<std::int64_t> when;
    if (auto stamp = optional_string(d, "timestamp")) when = parse_timestamp(*stamp);
    if (!when) when = snowflake_ms(message.id);
    message.timestamp_ms = when.value_or(0);
    const bool in_guild = d.contains("guild_id") && !d["guild_id"].is_null();
    message.kind = in_guild ? MessageKind::group : MessageKind::private_message;
    if (auto reference = d.find("message_reference"); reference != d.end() && reference->is_object()) {
        message.reply_to = optional_string(*reference, "message_id");
    }
    message.raw = d.dump();
    return std::optional<Message>{std::move(message)};
}

std::string identify_payload(const std::string& token, std::uint64_t intents) {
    const json payload{{"op", static_cast<int>(Op::identify)},
                       {"d",
                        {{"token", token},
                         {"intents", intents},
                         {"properties", {{"os", "linux"}, {"browser", "switchboard"}, {"device", "switchboard"}}}}}};
    return payload.dump();
}

std::string resume_payload(const std::string& token, const std::string& session_id,
                           std::optional<std::int64_t> sequence) {
    json d{{"token", token}, {"session_id", session_id}, {"seq", nullptr}};
    if (sequence) d["seq"] = *sequence;
    return json{{"op", static_cast<int>(Op::resume)}, {"d", std::move(d)}}.dump();
}

std::string heartbeat_payload(std::optional<std::int64_t> sequence) {
    json payload{{"op", static_cast<int>(Op::heartbeat)}, {"d", nullptr}};
    if (sequence) payload["d"] = *sequence;
    return payload.dump();
}

CloseClass classify_close(int code) {
    const std::string number = " (" + std::to_string(code) + ")";
    switch (code) {
        case 0: return {CloseAction::resume, "connection lost without a close code"};
        case 4000: return {CloseAction::resume, "unknown error" + number};
        case 4001: return {CloseAction::resume, "unknown opcode" + number};
        case 4002: return {CloseAction::resume, "decode error" + number};
        case 4003: return {CloseAction::resume, "not authenticated" + number};
        case 4005: return {CloseAction::resume, "already authenticated" + number};
        case 4008: return {CloseAction::resume, "gateway rate limit" + number};
        case 4007: return {CloseAction::identify, "invalid sequence" + number};
        case 4009: return {CloseAction::identify, "session timed out" + number};
        case 4004:
            return {CloseAction::fatal, "token rejected" + number +
                                            ": check the connection's token (the bot token from the Discord "
                                            "developer portal); not reconnecting"};
        case 4010: return {CloseAction::fatal, "invalid shard" + number + "; not reconnecting"};
        case 4011: return {CloseAction::fatal, "sharding required" + number + "; not reconnecting"};
        case 4012: return {CloseAction::fatal, "invalid API version" + number + "; not reconnecting"};
        case 4013:
            return {CloseAction::fatal, "invalid intents" + number + ": check the connection's intents; not reconnecting"};
        case 4014:
            return {CloseAction::fatal,
                    "disallowed intents" + number +
                        ": enable the privileged intents (MESSAGE_CONTENT) for the bot in the Discord developer "
                        "portal, or remove them from the connection's intents; not reconnecting"};
        default: return {CloseAction::resume, "closed" + number};
    }
}

Result<GatewayBot> parse_gateway_bot(std::string_view body) {
    const json parsed = json::parse(body, nullptr, false);
    if (parsed.is_discarded()) return fail("bad_payload", "GET /gateway/bot: not valid JSON");
    auto url = string_field(parsed, "url", "GET /gateway/bot");
    if (!url) return url.error();
    GatewayBot info;
    info.url = *url;
    if (auto limit = parsed.find("session_start_limit"); limit != parsed.end() && limit->is_object()) {
        if (auto mc = limit->find("max_concurrency"); mc != limit->end() && mc->is_number_integer()) {
            info.max_concurrency = static_cast<std::uint32_t>(std::max<std::int64_t>(1, mc->get<std::int64_t>()));
        }
        if (auto rem = limit->find("remaining"); rem != limit->end() && rem->is_number_integer()) {
            info.identify_remaining = rem->get<std::int64_t>();
        }
        if (auto reset = limit->find("reset_after"); reset != limit->end() && reset->is_number()) {
            info.identify_reset_after_ms = static_cast<std::int64_t>(reset->get<double>());
        }
    }
    return info;
}

RateLimitInfo parse_rate_limit(unsigned status, const RateLimitHeaders& headers, std::string_view body) {
    RateLimitInfo info;
    if (headers.bucket && !headers.bucket->empty()) info.bucket = headers.bucket;
    info.limit = parse_uint(headers.limit);
    info.remaining = parse_uint(headers.remaining);
    info.reset_after_s = parse_double(headers.reset_after);
    if (status == 429) {
        info.limited = true;
        std::optional<double> retry;
        bool global = false;
        const json parsed = json::parse(body, nullptr, false);
        if (!parsed.is_discarded() && parsed.is_object()) {
            if (auto it = parsed.find("retry_after"); it != parsed.end() && it->is_number() && it->get<double>() >= 0) {
                retry = it->get<double>();
            }
            if (auto it = parsed.find("global"); it != parsed.end() && it->is_boolean()) global = it->get<bool>();
        }
        if (!retry) retry = parse_double(headers.retry_after);
        if (!retry) retry = info.reset_after_s;
        info.retry_after_s = retry.value_or(1.0);
        const bool header_global = headers.global && (*headers.global == "true" || *headers.global == "True");
        info.global = global || header_global || (headers.scope && *headers.scope == "global");
        info.invalid = !(headers.scope && *headers.scope == "shared");
    } else if (status == 401 || status == 403) {
        info.invalid = true;
    }
    return info;
}

Error response_error(unsigned status, std::string_view body, const RateLimitInfo& rate, const std::string& what) {
    int code = 0;
    const std::string text = body_message(body, code);
    const std::string said = text.empty() ? "" : ": Discord says \"" + text + "\"";
    const std::string where = what + " failed with HTTP " + std::to_string(status);
    if (status == 429) {
        const auto ms = static_cast<std::int64_t>(std::ceil(rate.retry_after_s * 1000.0));
        return fail_retryable("rate_limited",
                              where + " (rate limited" + (rate.global ? ", global" : "") + "; retry after " +
                                  std::to_string(ms) + " ms)",
                              ms);
    }
    if (status >= 500) return fail_retryable("discord_unavailable", where + said + "; retrying later may succeed");
    if (status == 401) {
        return fail("token_rejected", where + said + ": the token was rejected; check the connection's token");
    }
    if (status == 404 || code == 10003 || code == 10008 || code == 10013) {
        if (code == 10008) return fail("unknown_message", where + said + ": the message does not exist (any more)");
        if (code == 10013) return fail("unknown_user", where + said + ": no such Discord user");
        return fail("unknown_channel", where + said + ": the channel does not exist or the bot cannot see it");
    }
    if (status == 403) {
        if (code == 50007) {
            return fail("cannot_message_user",
                        where + said + ": the user does not accept direct messages from this bot");
        }
        return fail("missing_access",
                    where + said + ": the bot lacks access or permission there (check its roles and the channel's "
                                   "permission overwrites)");
    }
    return fail("discord_error", where + said);
}

std::size_t utf8_length(std::string_view text) {
    std::size_t count = 0;
    for (std::size_t pos = 0; pos < text.size();) {
        const auto [length, width] = utf8_sequence(text, pos);
        pos += length;
        count += width;
    }
    return count;
}

std::vector<std::string> split_text(std::string_view text, std::size_t max_chars) {
    std::vector<std::string> parts;
    if (max_chars == 0 || utf8_length(text) <= max_chars) {
        parts.emplace_back(text);
        return parts;
    }
    const std::size_t min_cut = max_chars - max_chars / 4;
    while (!text.empty()) {
        if (utf8_length(text) <= max_chars) {
            parts.emplace_back(text);
            break;
        }
        std::size_t pos = 0, count = 0;
        std::size_t after_newline = 0, after_space = 0;
        while (pos < text.size()) {
            const auto [length, width] = utf8_sequence(text, pos);
            if (count + width > max_chars) break;
            const char c = text[pos];
            pos += length;
            count += width;
            if (count >= min_cut) {
                if (c == '\n') after_newline = pos;
                if (c == ' ') after_space = pos;
            }
        }
        if (pos == 0) pos = utf8_sequence(text, 0).first;  // max_chars 1 and a surrogate pair: never stall
        const std::size_t cut = after_newline != 0 ? after_newline : after_space != 0 ? after_space : pos;
        parts.emplace_back(text.substr(0, cut));
        text.remove_prefix(cut);
    }
    return parts;
}

std::string nonce_for(std::string_view idempotency_key, std::size_t part) {
    std::string key(idempotency_key);
    if (part != 0) key += "#" + std::to_string(part);
    std::string nonce;
    nonce.reserve(22);
    append_base62(nonce, fnv1a(key, 0x5b0a7d));
    append_base62(nonce, fnv1a(key, 0x1d15c0));
    return nonce;
}

std::string create_message_body(const std::string& content, const std::optional<std::string>& nonce,
                                const std::optional<std::string>& reply_to) {
    json body{{"content", content}};
    if (nonce) {
        body["nonce"] = *nonce;
        body["enforce_nonce"] = true;
    }
    if (reply_to && !reply_to->empty()) {
        body["message_reference"] = {{"message_id", *reply_to}, {"fail_if_not_exists", false}};
    }
    return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<std::string> parse_created_message(std::string_view body) {
    const json parsed = json::parse(body, nullptr, false);
    if (parsed.is_discarded()) return fail("bad_payload", "created message: not valid JSON");
    return string_field(parsed, "id", "created message");
}

Result<std::string> parse_dm_channel(std::string_view body) {
    const json parsed = json::parse(body, nullptr, false);
    if (parsed.is_discarded()) return fail("bad_payload", "DM channel: not valid JSON");
    return string_field(parsed, "id", "DM channel");
}

Result<HistoryPage> parse_history(std::string_view body, std::uint32_t limit, std::string_view self_id,
                                  MessageKind kind, std::size_t& skipped) {
    skipped = 0;
    const json parsed = json::parse(body, nullptr, false);
    if (parsed.is_discarded()) return fail("bad_payload", "channel history: not valid JSON");
    if (!parsed.is_array()) return fail("bad_payload", "channel history: not an array");
    HistoryPage page;
    for (const auto& element : parsed) {
        auto message = parse_message(element, self_id);
        if (!message) {
            ++skipped;
            continue;
        }
        if (!*message) continue;
        (*message)->recovered = true;
        (*message)->kind = kind;
        page.messages.push_back(std::move(**message));
    }
    // Discord sends newest first; snowflakes order numerically (shorter is older).
    std::sort(page.messages.begin(), page.messages.end(), [](const Message& a, const Message& b) {
        return a.id.size() != b.id.size() ? a.id.size() < b.id.size() : a.id < b.id;
    });
    page.complete = parsed.size() < limit;
    return page;
}

std::optional<std::int64_t> snowflake_ms(std::string_view id) {
    std::uint64_t value = 0;
    auto [ptr, ec] = std::from_chars(id.data(), id.data() + id.size(), value);
    if (id.empty() || ec != std::errc() || ptr != id.data() + id.size()) return std::nullopt;
    return static_cast<std::int64_t>(value >> 22) + kDiscordEpochMs;
}

std::optional<std::int64_t> parse_timestamp(std::string_view text) {
    // YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)
    auto number = [&](std::size_t at, std::size_t digits) -> std::optional<int> {
        if (at + digits > text.size()) return std::nullopt;
        int value = 0;
        for (std::size_t i = at; i < at + digits; ++i) {
            if (text[i] < '0' || text[i] > '9') return std::nullopt;
            value = value * 10 + (text[i] - '0');
        }
        return value;
    };
    if (text.size() < 20 || text[4] != '-' || text[7] != '-' || (text[10] != 'T' && text[10] != ' ') ||
        text[13] != ':' || text[16] != ':') {
        return std::nullopt;
    }
    const auto year = number(0, 4), month = number(5, 2), day = number(8, 2);
    const auto hour = number(11, 2), minute = number(14, 2), second = number(17, 2);
    if (!year || !month || !day || !hour || !minute || !second || *month < 1 || *month > 12 || *day < 1 ||
        *day > 31 || *hour > 23 || *minute > 59 || *second > 60) {
        return std::nullopt;
    }
    std::size_t pos = 19;
    std::int64_t millis = 0;
    if (pos < text.size() && text[pos] == '.') {
        ++pos;
        int digits = 0;
        while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
            if (digits < 3) millis = millis * 10 + (text[pos] - '0');
            ++digits;
            ++pos;
        }
        if (digits == 0) return std::nullopt;
        for (int i = digits; i < 3; ++i) millis *= 10;
    }
    std::int64_t offset_minutes = 0;
    if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
        ++pos;
    } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
        const int sign = text[pos] == '-' ? -1 : 1;
        const auto oh = number(pos + 1, 2);
        const auto om = number(pos + 4, 2);
        if (!oh || !om || pos + 3 >= text.size() || text[pos + 3] != ':') return std::nullopt;
        offset_minutes = sign * (*oh * 60 + *om);
        pos += 6;
    } else {
        return std::nullopt;
    }
    if (pos != text.size()) return std::nullopt;
    const std::int64_t days = days_from_civil(*year, static_cast<unsigned>(*month), static_cast<unsigned>(*day));
    const std::int64_t seconds = days * 86400 + *hour * 3600 + *minute * 60 + *second - offset_minutes * 60;
    return seconds * 1000 + millis;
}

std::int64_t backoff_ms(std::uint32_t attempt, std::int64_t base_ms, std::int64_t cap_ms, double unit) {
    base_ms = std::max<std::int64_t>(1, base_ms);
    cap_ms = std::max(cap_ms, base_ms);
    std::int64_t ceiling = base_ms;
    for (std::uint32_t i = 0; i < attempt && ceiling < cap_ms; ++i) ceiling *= 2;
    ceiling = std::min(ceiling, cap_ms);
    unit = std::clamp(unit, 0.0, 1.0);
    return base_ms + static_cast<std::int64_t>(unit * static_cast<double>(ceiling - base_ms));
}

}  // namespace switchboard::discord
