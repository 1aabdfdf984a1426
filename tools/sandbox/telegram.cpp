// A protocol-faithful local Telegram Bot API: /bot<token>/<method> with getUpdates long polling, and the /_sandbox/
// control API that tests use to play the users, move the clock, inject faults and read what the bot did. All state
// lives on the server's single thread. tools/sandbox/README.md documents the behaviour.

#include "telegram.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <deque>
#include <iostream>
#include <map>
#include <set>

namespace switchboard::sandbox::telegram {
namespace {

using json = nlohmann::json;
using Steady = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

constexpr std::size_t kMaxTextUnits = 4096;  // UTF-16 code units, as Telegram counts
constexpr std::int64_t kBulkMax = 100000;
constexpr const char* kConflict =
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

// --- small helpers ------------------------------------------------------------------------------------------------

std::string lower(std::string text) {
    for (auto& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return text;
}

/// Telegram measures text in UTF-16 code units: a character outside the BMP (4 UTF-8 bytes) counts twice.
std::size_t utf16_length(std::string_view text) {
    std::size_t units = 0;
    for (unsigned char c : text) {
        if ((c & 0xC0) != 0x80) ++units;
        if (c >= 0xF0) ++units;
    }
    return units;
}

std::optional<std::int64_t> parse_integer(std::string text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
    if (text.empty() || text.size() > 19) return std::nullopt;
    const std::size_t start = text[0] == '-' || text[0] == '+' ? 1 : 0;
    if (start == text.size()) return std::nullopt;
    for (std::size_t i = start; i < text.size(); ++i)
        if (text[i] < '0' || text[i] > '9') return std::nullopt;
    return std::stoll(text);
}

/// A JSON value that is an integer, or a string holding one (tests and form bodies send ids either way).
std::optional<std::int64_t> as_integer(const json& value) {
    if (value.is_number_integer()) return value.get<std::int64_t>();
    if (value.is_number_float()) return static_cast<std::int64_t>(value.get<double>());
    if (value.is_string()) return parse_integer(value.get<std::string>());
    return std::nullopt;
}

/// The Bot API's envelope: {"ok":true,"result":…}.
HttpResponse ok(const json& result) { return HttpResponse::json(200, {{"ok", true}, {"result", result}}); }

/// The Bot API's error envelope; the HTTP status is the error_code.
HttpResponse fail(int code, const std::string& description, std::optional<std::int64_t> retry_after = {}) {
    json body = {{"ok", false}, {"error_code", code}, {"description", description}};
    if (retry_after) body["parameters"] = {{"retry_after", *retry_after}};
    return HttpResponse::json(code, body);
}

HttpResponse too_many(std::int64_t retry_after) {
    return fail(429, "Too Many Requests: retry after " + std::to_string(retry_after), retry_after);
}

HttpResponse control_error(int status, const std::string& message) {
    return HttpResponse::json(status, {{"error", message}});
}

/// Whole seconds to wait, rounded up and at least 1, as retry_after always is.
std::int64_t retry_seconds(Steady::duration wait) {
    const double seconds = std::chrono::duration<double>(wait).count();
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(std::ceil(seconds)));
}

/// The value of `name="…"` in a Content-Disposition header.
std::string disposition_name(std::string_view headers) {
    const auto at = headers.find("name=\"");
    if (at == std::string_view::npos) return {};
    const auto start = at + 6;
    const auto end = headers.find('"', start);
    return std::string(headers.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
}

/// A multipart/form-data body as name/value pairs (files are read as their bytes; the Bot API sandbox needs none).
std::optional<json> parse_multipart(const std::string& body, const std::string& content_type) {
    const auto at = content_type.find("boundary=");
    if (at == std::string::npos) return std::nullopt;
    std::string boundary = content_type.substr(at + 9);
    if (const auto semicolon = boundary.find(';'); semicolon != std::string::npos) boundary.resize(semicolon);
    if (boundary.size() >= 2 && boundary.front() == '"') boundary = boundary.substr(1, boundary.size() - 2);
    const std::string delimiter = "--" + boundary;
    json out = json::object();
    std::size_t position = body.find(delimiter);
    while (position != std::string::npos) {
        position += delimiter.size();
        if (body.compare(position, 2, "--") == 0) break;
        const auto headers_end = body.find("\r\n\r\n", position);
        if (headers_end == std::string::npos) return std::nullopt;
        const auto next = body.find("\r\n" + delimiter, headers_end + 4);
        if (next == std::string::npos) return std::nullopt;
        const std::string name = disposition_name(std::string_view(body).substr(position, headers_end - position));
        if (!name.empty()) out[name] = body.substr(headers_end + 4, next - headers_end - 4);
        position = next + 2;
    }
    return out;
}

/// A Bot API call's parameters, merged from the query string and the body (form, multipart or JSON) as the real
/// server reads them: form values are strings, JSON values keep their types, and each accessor takes either.
class Params {
public:
    /// Empty when the body cannot be read.
    static std::optional<Params> read(const HttpRequest& request) {
        Params params;
        for (const auto& [name, value] : request.query) params.values_[name] = value;
        const std::string type = lower(request.header("content-type"));
        if (request.body.empty()) return params;
        if (type.rfind("application/json", 0) == 0) {
            const json body = json::parse(request.body, nullptr, false);
            if (body.is_discarded() || !body.is_object()) return std::nullopt;
            for (const auto& [name, value] : body.items()) params.values_[name] = value;
        } else if (type.rfind("multipart/form-data", 0) == 0) {
            auto parts = parse_multipart(request.body, request.header("content-type"));
            if (!parts) return std::nullopt;
            for (const auto& [name, value] : parts->items()) params.values_[name] = value;
        } else {
            for (const auto& [name, value] : parse_form(request.body)) params.values_[name] = value;
        }
        return params;
    }

    bool has(const char* name) const { return values_.contains(name) && !values_[name].is_null(); }

    std::optional<std::int64_t> integer(const char* name) const {
        return has(name) ? as_integer(values_[name]) : std::nullopt;
    }

    std::optional<std::string> string(const char* name) const {
        if (!has(name)) return std::nullopt;
        const auto& value = values_[name];
        if (value.is_string()) return value.get<std::string>();
        return value.dump();
    }

    /// An object or array, sent as JSON inside a form field or directly in a JSON body.
    std::optional<json> structured(const char* name) const {
        if (!has(name)) return std::nullopt;
        const auto& value = values_[name];
        if (value.is_object() || value.is_array()) return value;
        if (!value.is_string()) return std::nullopt;
        json parsed = json::parse(value.get<std::string>(), nullptr, false);
        if (parsed.is_discarded()) return std::nullopt;
        return parsed;
    }

    bool flag(const char* name) const {
        if (!has(name)) return false;
        const auto& value = values_[name];
        if (value.is_boolean()) return value.get<bool>();
        if (value.is_number()) return value.get<double>() != 0;
        return value.is_string() && (lower(value.get<std::string>()) == "true" || value.get<std::string>() == "1");
    }

private:
    json values_ = json::object();
};

// --- the world ----------------------------------------------------------------------------------------------------

struct User {
    std::int64_t id = 0;
    std::string first_name;
    std::string username;
    bool is_bot = false;
};

struct StoredMessage {
    std::int64_t message_id = 0;
    std::int64_t from = 0;
    std::int64_t date = 0;  // unix seconds on the sandbox clock
    std::string text;
    std::optional<std::int64_t> reply_to;
    bool deleted = false;
};

struct Chat {
    std::int64_t id = 0;
    std::string type;  // private | group | supergroup
    std::string title;
    std::string username;  // public supergroups: sendMessage takes "@username"
    std::set<std::int64_t> members;
    std::int64_t next_message_id = 1;
    std::map<std::int64_t, StoredMessage> messages;

    bool is_group() const { return type == "group" || type == "supergroup"; }
};

struct Update {
    std::int64_t id = 0;
    std::int64_t arrival_ms = 0;  // on the sandbox clock: what the 24 h retention counts from
    json body;
};

/// One getUpdates waiting for its answer. Only one exists: a newer request ends an older one with 409.
struct Poll {
    std::uint64_t id = 0;
    Respond respond;
    std::size_t limit = 100;
    std::int64_t timeout_s = 0;
    bool waiting = false;  // past the slow-poll delay, waiting for an update or its timeout
    TimerPtr timer;
};

struct Storm {
    std::int64_t count = 0;
    std::int64_t retry_after = 1;
    std::set<std::string> methods;  // lower-case; empty: every method
};

struct Faults {
    std::int64_t drop = 0;
    std::int64_t server_error = 0;
    std::int64_t conflict = 0;
    std::int64_t slow_poll_ms = 0;
    Storm storm;
};

struct Stats {
    std::map<std::string, std::int64_t> requests;
    std::int64_t requests_total = 0;
    std::int64_t responses_429 = 0;
    std::int64_t conflicts = 0;
    std::int64_t dropped = 0;
    std::int64_t server_errors = 0;
    std::int64_t expired_updates = 0;
    std::int64_t polls_abandoned = 0;  // the client closed its connection during a long poll
    std::deque<json> request_log;
};

/// The canonical spelling of every method served (the Bot API matches names case-insensitively).
const std::map<std::string, std::string>& known_methods() {
    static const std::map<std::string, std::string> methods = [] {
        std::map<std::string, std::string> out;
        for (const char* name : {"getMe", "getUpdates", "sendMessage", "deleteMessage", "getChat", "deleteWebhook",
                                 "getWebhookInfo", "setMyCommands", "getMyCommands", "deleteMyCommands"})
            out[lower(name)] = name;
        return out;
    }();
    return methods;
}

// --- the service --------------------------------------------------------------------------------------------------

class TelegramSandbox : public Service {
public:
    TelegramSandbox(Loop& loop, Options options) : loop_(loop), options_(std::move(options)) {
        next_update_id_ = options_.first_update_id;
        const auto colon = options_.token.find(':');
        bot_.id = parse_integer(options_.token.substr(0, colon)).value_or(1000);
        bot_.first_name = "Switchboard";
        bot_.username = "switchboard_bot";
        bot_.is_bot = true;
        make_default_world();
    }

    void handle(const HttpRequest& request, Respond respond) override {
        if (options_.verbose) std::cerr << "sandbox: " << request.method << " " << request.target << "\n";
        const std::string& path = request.path;
        if (path == "/_sandbox" || path.rfind("/_sandbox/", 0) == 0) return respond(control(request));
        if (path.rfind("/bot", 0) == 0) return bot_api(request, std::move(respond));
        if (path == "/" || path.empty())
            return respond(HttpResponse::json(200, {{"service", "switchboard-sandbox telegram"},
                                                    {"bot_api", "/bot<token>/<method>"},
                                                    {"control", "/_sandbox/"}}));
        respond(fail(404, "Not Found"));
    }

    std::shared_ptr<WebSocketHandler> open(const HttpRequest&, std::shared_ptr<WebSocket>) override {
        return nullptr;  // the Bot API has no WebSocket
    }

private:
    // --- clock ----------------------------------------------------------------------------------------------------

    std::int64_t now_ms() const { return unix_ms() + clock_offset_ms_; }
    std::int64_t now_s() const { return now_ms() / 1000; }

    // --- the world ------------------------------------------------------------------------------------------------

    void make_default_world() {
        add_user({2001, "Alice", "alice", false});
        add_user({2002, "Bob", "bob", false});
        add_group(-100, "group", "Sandbox group", "");
        add_group(-1001000000001, "supergroup", "Sandbox supergroup", "sandbox_supergroup");
    }

    void add_user(const User& user) {
        users_[user.id] = user;
        Chat chat;
        chat.id = user.id;
        chat.type = "private";
        chat.members = {user.id};
        chats_[chat.id] = chat;
        for (auto& [id, group] : chats_)
            if (group.is_group()) group.members.insert(user.id);
    }

    void add_group(std::int64_t id, const std::string& type, const std::string& title, const std::string& username,
                   std::optional<std::set<std::int64_t>> members = std::nullopt) {
        Chat chat;
        chat.id = id;
        chat.type = type;
        chat.title = title;
        chat.username = username;
        if (members) {
            chat.members = *members;
        } else {
            for (const auto& [user_id, user] : users_) chat.members.insert(user_id);
        }
        chats_[id] = chat;
    }

    json user_json(const User& user) const {
        json out = {{"id", user.id}, {"is_bot", user.is_bot}, {"first_name", user.first_name}};
        if (!user.username.empty()) out["username"] = user.username;
        return out;
    }

    json user_json(std::int64_t id) const {
        if (id == bot_.id) return user_json(bot_);
        auto found = users_.find(id);
        return found == users_.end() ? json{{"id", id}, {"is_bot", false}, {"first_name", "Unknown"}}
                                     : user_json(found->second);
    }

    json chat_json(const Chat& chat) const {
        json out = {{"id", chat.id}, {"type", chat.type}};
        if (chat.type == "private") {
            const auto& user = users_.at(chat.id);
            out["first_name"] = user.first_name;
            if (!user.username.empty()) out["username"] = user.username;
        } else {
            out["title"] = chat.title;
            if (!chat.username.empty()) out["username"] = chat.username;
            if (chat.type == "group") out["all_members_are_administrators"] = true;
        }
        return out;
    }

    /// Telegram marks `/command` and `/command@bot` as bot_command entities; telegraf's command() relies on them.
    static json entities_of(const std::string& text) {
        json out = json::array();
        std::size_t units = 0;  // UTF-16 offset of position i
        for (std::size_t i = 0; i < text.size();) {
            const bool word_start = i == 0 || std::isspace(static_cast<unsigned char>(text[i - 1]));
            if (word_start && text[i] == '/') {
                std::size_t end = i + 1;
                while (end < text.size() &&
                       (std::isalnum(static_cast<unsigned char>(text[end])) || text[end] == '_' || text[end] == '@'))
                    ++end;
                if (end > i + 1) {
                    const std::size_t length = end - i;  // ASCII only
                    out.push_back({{"offset", units}, {"length", length}, {"type", "bot_command"}});
                    units += length;
                    i = end;
                    continue;
                }
            }
            units += utf16_length(std::string_view(text).substr(i, 1));
            ++i;
        }
        return out;
    }

    json message_json(const Chat& chat, const StoredMessage& message, bool with_reply = true) const {
        json out = {{"message_id", message.message_id},
                    {"from", user_json(message.from)},
                    {"chat", chat_json(chat)},
                    {"date", message.date},
                    {"text", message.text}};
        if (json entities = entities_of(message.text); !entities.empty()) out["entities"] = entities;
        if (with_reply && message.reply_to)
            if (auto it = chat.messages.find(*message.reply_to); it != chat.messages.end())
                out["reply_to_message"] = message_json(chat, it->second, false);  // never nested deeper, as Telegram
        return out;
    }

    Chat* find_chat(const Params& params) {
        const auto text = params.string("chat_id");
        if (!text || text->empty()) return nullptr;
        if ((*text)[0] == '@') {
            for (auto& [id, chat] : chats_)
                if (chat.type == "supergroup" && !chat.username.empty() && lower("@" + chat.username) == lower(*text))
                    return &chat;
            return nullptr;
        }
        const auto id = params.integer("chat_id");
        if (!id) return nullptr;
        auto found = chats_.find(*id);
        return found == chats_.end() ? nullptr : &found->second;
    }

    // --- the Bot API ----------------------------------------------------------------------------------------------

    void bot_api(const HttpRequest& request, Respond respond) {
        const std::string rest = request.path.substr(4);
        const auto slash = rest.find('/');
        const std::string token = rest.substr(0, slash);
        const std::string asked = slash == std::string::npos ? "" : rest.substr(slash + 1);
        const auto known = known_methods().find(lower(asked));
        const std::string method = known == known_methods().end() ? asked : known->second;
        ++stats_.requests_total;
        ++stats_.requests[method.empty() ? "(none)" : method];

        auto entry = std::make_shared<json>(json{{"method", method}, {"time_ms", unix_ms()}});
        Respond answer = [this, entry, respond = std::move(respond)](HttpResponse response) {
            (*entry)["status"] = response.status;
            if (response.status == 429) {
                ++stats_.responses_429;
                const json body = json::parse(response.body, nullptr, false);
                if (!body.is_discarded() && body.contains("parameters"))
                    (*entry)["retry_after"] = body["parameters"].value("retry_after", json());
            }
            log_request(std::move(*entry));
            respond(std::move(response));
        };

        // Faults hit every Bot API request alike, before the server looks at it.
        if (faults_.drop > 0) {
            --faults_.drop;
            ++stats_.dropped;
            return answer(HttpResponse::dropped());
        }
        if (faults_.server_error > 0) {
            --faults_.server_error;
            ++stats_.server_errors;
            return answer(fail(502, "Bad Gateway"));
        }
        if (faults_.storm.count > 0 && (faults_.storm.methods.empty() || faults_.storm.methods.count(lower(method)))) {
            --faults_.storm.count;
            return answer(too_many(faults_.storm.retry_after));
        }

        if (token != options_.token) return answer(fail(401, "Unauthorized"));
        if (known == known_methods().end()) return answer(fail(404, "Not Found"));
        auto params = Params::read(request);
        if (!params) return answer(fail(400, "Bad Request: can't parse request body"));

        if (method == "getUpdates") return get_updates(request, *params, std::move(answer));
        if (method == "sendMessage") {
            if (auto chat_id = params->integer("chat_id")) (*entry)["chat_id"] = *chat_id;
            return answer(send_message(*params));
        }
        answer(call(method, *params));
    }

    void log_request(json entry) {
        stats_.request_log.push_back(std::move(entry));
        while (stats_.request_log.size() > options_.request_log_max) stats_.request_log.pop_front();
    }

    HttpResponse call(const std::string& method, const Params& params) {
        if (method == "getMe") {
            json me = user_json(bot_);
            me["can_join_groups"] = true;
            me["can_read_all_group_messages"] = false;
            me["supports_inline_queries"] = false;
            me["can_connect_to_business"] = false;
            me["has_main_web_app"] = false;
            return ok(me);
        }
        if (method == "getChat") {
            const Chat* chat = find_chat(params);
            if (!chat) return fail(400, "Bad Request: chat not found");
            json out = chat_json(*chat);
            out["accent_color_id"] = 0;
            out["max_reaction_count"] = 11;
            return ok(out);
        }
        if (method == "deleteMessage") return delete_message(params);
        if (method == "deleteWebhook") {
            if (params.flag("drop_pending_updates")) updates_.clear();
            return ok(true);
        }
        if (method == "getWebhookInfo") {
            expire_updates();
            return ok({{"url", ""}, {"has_custom_certificate", false}, {"pending_update_count", updates_.size()}});
        }
        if (method == "getMyCommands") return ok(json::array());
        return ok(true);  // setMyCommands, deleteMyCommands
    }

    HttpResponse send_message(const Params& params) {
        if (!params.has("chat_id") || params.string("chat_id")->empty())
            return fail(400, "Bad Request: chat_id is empty");
        Chat* chat = find_chat(params);
        if (!chat) return fail(400, "Bad Request: chat not found");
        const std::string text = params.string("text").value_or("");
        if (std::all_of(text.begin(), text.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); }))
            return fail(400, "Bad Request: message text is empty");
        if (utf16_length(text) > kMaxTextUnits) return fail(400, "Bad Request: message is too long");

        std::optional<std::int64_t> reply_to;
        bool reply_optional = params.flag("allow_sending_without_reply");
        if (auto reply = params.structured("reply_parameters")) {
            if (!reply->is_object() || !reply->contains("message_id"))
                return fail(400, "Bad Request: invalid reply parameters specified");
            reply_to = as_integer((*reply)["message_id"]);
            reply_optional = reply->value("allow_sending_without_reply", reply_optional);
        } else if (params.has("reply_to_message_id")) {
            reply_to = params.integer("reply_to_message_id");
        }
        if (reply_to) {
            auto target = chat->messages.find(*reply_to);
            if (target == chat->messages.end() || target->second.deleted) {
                if (!reply_optional) return fail(400, "Bad Request: message to be replied not found");
                reply_to.reset();
            }
        }
        if (chat->type == "private" && blocked_.count(chat->id))
            return fail(403, "Forbidden: bot was blocked by the user");
        if (auto wait = take_send_slot(*chat)) return too_many(*wait);

        StoredMessage message;
        message.message_id = chat->next_message_id++;
        message.from = bot_.id;
        message.date = now_s();
        message.text = text;
        message.reply_to = reply_to;
        chat->messages[message.message_id] = message;
        sent_.emplace_back(chat->id, message.message_id);
        return ok(message_json(*chat, message));
    }

    HttpResponse delete_message(const Params& params) {
        Chat* chat = find_chat(params);
        if (!chat) return fail(400, "Bad Request: chat not found");
        const auto id = params.integer("message_id");
        if (!id) return fail(400, "Bad Request: message identifier is not specified");
        auto found = chat->messages.find(*id);
        if (found == chat->messages.end() || found->second.deleted)
            return fail(400, "Bad Request: message to delete not found");
        found->second.deleted = true;
        return ok(true);
    }

    /// Telegram's send limits: per chat (a token bucket), per group per minute, and over all chats per second.
    /// Returns the seconds to wait when a limit is reached; otherwise takes the slot.
    std::optional<std::int64_t> take_send_slot(const Chat& chat) {
        const auto now = Steady::now();
        while (!global_sends_.empty() && now - global_sends_.front() >= std::chrono::seconds(1))
            global_sends_.pop_front();
        if (limits_.global_rate > 0 && static_cast<int>(global_sends_.size()) >= limits_.global_rate)
            return retry_seconds(global_sends_.front() + std::chrono::seconds(1) - now);

        std::deque<Steady::time_point>* group = nullptr;
        if (chat.is_group() && limits_.group_per_minute > 0) {
            group = &group_sends_[chat.id];
            while (!group->empty() && now - group->front() >= std::chrono::minutes(1)) group->pop_front();
            if (static_cast<int>(group->size()) >= limits_.group_per_minute)
                return retry_seconds(group->front() + std::chrono::minutes(1) - now);
        }

        ChatBucket* bucket = nullptr;
        if (limits_.chat_rate > 0) {
            const double capacity = std::max(1, limits_.chat_burst);
            auto [it, fresh] = chat_buckets_.try_emplace(chat.id, ChatBucket{capacity, now});
            bucket = &it->second;
            const double elapsed = std::chrono::duration<double>(now - bucket->refilled).count();
            bucket->tokens = std::min(capacity, bucket->tokens + elapsed * limits_.chat_rate);
            bucket->refilled = now;
            if (bucket->tokens < 1)
                return retry_seconds(std::chrono::duration_cast<Steady::duration>(
                    std::chrono::duration<double>((1 - bucket->tokens) / limits_.chat_rate)));
        }

        global_sends_.push_back(now);
        if (group) group->push_back(now);
        if (bucket) bucket->tokens -= 1;
        return std::nullopt;
    }

    // --- getUpdates -----------------------------------------------------------------------------------------------

    void get_updates(const HttpRequest& request, const Params& params, Respond answer) {
        if (faults_.conflict > 0) {
            --faults_.conflict;
            ++stats_.conflicts;
            return answer(fail(409, kConflict));
        }
        if (poll_) {  // the newer request wins; the one waiting learns it was terminated
            ++stats_.conflicts;
            finish_poll(fail(409, kConflict));
        }

        expire_updates();
        if (const auto offset = params.integer("offset"); offset && *offset != 0) confirm(*offset);
        if (params.has("allowed_updates")) {
            const auto allowed = params.structured("allowed_updates");
            if (!allowed || !allowed->is_array()) return answer(fail(400, "Bad Request: can't parse allowed updates"));
            if (allowed->empty()) {
                allowed_updates_.reset();
            } else {
                allowed_updates_.emplace();
                for (const auto& type : *allowed)
                    if (type.is_string()) allowed_updates_->insert(type.get<std::string>());
            }
        }

        Poll poll;
        poll.id = ++poll_counter_;
        poll.respond = std::move(answer);
        poll.limit = static_cast<std::size_t>(std::clamp<std::int64_t>(params.integer("limit").value_or(100), 1, 100));
        poll.timeout_s =
            std::clamp<std::int64_t>(params.integer("timeout").value_or(0), 0, options_.max_poll_timeout_s);
        poll_ = std::move(poll);
        const std::uint64_t id = poll_->id;
        if (request.on_client_gone)
            request.on_client_gone([this, id] {
                if (!poll_ || poll_->id != id) return;
                ++stats_.polls_abandoned;
                if (poll_->timer) poll_->timer->cancel();
                poll_.reset();
            });
        if (faults_.slow_poll_ms > 0) {
            poll_->timer = loop_.after(Ms(faults_.slow_poll_ms), [this, id] {
                if (poll_ && poll_->id == id) start_waiting();
            });
            return;
        }
        start_waiting();
    }

    void start_waiting() {
        if (!updates_.empty() || poll_->timeout_s == 0) return answer_poll();
        poll_->waiting = true;
        const std::uint64_t id = poll_->id;
        poll_->timer = loop_.after(std::chrono::seconds(poll_->timeout_s), [this, id] {
            if (poll_ && poll_->id == id) answer_poll();
        });
    }

    /// Answers the waiting poll with the earliest unconfirmed updates (none when its timeout ran out).
    void answer_poll() {
        expire_updates();
        json result = json::array();
        for (const auto& update : updates_) {
            if (result.size() >= poll_->limit) break;
            json body = update.body;
            body["update_id"] = update.id;
            result.push_back(std::move(body));
        }
        finish_poll(ok(result));
    }

    void finish_poll(HttpResponse response) {
        Poll poll = std::move(*poll_);
        poll_.reset();
        if (poll.timer) poll.timer->cancel();
        poll.respond(std::move(response));
    }

    /// An offset confirms every update below it; a negative one keeps only the last -offset updates.
    void confirm(std::int64_t offset) {
        if (offset > 0) {
            while (!updates_.empty() && updates_.front().id < offset) updates_.pop_front();
            confirmed_offset_ = std::max(confirmed_offset_, offset);
            return;
        }
        const auto keep = static_cast<std::size_t>(-offset);
        while (updates_.size() > keep) updates_.pop_front();
        if (!updates_.empty()) confirmed_offset_ = std::max(confirmed_offset_, updates_.front().id);
    }

    /// Updates that waited longer than the retention (24 h on the sandbox clock) are gone, confirmed or not.
    void expire_updates() {
        const std::int64_t oldest = now_ms() - options_.retention_ms;
        const auto before = updates_.size();
        updates_.erase(std::remove_if(updates_.begin(), updates_.end(),
                                      [&](const Update& update) { return update.arrival_ms < oldest; }),
                       updates_.end());
        stats_.expired_updates += static_cast<std::int64_t>(before - updates_.size());
    }

    /// A new update wakes a waiting long poll at once.
    std::optional<std::int64_t> queue_update(json body, std::int64_t arrival_ms) {
        if (allowed_updates_ && !allowed_updates_->count("message")) return std::nullopt;
        Update update;
        update.id = next_update_id_++;
        update.arrival_ms = arrival_ms;
        update.body = std::move(body);
        updates_.push_back(std::move(update));
        return updates_.back().id;
    }

    void wake_poll() {
        if (poll_ && poll_->waiting && !updates_.empty()) answer_poll();
    }

    // --- control API ----------------------------------------------------------------------------------------------

    HttpResponse control(const HttpRequest& request) {
        std::string path = request.path.substr(std::string("/_sandbox").size());
        while (path.size() > 1 && path.back() == '/') path.pop_back();
        if (path.empty()) path = "/";
        json body = json::object();
        if (!request.body.empty()) {
            body = json::parse(request.body, nullptr, false);
            if (body.is_discarded() || !body.is_object()) return control_error(400, "the body must be a JSON object");
        }
        const bool get = request.method == "GET";
        const bool post = request.method == "POST";
        try {
            if (get && path == "/") return HttpResponse::json(200, control_index());
            if (get && path == "/world") return HttpResponse::json(200, world_json());
            if (post && path == "/users") return control_add_user(body);
            if (post && path == "/chats") return control_add_chat(body);
            if (post && path == "/messages") return control_post(body);
            if (get && path == "/messages") return control_history(request);
            if (get && path == "/sent") return control_sent(request);
            if (get && path == "/updates") return HttpResponse::json(200, updates_json());
            if (get && path == "/stats") return HttpResponse::json(200, stats_json(request.query_param("log") != "0"));
            if (post && path == "/stats/reset") {
                stats_ = Stats{};
                return HttpResponse::json(200, {{"ok", true}});
            }
            if (post && (path == "/block" || path == "/unblock")) return control_block(path == "/block", body);
            if (get && path == "/clock") return HttpResponse::json(200, clock_json());
            if (post && path == "/clock") return control_clock(body);
            if (get && path == "/faults") return HttpResponse::json(200, faults_json());
            if (post && path == "/faults") return control_faults(body);
            if (post && path == "/faults/clear") {
                faults_ = Faults{};
                return HttpResponse::json(200, faults_json());
            }
            if (get && path == "/config") return HttpResponse::json(200, config_json());
            if (post && path == "/config") return control_config(body);
        } catch (const json::exception& error) {
            return control_error(400, std::string("bad field type: ") + error.what());
        }
        return control_error(
            404, "no control endpoint " + request.method + " " + request.path + " (GET /_sandbox/ lists them)");
    }

    static json control_index() {
        return {
            {"endpoints",
             json::array({"GET /_sandbox/world", "POST /_sandbox/users", "POST /_sandbox/chats",
                          "POST /_sandbox/messages", "GET /_sandbox/messages?chat_id=", "GET /_sandbox/sent[?chat_id=]",
                          "GET /_sandbox/updates", "GET /_sandbox/stats[?log=0]", "POST /_sandbox/stats/reset",
                          "POST /_sandbox/block", "POST /_sandbox/unblock", "GET|POST /_sandbox/clock",
                          "GET|POST /_sandbox/faults", "POST /_sandbox/faults/clear", "GET|POST /_sandbox/config"})},
            {"docs", "tools/sandbox/README.md"}};
    }

    json world_json() const {
        json users = json::array();
        for (const auto& [id, user] : users_) users.push_back(user_json(user));
        json chats = json::array();
        for (const auto& [id, chat] : chats_) {
            json entry = chat_json(chat);
            entry["members"] = chat.members;
            entry["message_count"] = chat.messages.size();
            chats.push_back(entry);
        }
        return {{"bot", user_json(bot_)},
                {"token", options_.token},
                {"users", users},
                {"chats", chats},
                {"blocked", blocked_}};
    }

    HttpResponse control_add_user(const json& body) {
        const auto id = as_integer(body.value("id", json()));
        if (!id || *id <= 0) return control_error(400, "id must be a positive integer");
        if (users_.count(*id) || chats_.count(*id) || *id == bot_.id) return control_error(409, "user exists");
        User user{*id, body.value("first_name", "User " + std::to_string(*id)), body.value("username", ""),
                  body.value("is_bot", false)};
        add_user(user);
        return HttpResponse::json(200, user_json(user));
    }

    HttpResponse control_add_chat(const json& body) {
        const auto id = as_integer(body.value("id", json()));
        if (!id || *id >= 0) return control_error(400, "a group's id must be a negative integer");
        if (chats_.count(*id)) return control_error(409, "chat exists");
        const std::string type = body.value("type", "group");
        if (type != "group" && type != "supergroup") return control_error(400, "type must be group or supergroup");
        std::optional<std::set<std::int64_t>> members;
        if (body.contains("members")) {
            members.emplace();
            for (const auto& member : body["members"]) {
                const auto user = as_integer(member);
                if (!user || !users_.count(*user)) return control_error(404, "no user " + member.dump());
                members->insert(*user);
            }
        }
        add_group(*id, type, body.value("title", "Group " + std::to_string(*id)), body.value("username", ""), members);
        return HttpResponse::json(200, chat_json(chats_.at(*id)));
    }

    /// Users speak: each message becomes an update (and wakes a waiting long poll), dated on the sandbox clock.
    HttpResponse control_post(const json& body) {
        const auto chat_id = as_integer(body.value("chat_id", json()));
        auto chat_it = chat_id ? chats_.find(*chat_id) : chats_.end();
        if (chat_it == chats_.end()) return control_error(404, "no chat " + body.value("chat_id", json()).dump());
        Chat& chat = chat_it->second;
        const auto from = as_integer(body.value("from", json(chat.type == "private" ? chat.id : 2001)));
        if (!from || !users_.count(*from)) return control_error(404, "no user " + body.value("from", json()).dump());
        if (!chat.members.count(*from))
            return control_error(400, "user " + std::to_string(*from) + " is not in chat " + std::to_string(chat.id));
        const std::int64_t age_ms = body.value("age_ms", std::int64_t{0});
        if (age_ms < 0) return control_error(400, "age_ms must not be negative");
        std::optional<std::int64_t> reply_to;
        if (body.contains("reply_to_message_id")) {
            reply_to = as_integer(body["reply_to_message_id"]);
            if (!reply_to || !chat.messages.count(*reply_to)) return control_error(404, "no message to reply to");
        }
        const std::int64_t at_ms = now_ms() - age_ms;
        auto post_one = [&](const std::string& text) {
            StoredMessage message;
            message.message_id = chat.next_message_id++;
            message.from = *from;
            message.date = at_ms / 1000;
            message.text = text;
            message.reply_to = reply_to;
            chat.messages[message.message_id] = message;
            const auto update = queue_update({{"message", message_json(chat, message)}}, at_ms);
            return std::make_pair(update ? json(*update) : json(nullptr), message.message_id);
        };

        expire_updates();
        if (!body.contains("count")) {
            const auto [update_id, message_id] = post_one(body.value("text", ""));
            expire_updates();  // a message backdated past the retention is gone at once
            wake_poll();
            return HttpResponse::json(200, {{"update_id", update_id}, {"message_id", message_id}});
        }
        const std::int64_t count = body["count"].get<std::int64_t>();
        if (count < 1 || count > kBulkMax) return control_error(400, "count must be 1 to " + std::to_string(kBulkMax));
        const std::string prefix = body.value("text_prefix", "m");
        json update_ids = json::array();
        json message_ids = json::array();
        for (std::int64_t i = 0; i < count; ++i) {
            const auto [update_id, message_id] = post_one(prefix + std::to_string(i));
            update_ids.push_back(update_id);
            message_ids.push_back(message_id);
        }
        expire_updates();
        wake_poll();
        return HttpResponse::json(200, {{"update_ids", update_ids}, {"message_ids", message_ids}});
    }

    HttpResponse control_history(const HttpRequest& request) const {
        const auto id = parse_integer(request.query_param("chat_id").value_or(""));
        auto found = id ? chats_.find(*id) : chats_.end();
        if (found == chats_.end()) return control_error(404, "no chat " + request.query_param("chat_id").value_or(""));
        json out = json::array();
        for (const auto& [message_id, message] : found->second.messages) {
            json entry = message_json(found->second, message);
            entry["deleted"] = message.deleted;
            out.push_back(entry);
        }
        return HttpResponse::json(200, out);
    }

    HttpResponse control_sent(const HttpRequest& request) const {
        std::optional<std::int64_t> only;
        if (auto text = request.query_param("chat_id")) {
            only = parse_integer(*text);
            if (!only) return control_error(400, "chat_id must be an integer");
        }
        json out = json::array();
        for (const auto& [chat_id, message_id] : sent_) {
            if (only && chat_id != *only) continue;
            const auto& message = chats_.at(chat_id).messages.at(message_id);
            json entry = {{"chat_id", chat_id},
                          {"message_id", message_id},
                          {"text", message.text},
                          {"date", message.date},
                          {"deleted", message.deleted}};
            if (message.reply_to) entry["reply_to_message_id"] = *message.reply_to;
            out.push_back(entry);
        }
        return HttpResponse::json(200, out);
    }

    json updates_json() {
        expire_updates();
        json pending = json::array();
        for (const auto& update : updates_) pending.push_back(update.id);
        return {{"pending", pending},
                {"confirmed_offset", confirmed_offset_},
                {"next_update_id", next_update_id_},
                {"expired", stats_.expired_updates}};
    }

    json stats_json(bool with_log) const {
        json out = {{"requests", stats_.requests},
                    {"requests_total", stats_.requests_total},
                    {"responses_429", stats_.responses_429},
                    {"conflicts", stats_.conflicts},
                    {"dropped", stats_.dropped},
                    {"server_errors", stats_.server_errors},
                    {"expired_updates", stats_.expired_updates},
                    {"polls_active", poll_ ? 1 : 0},
                    {"polls_abandoned", stats_.polls_abandoned}};
        if (with_log) out["request_log"] = json(stats_.request_log);
        return out;
    }

    HttpResponse control_block(bool block, const json& body) {
        const auto user = as_integer(body.value("user_id", json()));
        if (!user || !users_.count(*user)) return control_error(404, "no user " + body.value("user_id", json()).dump());
        if (block)
            blocked_.insert(*user);
        else
            blocked_.erase(*user);
        return HttpResponse::json(200, {{"blocked", blocked_}});
    }

    json clock_json() const { return {{"now_ms", now_ms()}, {"offset_ms", clock_offset_ms_}}; }

    HttpResponse control_clock(const json& body) {
        const std::int64_t advance = body.value("advance_ms", std::int64_t{0});
        if (advance < 0) return control_error(400, "advance_ms must not be negative: the clock only moves forward");
        clock_offset_ms_ += advance;
        expire_updates();
        return HttpResponse::json(200, clock_json());
    }

    json faults_json() const {
        return {{"drop", faults_.drop},
                {"server_error", faults_.server_error},
                {"conflict", faults_.conflict},
                {"slow_poll_ms", faults_.slow_poll_ms},
                {"storm",
                 {{"count", faults_.storm.count},
                  {"retry_after", faults_.storm.retry_after},
                  {"methods", faults_.storm.methods}}}};
    }

    HttpResponse control_faults(const json& body) {
        const auto counter = [&](const char* name, std::int64_t& target) -> bool {
            if (!body.contains(name)) return true;
            const auto value = as_integer(body[name]);
            if (!value || *value < 0) return false;
            target = *value;
            return true;
        };
        Faults next = faults_;
        if (!counter("drop", next.drop) || !counter("server_error", next.server_error) ||
            !counter("conflict", next.conflict) || !counter("slow_poll_ms", next.slow_poll_ms))
            return control_error(400, "drop, server_error, conflict and slow_poll_ms are counts >= 0");
        if (body.contains("storm")) {
            const json& storm = body["storm"];
            if (!storm.is_object()) return control_error(400, "storm is {count, retry_after, methods}");
            Storm parsed;
            parsed.count = storm.value("count", std::int64_t{0});
            parsed.retry_after = storm.value("retry_after", std::int64_t{1});
            if (parsed.count < 0 || parsed.retry_after < 1)
                return control_error(400, "storm.count must be >= 0 and storm.retry_after >= 1");
            for (const auto& method : storm.value("methods", json::array())) parsed.methods.insert(lower(method));
            next.storm = parsed;
        }
        if (body.contains("drop_poll") && !body["drop_poll"].is_boolean())
            return control_error(400, "drop_poll is true or false");
        faults_ = next;
        json out = faults_json();
        if (body.value("drop_poll", false)) {  // the network fails under the long poll waiting now
            out["dropped_poll"] = poll_.has_value();
            if (poll_) {
                ++stats_.dropped;
                finish_poll(HttpResponse::dropped());
            }
        }
        return HttpResponse::json(200, out);
    }

    json config_json() const {
        return {{"chat_rate", limits_.chat_rate},
                {"chat_burst", limits_.chat_burst},
                {"group_per_minute", limits_.group_per_minute},
                {"global_rate", limits_.global_rate},
                {"retention_ms", options_.retention_ms},
                {"max_poll_timeout_s", options_.max_poll_timeout_s}};
    }

    HttpResponse control_config(const json& body) {
        Limits next = limits_;
        next.chat_rate = body.value("chat_rate", next.chat_rate);
        next.chat_burst = body.value("chat_burst", next.chat_burst);
        next.group_per_minute = body.value("group_per_minute", next.group_per_minute);
        next.global_rate = body.value("global_rate", next.global_rate);
        if (next.chat_rate < 0 || next.chat_burst < 1 || next.group_per_minute < 0 || next.global_rate < 0)
            return control_error(400, "limits must be >= 0 (0: off), chat_burst >= 1");
        limits_ = next;
        chat_buckets_.clear();
        return HttpResponse::json(200, config_json());
    }

    struct Limits {
        double chat_rate;
        int chat_burst;
        int group_per_minute;
        int global_rate;
    };
    struct ChatBucket {
        double tokens;
        Steady::time_point refilled;
    };

    Loop& loop_;
    Options options_;
    Limits limits_{options_.chat_rate, options_.chat_burst, options_.group_per_minute, options_.global_rate};
    User bot_;
    std::map<std::int64_t, User> users_;
    std::map<std::int64_t, Chat> chats_;
    std::set<std::int64_t> blocked_;
    std::vector<std::pair<std::int64_t, std::int64_t>> sent_;  // (chat, message) in send order
    std::deque<Update> updates_;                               // unconfirmed, in update_id order
    std::int64_t next_update_id_ = 1;
    std::int64_t confirmed_offset_ = 0;
    std::optional<std::set<std::string>> allowed_updates_;  // empty: the default set (message included)
    std::optional<Poll> poll_;
    std::uint64_t poll_counter_ = 0;
    std::int64_t clock_offset_ms_ = 0;
    Faults faults_;
    Stats stats_;
    std::map<std::int64_t, ChatBucket> chat_buckets_;
    std::map<std::int64_t, std::deque<Steady::time_point>> group_sends_;
    std::deque<Steady::time_point> global_sends_;
};

}  // namespace

std::unique_ptr<Service> make_service(Loop& loop, Options options) {
    return std::make_unique<TelegramSandbox>(loop, std::move(options));
}

}  // namespace switchboard::sandbox::telegram
