#include "telegram_protocol.hpp"

#include <algorithm>
#include <cmath>

namespace switchboard::telegram {
namespace {

using nlohmann::json;

std::optional<std::int64_t> int_field(const json& object, const char* key) {
    if (!object.is_object()) return std::nullopt;
    auto it = object.find(key);
    if (it == object.end() || !it->is_number_integer()) return std::nullopt;
    return it->get<std::int64_t>();
}

std::optional<std::string> string_field(const json& object, const char* key) {
    if (!object.is_object()) return std::nullopt;
    auto it = object.find(key);
    if (it == object.end() || !it->is_string()) return std::nullopt;
    return it->get<std::string>();
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

std::string display_name(const json& from, const std::string& id) {
    const auto first = string_field(from, "first_name");
    const auto last = string_field(from, "last_name");
    if (first && !first->empty()) return last && !last->empty() ? *first + " " + *last : *first;
    if (auto username = string_field(from, "username"); username && !username->empty()) return *username;
    return id;
}

// The Message of one update's `message`, or why there is none.
std::optional<Message> read_message(const json& m, std::int64_t self_id, std::string& skipped, std::int64_t& date_ms) {
    if (!m.is_object()) {
        skipped = "message: not an object";
        return std::nullopt;
    }
    const auto message_id = int_field(m, "message_id");
    const auto date = int_field(m, "date");
    if (date) date_ms = *date * 1000;
    const json* chat = m.contains("chat") ? &m["chat"] : nullptr;
    const auto chat_id = chat ? int_field(*chat, "id") : std::nullopt;
    const auto chat_type = chat ? string_field(*chat, "type") : std::nullopt;
    if (!message_id || !chat_id || !chat_type) {
        skipped = "message: message_id, chat.id or chat.type missing";
        return std::nullopt;
    }
    Message message;
    if (*chat_type == "private") {
        message.kind = MessageKind::private_message;
    } else if (*chat_type == "group" || *chat_type == "supergroup") {
        message.kind = MessageKind::group;
    } else {
        skipped = "a message in a " + *chat_type + " chat";
        return std::nullopt;
    }
    const json* from = m.contains("from") ? &m["from"] : nullptr;
    const auto from_id = from ? int_field(*from, "id") : std::nullopt;
    if (!from_id) {
        skipped = "a message without a sender (from)";
        return std::nullopt;
    }
    if (*from_id == self_id) {
        skipped = "the bot's own message";
        return std::nullopt;
    }
    auto text = string_field(m, "text");
    if (!text) text = string_field(m, "caption");
    if (!text) {
        skipped = "a message without text";
        return std::nullopt;
    }
    message.id = std::to_string(*message_id);
    message.channel = std::to_string(*chat_id);
    message.author.id = std::to_string(*from_id);
    message.author.display_name = display_name(*from, message.author.id);
    message.author.is_bot = from->value("is_bot", false);
    message.text = std::move(*text);
    message.timestamp_ms = date_ms;
    if (m.contains("reply_to_message")) {
        if (auto reply = int_field(m["reply_to_message"], "message_id")) message.reply_to = std::to_string(*reply);
    }
    return message;
}

}  // namespace

ApiResponse parse_response(unsigned status, std::string_view body) {
    ApiResponse response;
    response.error_code = static_cast<int>(status);
    const json parsed = json::parse(body, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object() || !parsed.contains("ok") || !parsed["ok"].is_boolean()) {
        response.ok = false;
        response.description = "HTTP " + std::to_string(status) + " without a Bot API response";
        return response;
    }
    response.ok = parsed["ok"].get<bool>();
    if (response.ok) {
        response.result = parsed.contains("result") ? parsed["result"] : json();
        response.error_code = 0;
        return response;
    }
    if (auto code = int_field(parsed, "error_code")) response.error_code = static_cast<int>(*code);
    response.description = string_field(parsed, "description").value_or("");
    if (parsed.contains("parameters") && parsed["parameters"].is_object()) {
        const json& parameters = parsed["parameters"];
        if (parameters.contains("retry_after") && parameters["retry_after"].is_number()) {
            response.retry_after_s = parameters["retry_after"].get<double>();
        }
        response.migrate_to_chat_id = int_field(parameters, "migrate_to_chat_id");
    }
    return response;
}

Result<std::vector<Update>> parse_updates(const json& result, std::int64_t self_id) {
    if (!result.is_array()) return fail("bad_payload", "getUpdates: result is not an array");
    std::vector<Update> updates;
    updates.reserve(result.size());
    for (std::size_t i = 0; i < result.size(); ++i) {
        const json& element = result[i];
        const auto id = int_field(element, "update_id");
        if (!id)
            return fail("bad_payload",
                        "getUpdates: result[" + std::to_string(i) + "].update_id: missing or not an integer");
        Update update;
        update.update_id = *id;
        if (element.contains("message")) {
            update.message = read_message(element["message"], self_id, update.skipped, update.date_ms);
        } else {
            std::string type = "unknown";
            for (const auto& [key, value] : element.items()) {
                if (key != "update_id") type = key;
            }
            update.skipped = "an update of type " + type;
        }
        if (update.message) update.message->raw = element.dump(-1, ' ', false, json::error_handler_t::replace);
        updates.push_back(std::move(update));
    }
    return updates;
}

Result<BotUser> parse_bot_user(const json& result) {
    const auto id = int_field(result, "id");
    if (!id) return fail("bad_payload", "getMe: result.id missing");
    return BotUser{*id, string_field(result, "username").value_or("")};
}

std::string get_updates_body(std::optional<std::int64_t> offset, std::uint32_t limit, std::int64_t timeout_s,
                             const std::vector<std::string>& allowed_updates) {
    json body{{"limit", limit}, {"timeout", timeout_s}, {"allowed_updates", allowed_updates}};
    if (offset) body["offset"] = *offset;
    return body.dump();
}

json chat_id_json(const std::string& chat_id) {
    if (!chat_id.empty()) {
        std::size_t used = 0;
        try {
            const long long value = std::stoll(chat_id, &used);
            if (used == chat_id.size()) return value;
        } catch (const std::exception&) {
        }
    }
    return chat_id;
}

std::string send_message_body(const std::string& chat_id, const std::string& text,
                              const std::optional<std::string>& reply_to) {
    json body{{"chat_id", chat_id_json(chat_id)}, {"text", text}};
    if (reply_to && !reply_to->empty()) {
        // A reply to a message split in parts answers its first part.
        const std::string first = reply_to->substr(0, reply_to->find(','));
        body["reply_parameters"] = {{"message_id", chat_id_json(first)}, {"allow_sending_without_reply", true}};
    }
    return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string delete_message_body(const std::string& chat_id, const std::string& message_id) {
    return json{{"chat_id", chat_id_json(chat_id)}, {"message_id", chat_id_json(message_id)}}.dump();
}

Result<std::string> parse_sent_message_id(const json& result) {
    const auto id = int_field(result, "message_id");
    if (!id) return fail("bad_payload", "sendMessage: result.message_id missing");
    return ok_string(std::to_string(*id));
}

Error response_error(const ApiResponse& response, const std::string& what) {
    const int code = response.error_code;
    const std::string said = response.description.empty() ? "" : ": Telegram says \"" + response.description + "\"";
    const std::string where = what + " failed with " + std::to_string(code) + said;
    const auto says = [&](std::string_view needle) { return response.description.find(needle) != std::string::npos; };
    if (code == 429) {
        const auto ms = static_cast<std::int64_t>(std::ceil(std::max(1.0, response.retry_after_s.value_or(1)) * 1000));
        return fail_retryable("rate_limited", where + " (retry after " + std::to_string(ms) + " ms)", ms);
    }
    if (code == 403) {
        return fail("unreachable", where +
                                       ": the bot cannot write there (blocked by the user, removed from the group, "
                                       "or the user never started it)");
    }
    if (code == 401) return fail("token_rejected", where + ": the token was rejected; check the connection's token");
    if (code == 404) return fail("not_found", where + ": check the connection's token and api_base");
    if (code == 409) {
        return fail_retryable("conflict", where + (says("webhook") ? ": a webhook is set for this bot; delete it first"
                                                                   : ": another instance is polling this bot"));
    }
    if (code == 400) {
        if (response.migrate_to_chat_id) {
            return fail("chat_migrated", where + ": the group is now the supergroup " +
                                             std::to_string(*response.migrate_to_chat_id) + "; use that id");
        }
        if (says("chat not found")) return fail("chat_not_found", where);
        if (says("message to delete not found")) return fail("message_not_found", where);
        return fail("bad_request", where);
    }
    return fail_retryable("telegram_unavailable", where + "; retrying later may succeed");
}

RateLimitInfo rate_limit_info(const ApiResponse& response) {
    RateLimitInfo info;
    if (response.error_code == 429) {
        info.limited = true;
        info.retry_after_s = std::max(1.0, response.retry_after_s.value_or(1));
    }
    return info;
}

std::size_t utf16_length(std::string_view text) {
    std::size_t count = 0;
    for (std::size_t pos = 0; pos < text.size();) {
        const auto [length, width] = utf8_sequence(text, pos);
        pos += length;
        count += width;
    }
    return count;
}

std::vector<std::string> split_text(std::string_view text, std::size_t max_units) {
    std::vector<std::string> parts;
    max_units = std::max<std::size_t>(max_units, 2);  // room for one surrogate pair: every part makes progress
    const std::size_t min_cut = max_units - max_units / 4;
    while (utf16_length(text) > max_units) {
        std::size_t pos = 0, count = 0;
        std::size_t after_newline = 0, after_space = 0;
        while (pos < text.size()) {
            const auto [length, width] = utf8_sequence(text, pos);
            if (count + width > max_units) break;
            const char c = text[pos];
            pos += length;
            count += width;
            if (count >= min_cut) {
                if (c == '\n') after_newline = pos;
                if (c == ' ') after_space = pos;
            }
        }
        const std::size_t cut = after_newline != 0 ? after_newline : after_space != 0 ? after_space : pos;
        parts.emplace_back(text.substr(0, cut));
        text.remove_prefix(cut);
    }
    if (!text.empty() || parts.empty()) parts.emplace_back(text);
    return parts;
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

UpdateLedger::UpdateLedger(std::optional<std::int64_t> stored_offset, std::size_t max_unconfirmed)
    : stored_offset_(stored_offset), max_unconfirmed_(std::max<std::size_t>(1, max_unconfirmed)) {}

UpdateLedger::Taken UpdateLedger::take(const std::vector<Update>& updates, std::int64_t now_ms) {
    Taken taken;
    for (const Update& update : updates) {
        if (update.update_id <= highest_) {
            ++taken.repeated;
            continue;
        }
        if (pending_.size() >= max_unconfirmed_) {
            ++taken.deferred;  // not recorded: the server sends it again once the front was confirmed
            continue;
        }
        ++taken.fresh;
        highest_ = update.update_id;
        if (!update.message) {
            taken.not_delivered.emplace_back(update.update_id, update.skipped);
            // Nothing to handle: confirmable as soon as everything before it is.
            if (!pending_.empty()) pending_.push_back(Pending{update.update_id, now_ms, Message{}});
            continue;
        }
        Message key;
        key.channel = update.message->channel;
        key.id = update.message->id;
        pending_.push_back(Pending{update.update_id, now_ms, std::move(key)});
        taken.deliver.push_back(*update.message);
    }
    return taken;
}

std::size_t UpdateLedger::advance(const HandledCheck& handled, std::optional<Error>* error) {
    std::size_t dropped = 0;
    while (!pending_.empty()) {
        const Pending& front = pending_.front();
        if (!front.key.id.empty()) {
            Result<bool> done = handled(front.key);
            if (!done) {
                if (error) *error = done.error();
                break;
            }
            if (!*done) break;
        }
        pending_.pop_front();
        ++dropped;
    }
    return dropped;
}

std::optional<std::int64_t> UpdateLedger::next_offset() const {
    if (!pending_.empty()) return pending_.front().update_id;
    if (highest_ > 0) return highest_ + 1;
    return stored_offset_;
}

std::optional<std::pair<std::int64_t, std::int64_t>> UpdateLedger::oldest() const {
    if (pending_.empty()) return std::nullopt;
    return std::make_pair(pending_.front().update_id, pending_.front().taken_ms);
}

std::string Gap::to_json() const {
    nlohmann::json out{{"from", nullptr}, {"to", nullptr}, {"reason", reason}};
    if (from) out["from"] = *from;
    if (to) out["to"] = *to;
    return out.dump();
}

std::optional<Gap> detect_gap(const GapInputs& inputs) {
    std::optional<Gap> gap;
    if (inputs.stored_offset && inputs.first_update_id && *inputs.first_update_id > *inputs.stored_offset) {
        gap = Gap{inputs.stored_offset, *inputs.first_update_id - 1,
                  "updates " + std::to_string(*inputs.stored_offset) + " to " +
                      std::to_string(*inputs.first_update_id - 1) +
                      " never arrived: Telegram dropped them (older than 24 h) or another instance confirmed them"};
    }
    if (inputs.last_poll_ms && inputs.now_ms - *inputs.last_poll_ms > kRetentionMs) {
        const std::string away = "no poll for " + format_duration_ms(inputs.now_ms - *inputs.last_poll_ms) +
                                 ", longer than the 24 h Telegram keeps updates: what was sent before the last 24 h "
                                 "is lost";
        if (gap) {
            gap->reason = away + "; " + gap->reason;
        } else {
            gap = Gap{std::nullopt, std::nullopt, away};  // which ids expired is not known
        }
    }
    return gap;
}

std::string format_duration_ms(std::int64_t ms) {
    if (ms < 0) ms = 0;
    if (ms < 1000) return std::to_string(ms) + " ms";
    const std::int64_t s = ms / 1000;
    if (s < 60) return std::to_string(s) + " s";
    if (s < 3600) return std::to_string(s / 60) + " min " + std::to_string(s % 60) + " s";
    return std::to_string(s / 3600) + " h " + std::to_string(s % 3600 / 60) + " min";
}

}  // namespace switchboard::telegram
