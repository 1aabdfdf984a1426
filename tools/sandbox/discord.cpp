// A protocol-faithful local Discord: REST v10 under /api/v10, Gateway v10 on WebSocket at /, and the /_sandbox/
// control API that tests use to play the other users, inject faults and read what the bot did. All state lives on
// the server's single thread. tools/sandbox/README.md documents the behaviour; PROTOCOLS.md §1–2 is the source.

#include "discord.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <deque>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <unordered_map>

namespace switchboard::sandbox::discord {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Ms = std::chrono::milliseconds;

constexpr std::int64_t kDiscordEpoch = 1420070400000;
constexpr std::int64_t kIntentGuilds = 1 << 0;
constexpr std::int64_t kIntentGuildMessages = 1 << 9;
constexpr std::int64_t kIntentDirectMessages = 1 << 12;
constexpr std::int64_t kIntentMessageContent = 1 << 15;
constexpr std::int64_t kAllIntents = (1 << 26) - 1;
constexpr std::size_t kMaxPayload = 4096;
constexpr std::int64_t kIdentifyWindowMs = 24 * 3600 * 1000;

// --- small helpers ------------------------------------------------------------------------------------------------

/// Serialises without ever throwing: bytes that are not UTF-8 (a test may send any) become U+FFFD.
std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string iso8601(std::int64_t ms) {
    const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&seconds, &tm);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    char out[64];
    std::snprintf(out, sizeof out, "%s.%03d000+00:00", date, static_cast<int>(ms % 1000));
    return out;
}

std::string decimal3(double value) {
    char out[32];
    std::snprintf(out, sizeof out, "%.3f", value);
    return out;
}

double seconds_between(TimePoint from, TimePoint to) {
    return std::max(0.0, std::chrono::duration<double>(to - from).count());
}

std::optional<std::uint64_t> parse_snowflake(const std::string& text) {
    if (text.empty() || text.size() > 20) return std::nullopt;
    for (char c : text)
        if (c < '0' || c > '9') return std::nullopt;
    try {
        return std::stoull(text);
    } catch (...) {
        return std::nullopt;
    }
}

std::optional<long long> parse_integer(const std::string& text) {
    if (text.empty() || text.size() > 18) return std::nullopt;
    std::size_t start = text[0] == '-' ? 1 : 0;
    if (start == text.size()) return std::nullopt;
    for (std::size_t i = start; i < text.size(); ++i)
        if (text[i] < '0' || text[i] > '9') return std::nullopt;
    return std::stoll(text);
}

std::string hex_hash(std::string_view text) {
    std::uint64_t hash = 1469598103934665603ull;
    for (unsigned char c : text) hash = (hash ^ c) * 1099511628211ull;
    char out[17];
    std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(hash));
    return out;
}

std::size_t utf8_length(std::string_view text) {
    return static_cast<std::size_t>(
        std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

/// A JSON field as a string: strings as they are, numbers written out (ids may come either way from tests).
std::string string_field(const json& object, const char* name, std::string fallback = {}) {
    if (!object.is_object() || !object.contains(name)) return fallback;
    const auto& value = object[name];
    if (value.is_string()) return value.get<std::string>();
    if (value.is_number_integer()) return std::to_string(value.get<long long>());
    if (value.is_number_unsigned()) return std::to_string(value.get<unsigned long long>());
    return fallback;
}

HttpResponse api_error(int status, const std::string& message, int code) {
    return HttpResponse::json(status, {{"message", message}, {"code", code}});
}

HttpResponse form_error(const std::string& field, const std::string& code, const std::string& message) {
    return HttpResponse::json(
        400, {{"message", "Invalid Form Body"},
              {"code", 50035},
              {"errors", {{field, {{"_errors", json::array({{{"code", code}, {"message", message}}})}}}}}});
}

HttpResponse control_error(int status, const std::string& message) {
    return HttpResponse::json(status, {{"error", message}});
}

// --- the world ----------------------------------------------------------------------------------------------------

struct User {
    std::string id;
    std::string username;
    std::string global_name;
    bool bot = false;
};

struct Guild {
    std::string id;
    std::string name;
    std::int64_t joined_ms = 0;
    std::vector<std::string> channel_ids;
};

struct Channel {
    std::string id;
    int type = 0;  // 0 guild text, 1 DM
    std::string guild_id;
    std::string name;
    std::string topic;
    int position = 0;
    std::string recipient_id;                // DMs
    std::map<std::uint64_t, json> messages;  // by id, so always in platform order
};

/// Discord snowflakes: ms since 2015 in the top 42 bits. Live ids come from the clock and only grow; ids for
/// messages posted with an explicit past time use worker 1 so they never collide with live ones.
class Snowflakes {
public:
    std::uint64_t next() {
        std::int64_t ms = unix_ms();
        if (ms <= last_ms_) {
            ms = last_ms_;
            if (++increment_ >= 4096) {
                ++ms;
                increment_ = 0;
            }
        } else {
            increment_ = 0;
        }
        last_ms_ = ms;
        return make(ms, 0, increment_);
    }

    /// An id for a message created at @p ms in the past (or now).
    std::uint64_t at(std::int64_t ms) {
        if (ms >= unix_ms() - 1) return next();
        ms = std::max(ms, kDiscordEpoch);
        while (past_[ms] >= 4096 * 31) ++ms;
        int& used = past_[ms];
        const int worker = 1 + used / 4096;
        const int increment = used % 4096;
        ++used;
        return make(ms, worker, increment);
    }

    static std::int64_t time_of(std::uint64_t id) { return static_cast<std::int64_t>(id >> 22) + kDiscordEpoch; }

private:
    static std::uint64_t make(std::int64_t ms, int worker, int increment) {
        return (static_cast<std::uint64_t>(ms - kDiscordEpoch) << 22) |
               (static_cast<std::uint64_t>(worker & 31) << 17) | static_cast<std::uint64_t>(increment);
    }
    std::int64_t last_ms_ = 0;
    int increment_ = 0;
    std::unordered_map<std::int64_t, int> past_;
};

// --- gateway state ------------------------------------------------------------------------------------------------

struct Frame {
    std::int64_t seq;
    std::string text;
};

class Connection;

struct Session {
    std::string id;
    std::int64_t intents = 0;
    std::int64_t seq = 0;
    std::deque<Frame> buffer;  // every dispatch not yet trimmed, for resume
    std::weak_ptr<Connection> connection;
    TimePoint detached_at{};
    std::int64_t created_ms = 0;
};

class DiscordSandbox;

class Connection : public WebSocketHandler {
public:
    Connection(DiscordSandbox& sandbox, std::shared_ptr<WebSocket> socket, std::uint64_t id)
        : socket(std::move(socket)), id(id), sandbox_(sandbox) {}
    void on_message(std::string_view data) override;
    void on_closed(const WebSocketClosed& how) override;

    std::shared_ptr<WebSocket> socket;
    std::uint64_t id;
    std::shared_ptr<Session> session;
    std::int64_t sent_seq = 0;  // the last dispatch this socket carried
    bool silent = false;        // a zombie: takes everything, answers nothing
    bool hello_sent = false;
    bool closing = false;  // the server closed or dropped it
    bool invalidate_on_close = false;
    std::deque<TimePoint> received;
    TimerPtr close_timer;
    std::int64_t opened_ms = 0;

private:
    DiscordSandbox& sandbox_;
};

// --- REST rate limits ---------------------------------------------------------------------------------------------

struct Bucket {
    int limit = 0;
    Ms window{0};
    int count = 0;
    TimePoint reset_at{};
    TimePoint blocked_until{};  // a 429 told the client to wait until then
    std::string hash;
};

struct RouteLimit {
    int limit;
    int window_ms;
};

/// A fault: the next `remaining` requests (or all until `until`) matching the filter get 429.
struct Storm {
    int remaining = 0;  // -1: no count limit
    std::optional<TimePoint> until;
    bool global = false;
    std::string route;       // empty: every route
    std::string channel_id;  // empty: every major id
    double retry_after = 1.0;

    bool active(TimePoint now) const {
        if (until && now >= *until) return false;
        return remaining != 0;
    }
};

struct Delay {
    int ms = 0;
    int remaining = -1;
    std::optional<TimePoint> until;

    bool active(TimePoint now) const { return ms > 0 && remaining != 0 && (!until || now < *until); }
};

struct Route {
    std::string name;   // "POST /channels/{channel.id}/messages"
    std::string major;  // the top-level id the bucket is keyed by
    std::vector<std::string> params;
};

struct Stats {
    std::int64_t identifies = 0;
    std::int64_t resumes = 0;
    std::int64_t resumes_refused = 0;
    std::int64_t sessions = 0;
    std::int64_t gateway_connections = 0;
    std::int64_t heartbeats = 0;
    std::int64_t dispatches = 0;
    std::int64_t replayed = 0;
    std::int64_t requests_total = 0;
    std::int64_t rate_limited = 0;
    std::int64_t rate_limited_global = 0;
    std::int64_t invalid_requests = 0;
    std::int64_t requests_while_told_to_wait = 0;
    std::int64_t nonce_reuses = 0;
    std::map<std::string, std::int64_t> requests;
    std::deque<json> request_log;
    std::int64_t request_log_dropped = 0;
    std::vector<json> gateway_events;
};

// --- the service --------------------------------------------------------------------------------------------------

class DiscordSandbox : public Service {
public:
    DiscordSandbox(Loop& loop, std::uint16_t port, Options options)
        : loop_(loop), options_(std::move(options)), port_(port), started_(Clock::now()) {
        gateway_url_ = "ws://" + options_.public_host + ":" + std::to_string(port_) + "/";
        identify_remaining_ = options_.identify_budget;
        identify_window_start_ms_ = unix_ms();
        make_default_world();
    }

    void handle(const HttpRequest& request, Respond respond) override {
        if (options_.verbose) std::cerr << "sandbox: " << request.method << " " << request.target << "\n";
        const std::string& path = request.path;
        if (path == "/_sandbox" || path.rfind("/_sandbox/", 0) == 0) return respond(control(request));
        if (path.rfind("/api/", 0) == 0) return api(request, std::move(respond));
        if (path == "/" || path.empty())
            return respond(HttpResponse::json(
                200, {{"service", "switchboard-sandbox discord"},
                      {"rest", "http://" + options_.public_host + ":" + std::to_string(port_) + "/api/v10"},
                      {"gateway", gateway_url_},
                      {"control", "http://" + options_.public_host + ":" + std::to_string(port_) + "/_sandbox/"}}));
        respond(api_error(404, "404: Not Found", 0));
    }

    std::shared_ptr<WebSocketHandler> open(const HttpRequest& request, std::shared_ptr<WebSocket> socket) override {
        auto connection = std::make_shared<Connection>(*this, socket, ++connection_counter_);
        connection->opened_ms = unix_ms();
        connections_[connection->id] = connection;
        ++stats_.gateway_connections;
        gateway_event("connect", *connection, {{"target", request.target}});
        if (auto version = request.query_param("v"); version && *version != "10" && *version != "9") {
            server_close(*connection, 4012, "Invalid API version", false);
            return connection;
        }
        if (auto encoding = request.query_param("encoding"); encoding && *encoding != "json") {
            server_close(*connection, 4002, "switchboard-sandbox speaks encoding=json only", false);
            return connection;
        }
        if (auto compress = request.query_param("compress"); compress && !compress->empty()) {
            server_close(*connection, 1003, "switchboard-sandbox does not compress (drop compress=)", false);
            return connection;
        }
        if (zombie_new_connections_) {
            connection->silent = true;
        } else {
            send_hello(*connection);
        }
        return connection;
    }

    // --- gateway --------------------------------------------------------------------------------------------------

    void on_frame(Connection& connection, std::string_view data) {
        if (connection.closing || connection.silent) return;
        const auto now = Clock::now();
        connection.received.push_back(now);
        while (!connection.received.empty() && now - connection.received.front() >= std::chrono::seconds(60))
            connection.received.pop_front();
        if (connection.received.size() > static_cast<std::size_t>(options_.gateway_rate))
            return server_close(connection, 4008, "Rate limited.", true);
        if (data.size() > kMaxPayload) return server_close(connection, 4002, "Error while decoding payload.", true);
        json payload = json::parse(data, nullptr, false);
        if (payload.is_discarded() || !payload.is_object() || !payload.contains("op") ||
            !payload["op"].is_number_integer())
            return server_close(connection, 4002, "Error while decoding payload.", true);
        const int op = payload["op"].get<int>();
        const json d = payload.contains("d") ? payload["d"] : json();
        switch (op) {
            case 1:
                ++stats_.heartbeats;
                send_frame(connection, {{"op", 11}, {"d", nullptr}, {"s", nullptr}, {"t", nullptr}});
                return;
            case 2:
                return identify(connection, d);
            case 6:
                return resume(connection, d);
            case 3:   // presence update
            case 4:   // voice state update
            case 8:   // request guild members
            case 31:  // request soundboard sounds
                if (!connection.session) return server_close(connection, 4003, "Not authenticated.", true);
                return;
            default:
                return server_close(connection, 4001, "Unknown opcode.", true);
        }
    }

    void on_socket_closed(Connection& connection, const WebSocketClosed& how) {
        std::shared_ptr<Connection> self;  // keeps it alive while we look at it
        if (auto found = connections_.find(connection.id); found != connections_.end()) {
            self = found->second;
            connections_.erase(found);
        }
        if (connection.close_timer) connection.close_timer->cancel();
        const bool by_server = connection.closing;
        json detail = {{"by", by_server ? "server" : (how.code ? "client" : "network")}};
        if (how.code) detail["code"] = *how.code;
        if (!how.reason.empty()) detail["reason"] = how.reason;
        auto session = connection.session;
        if (session && session->connection.lock().get() == &connection) {
            const bool clean = !by_server && how.code && (*how.code == 1000 || *how.code == 1001);
            if (clean || connection.invalidate_on_close) {
                sessions_.erase(session->id);
                detail["session"] = "invalidated";
            } else {
                session->connection.reset();
                session->detached_at = Clock::now();
                detail["session"] = "resumable";
            }
        }
        gateway_event("close", connection, detail);
        connection.session.reset();
        connection.socket.reset();
    }

private:
    // --- gateway helpers ------------------------------------------------------------------------------------------

    void gateway_event(const std::string& kind, const Connection& connection, json detail = json::object()) {
        detail["event"] = kind;
        detail["t"] = unix_ms();
        detail["connection"] = connection.id;
        if (connection.session) detail["session_id"] = connection.session->id;
        if (options_.verbose) std::cerr << "sandbox: gateway " << dump(detail) << "\n";
        stats_.gateway_events.push_back(std::move(detail));
        if (stats_.gateway_events.size() > 10000) stats_.gateway_events.erase(stats_.gateway_events.begin());
    }

    void send_hello(Connection& connection) {
        connection.hello_sent = true;
        send_frame(connection, {{"op", 10},
                                {"d",
                                 {{"heartbeat_interval", options_.heartbeat_interval_ms},
                                  {"_trace", json::array({"[\"switchboard-sandbox\"]"})}}},
                                {"s", nullptr},
                                {"t", nullptr}});
    }

    void send_frame(Connection& connection, const json& frame) {
        if (connection.silent || connection.closing || !connection.socket) return;
        connection.socket->send(dump(frame));
    }

    void server_close(Connection& connection, std::uint16_t code, const std::string& reason, bool resumable) {
        if (connection.closing || !connection.socket) return;
        connection.closing = true;
        connection.invalidate_on_close = !resumable;
        gateway_event("server_close", connection, {{"code", code}, {"reason", reason}});
        connection.socket->close(code, reason);
    }

    void server_drop(Connection& connection) {
        if (connection.closing || !connection.socket) return;
        connection.closing = true;
        gateway_event("server_drop", connection);
        connection.socket->drop();
    }

    bool token_matches(const json& d) const {
        std::string token = string_field(d, "token");
        if (token.rfind("Bot ", 0) == 0) token = token.substr(4);
        return token == options_.token;
    }

    std::string new_session_id() {
        static const char* digits = "0123456789abcdef";
        std::string id(32, '0');
        for (auto& c : id) c = digits[random_() % 16];
        return id;
    }

    void identify(Connection& connection, const json& d) {
        if (connection.session) return server_close(connection, 4005, "Already authenticated.", true);
        if (!d.is_object()) return server_close(connection, 4002, "Error while decoding payload.", true);
        if (!token_matches(d)) return server_close(connection, 4004, "Authentication failed.", false);
        if (!d.contains("intents") || !d["intents"].is_number_integer())
            return server_close(connection, 4013, "Invalid intent(s).", false);
        const std::int64_t intents = d["intents"].get<std::int64_t>();
        if (intents < 0 || (intents & ~kAllIntents) != 0)
            return server_close(connection, 4013, "Invalid intent(s).", false);
        if ((intents & kIntentMessageContent) && !options_.message_content_allowed)
            return server_close(connection, 4014, "Disallowed intent(s).", false);
        if (d.contains("shard") && !d["shard"].is_null()) {
            const auto& shard = d["shard"];
            if (!shard.is_array() || shard.size() != 2 || shard[0] != 0 || shard[1] != 1)
                return server_close(connection, 4010, "Invalid shard.", false);
        }
        refresh_identify_window();
        if (identify_remaining_ <= 0)
            return server_close(connection, 4004, "Authentication failed (identify budget exhausted).", false);
        --identify_remaining_;
        ++stats_.identifies;
        ++stats_.sessions;

        auto session = std::make_shared<Session>();
        session->id = new_session_id();
        session->intents = intents;
        session->created_ms = unix_ms();
        session->connection = connections_[connection.id];
        sessions_[session->id] = session;
        connection.session = session;
        connection.sent_seq = 0;
        gateway_event("identify", connection, {{"intents", intents}});

        json guilds = json::array();
        for (const auto& [id, guild] : guilds_) guilds.push_back({{"id", id}, {"unavailable", true}});
        json ready = {{"v", 10},
                      {"user", user_json(bot_, true)},
                      {"guilds", guilds},
                      {"session_id", session->id},
                      {"session_type", "normal"},
                      {"resume_gateway_url", gateway_url_},
                      {"application", {{"id", bot_.id}, {"flags", options_.message_content_allowed ? 1 << 19 : 0}}},
                      {"private_channels", json::array()},
                      {"relationships", json::array()},
                      {"presences", json::array()},
                      {"guild_join_requests", json::array()},
                      {"geo_ordered_rtc_regions", json::array()},
                      {"user_settings", json::object()},
                      {"_trace", json::array({"[\"switchboard-sandbox\"]"})}};
        if (d.contains("shard") && !d["shard"].is_null()) ready["shard"] = d["shard"];
        dispatch(*session, "READY", ready);
        for (const auto& [id, guild] : guilds_) dispatch(*session, "GUILD_CREATE", guild_create_json(guild));
    }

    void refuse_resume(Connection& connection, const std::string& why) {
        ++stats_.resumes_refused;
        gateway_event("resume_refused", connection, {{"why", why}});
        send_frame(connection, {{"op", 9}, {"d", false}, {"s", nullptr}, {"t", nullptr}});
    }

    void resume(Connection& connection, const json& d) {
        if (connection.session) return server_close(connection, 4005, "Already authenticated.", true);
        if (!d.is_object()) return server_close(connection, 4002, "Error while decoding payload.", true);
        if (!token_matches(d)) return server_close(connection, 4004, "Authentication failed.", false);
        sweep_sessions();
        const std::string session_id = string_field(d, "session_id");
        auto found = sessions_.find(session_id);
        if (found == sessions_.end()) return refuse_resume(connection, "unknown or expired session");
        auto session = found->second;
        std::int64_t seq = 0;
        if (d.contains("seq") && d["seq"].is_number_integer()) seq = d["seq"].get<std::int64_t>();
        if (seq > session->seq || seq < 0) return server_close(connection, 4007, "Invalid seq.", false);
        if (!session->buffer.empty() && seq < session->buffer.front().seq - 1)
            return refuse_resume(connection, "seq older than the replay buffer");
        if (auto previous = session->connection.lock(); previous && previous.get() != &connection) {
            previous->session.reset();  // the old socket no longer owns the session
            server_drop(*previous);
        }
        session->connection = connections_[connection.id];
        connection.session = session;
        connection.sent_seq = seq;
        const std::int64_t before = session->seq;
        flush(connection);
        stats_.replayed += before - seq;
        ++stats_.resumes;
        gateway_event("resume", connection, {{"seq", seq}, {"replayed", before - seq}});
        dispatch(*session, "RESUMED", {{"_trace", json::array({"[\"switchboard-sandbox\"]"})}});
    }

    void dispatch(Session& session, const std::string& type, const json& d) {
        const std::int64_t seq = ++session.seq;
        session.buffer.push_back({seq, dump(json{{"op", 0}, {"d", d}, {"s", seq}, {"t", type}})});
        while (session.buffer.size() > options_.replay_buffer) session.buffer.pop_front();
        ++stats_.dispatches;
        if (auto connection = session.connection.lock();
            connection && !connection->silent && !connection->closing && connection->socket) {
            connection->socket->send(session.buffer.back().text);
            connection->sent_seq = seq;
        }
    }

    void flush(Connection& connection) {
        if (!connection.session || connection.silent || connection.closing || !connection.socket) return;
        for (const auto& frame : connection.session->buffer) {
            if (frame.seq <= connection.sent_seq) continue;
            connection.socket->send(frame.text);
            connection.sent_seq = frame.seq;
        }
    }

    void sweep_sessions() {
        const auto now = Clock::now();
        for (auto it = sessions_.begin(); it != sessions_.end();) {
            const auto& session = *it->second;
            if (!session.connection.lock() && now - session.detached_at > Ms(options_.resume_timeout_ms))
                it = sessions_.erase(it);
            else
                ++it;
        }
    }

    /// Sends one event to every live session (attached, or detached and still resumable) that has @p intent.
    template <typename Build>
    void dispatch_all(const std::string& type, std::int64_t intent, Build build) {
        sweep_sessions();
        for (auto& [id, session] : sessions_) {
            if (intent != 0 && (session->intents & intent) == 0) continue;
            dispatch(*session, type, build(*session));
        }
    }

    void refresh_identify_window() {
        if (unix_ms() - identify_window_start_ms_ >= kIdentifyWindowMs) {
            identify_window_start_ms_ = unix_ms();
            identify_remaining_ = options_.identify_budget;
        }
    }

    // --- objects as JSON ------------------------------------------------------------------------------------------

    json user_json(const User& user, bool full = false) const {
        json out = {{"id", user.id},
                    {"username", user.username},
                    {"discriminator", "0"},
                    {"global_name", user.global_name.empty() ? json(nullptr) : json(user.global_name)},
                    {"avatar", nullptr},
                    {"public_flags", 0},
                    {"flags", 0}};
        if (user.bot) out["bot"] = true;
        if (full) {
            out["verified"] = true;
            out["mfa_enabled"] = false;
            out["email"] = nullptr;
        }
        return out;
    }

    json member_json(const Guild& guild, const User* user) const {
        json out = {{"roles", json::array()},
                    {"joined_at", iso8601(guild.joined_ms)},
                    {"nick", nullptr},
                    {"avatar", nullptr},
                    {"premium_since", nullptr},
                    {"deaf", false},
                    {"mute", false},
                    {"flags", 0},
                    {"pending", false},
                    {"communication_disabled_until", nullptr}};
        if (user) out["user"] = user_json(*user);
        return out;
    }

    json channel_json(const Channel& channel) const {
        const std::string last =
            channel.messages.empty() ? std::string() : std::to_string(channel.messages.rbegin()->first);
        const json last_id = last.empty() ? json(nullptr) : json(last);
        if (channel.type == 1) {
            json recipients = json::array();
            if (auto user = users_.find(channel.recipient_id); user != users_.end())
                recipients.push_back(user_json(user->second));
            return {{"id", channel.id},
                    {"type", 1},
                    {"last_message_id", last_id},
                    {"flags", 0},
                    {"recipients", recipients}};
        }
        return {{"id", channel.id},
                {"type", channel.type},
                {"guild_id", channel.guild_id},
                {"name", channel.name},
                {"position", channel.position},
                {"permission_overwrites", json::array()},
                {"topic", channel.topic.empty() ? json(nullptr) : json(channel.topic)},
                {"nsfw", false},
                {"last_message_id", last_id},
                {"rate_limit_per_user", 0},
                {"parent_id", nullptr},
                {"flags", 0}};
    }

    json guild_json(const Guild& guild) const {
        return {{"id", guild.id},
                {"name", guild.name},
                {"icon", nullptr},
                {"splash", nullptr},
                {"discovery_splash", nullptr},
                {"banner", nullptr},
                {"description", nullptr},
                {"owner_id", owner_id()},
                {"afk_channel_id", nullptr},
                {"afk_timeout", 300},
                {"verification_level", 0},
                {"default_message_notifications", 0},
                {"explicit_content_filter", 0},
                {"mfa_level", 0},
                {"nsfw_level", 0},
                {"premium_tier", 0},
                {"preferred_locale", "en-US"},
                {"system_channel_id", nullptr},
                {"rules_channel_id", nullptr},
                {"public_updates_channel_id", nullptr},
                {"features", json::array()},
                {"emojis", json::array()},
                {"stickers", json::array()},
                {"roles", json::array({{{"id", guild.id},
                                        {"name", "@everyone"},
                                        {"permissions", "2248473465835073"},
                                        {"position", 0},
                                        {"color", 0},
                                        {"hoist", false},
                                        {"managed", false},
                                        {"mentionable", false},
                                        {"flags", 0}}})}};
    }

    std::string owner_id() const {
        for (const auto& [id, user] : users_)
            if (!user.bot) return id;
        return bot_.id;
    }

    json guild_create_json(const Guild& guild) const {
        json out = guild_json(guild);
        json channels = json::array();
        for (const auto& id : guild.channel_ids)
            if (auto channel = channels_.find(id); channel != channels_.end())
                channels.push_back(channel_json(channel->second));
        json members = json::array();
        for (const auto& [id, user] : users_) members.push_back(member_json(guild, &user));
        out["unavailable"] = false;
        out["joined_at"] = iso8601(guild.joined_ms);
        out["large"] = false;
        out["member_count"] = members.size();
        out["channels"] = channels;
        out["threads"] = json::array();
        out["members"] = members;
        out["presences"] = json::array();
        out["voice_states"] = json::array();
        out["stage_instances"] = json::array();
        out["guild_scheduled_events"] = json::array();
        out["soundboard_sounds"] = json::array();
        return out;
    }

    // --- the world ------------------------------------------------------------------------------------------------

    void make_default_world() {
        bot_ = User{"1000", "switchboard-bot", "Switchboard", true};
        users_[bot_.id] = bot_;
        users_["2001"] = User{"2001", "alice", "Alice", false};
        users_["2002"] = User{"2002", "bob", "Bob", false};
        Guild guild{"1", "Sandbox", unix_ms(), {}};
        guilds_[guild.id] = guild;
        add_channel("1", "100", "general", "");
        add_channel("1", "101", "ops", "");
        add_channel("1", "102", "random", "");
    }

    Channel& add_channel(const std::string& guild_id, const std::string& id, const std::string& name,
                         const std::string& topic) {
        Guild& guild = guilds_[guild_id];
        Channel channel;
        channel.id = id;
        channel.type = 0;
        channel.guild_id = guild_id;
        channel.name = name;
        channel.topic = topic;
        channel.position = static_cast<int>(guild.channel_ids.size());
        guild.channel_ids.push_back(id);
        return channels_[id] = std::move(channel);
    }

    Channel& dm_channel_for(const std::string& user_id) {
        if (auto found = dm_by_user_.find(user_id); found != dm_by_user_.end()) return channels_[found->second];
        Channel channel;
        channel.id = std::to_string(ids_.next());
        channel.type = 1;
        channel.recipient_id = user_id;
        dm_by_user_[user_id] = channel.id;
        return channels_[channel.id] = std::move(channel);
    }

    bool mentions_bot(const json& message) const {
        for (const auto& user : message["mentions"])
            if (user.value("id", "") == bot_.id) return true;
        return false;
    }

    json mentions_in(const std::string& content) const {
        json out = json::array();
        std::set<std::string> seen;
        for (std::size_t at = content.find("<@"); at != std::string::npos; at = content.find("<@", at + 2)) {
            std::size_t start = at + 2;
            if (start < content.size() && content[start] == '!') ++start;
            const auto end = content.find('>', start);
            if (end == std::string::npos) break;
            const std::string id = content.substr(start, end - start);
            if (auto user = users_.find(id); user != users_.end() && seen.insert(id).second)
                out.push_back(user_json(user->second));
        }
        return out;
    }

    /// Stores a new message and dispatches MESSAGE_CREATE; returns the stored object (as REST shows it).
    json create_message(Channel& channel, const User& author, const std::string& content, std::uint64_t id,
                        const json& extra, bool live) {
        const std::int64_t ms = Snowflakes::time_of(id);
        json message = {{"id", std::to_string(id)},
                        {"channel_id", channel.id},
                        {"author", user_json(author)},
                        {"content", content},
                        {"timestamp", iso8601(ms)},
                        {"edited_timestamp", nullptr},
                        {"tts", false},
                        {"mention_everyone", content.find("@everyone") != std::string::npos},
                        {"mentions", mentions_in(content)},
                        {"mention_roles", json::array()},
                        {"attachments", json::array()},
                        {"embeds", json::array()},
                        {"components", json::array()},
                        {"pinned", false},
                        {"type", 0},
                        {"flags", 0}};
        for (const auto& [key, value] : extra.items()) message[key] = value;
        channel.messages[id] = message;
        if (live) dispatch_message("MESSAGE_CREATE", channel, message);
        return message;
    }

    /// MESSAGE_CREATE or MESSAGE_UPDATE to every session with the intent, content blanked where the intents say.
    void dispatch_message(const std::string& type, const Channel& channel, const json& message) {
        const bool guild_message = !channel.guild_id.empty();
        json full = message;
        full["channel_type"] = channel.type;  // discord.js 14.2x needs it to build an uncached DM channel
        if (guild_message) {
            full["guild_id"] = channel.guild_id;
            full["member"] = member_json(guilds_.at(channel.guild_id), nullptr);
        }
        const bool exempt = !guild_message || mentions_bot(message) || message["author"].value("id", "") == bot_.id;
        json stripped;
        if (!exempt) {
            stripped = full;
            stripped["content"] = "";
            stripped["embeds"] = json::array();
            stripped["attachments"] = json::array();
            stripped["components"] = json::array();
        }
        dispatch_all(type, guild_message ? kIntentGuildMessages : kIntentDirectMessages,
                     [&](const Session& session) -> const json& {
                         return exempt || (session.intents & kIntentMessageContent) ? full : stripped;
                     });
    }

    json rest_view(const Channel& channel, const json& message) const {
        if (options_.message_content_allowed || channel.guild_id.empty() || mentions_bot(message) ||
            message["author"].value("id", "") == bot_.id)
            return message;
        json out = message;
        out["content"] = "";
        out["embeds"] = json::array();
        out["attachments"] = json::array();
        out["components"] = json::array();
        return out;
    }

    // --- REST -----------------------------------------------------------------------------------------------------

    std::optional<Route> match_route(const std::string& method, const std::vector<std::string>& parts) const {
        const auto n = parts.size();
        auto is = [&](std::size_t i, const char* text) { return i < n && parts[i] == text; };
        auto route = [&](std::string name, std::string major, std::vector<std::string> params) {
            return std::optional<Route>(Route{method + " " + std::move(name), std::move(major), std::move(params)});
        };
        if (n == 2 && is(0, "gateway") && is(1, "bot") && method == "GET") return route("/gateway/bot", "", {});
        if (n == 1 && is(0, "gateway") && method == "GET") return route("/gateway", "", {});
        if (n == 2 && is(0, "users") && is(1, "@me") && method == "GET") return route("/users/@me", "", {});
        if (n == 3 && is(0, "users") && is(1, "@me") && is(2, "channels") && method == "POST")
            return route("/users/@me/channels", "", {});
        if (n == 3 && is(0, "users") && is(1, "@me") && is(2, "guilds") && method == "GET")
            return route("/users/@me/guilds", "", {});
        if (n == 2 && is(0, "users") && method == "GET") return route("/users/{user.id}", "", {parts[1]});
        if (n == 2 && is(0, "applications") && is(1, "@me") && method == "GET")
            return route("/applications/@me", "", {});
        if (n == 2 && is(0, "channels") && method == "GET")
            return route("/channels/{channel.id}", parts[1], {parts[1]});
        if (n == 3 && is(0, "channels") && is(2, "messages") && (method == "GET" || method == "POST"))
            return route("/channels/{channel.id}/messages", parts[1], {parts[1]});
        if (n == 4 && is(0, "channels") && is(2, "messages") && (method == "GET" || method == "DELETE"))
            return route("/channels/{channel.id}/messages/{message.id}", parts[1], {parts[1], parts[3]});
        if (n == 2 && is(0, "guilds") && method == "GET") return route("/guilds/{guild.id}", parts[1], {parts[1]});
        if (n == 3 && is(0, "guilds") && is(2, "channels") && method == "GET")
            return route("/guilds/{guild.id}/channels", parts[1], {parts[1]});
        return std::nullopt;
    }

    RouteLimit limit_for(const std::string& route) const {
        if (auto found = route_limits_.find(route); found != route_limits_.end()) return found->second;
        return {options_.route_limit, options_.route_window_ms};
    }

    Bucket& bucket_for(const Route& route) {
        const std::string key = route.name + " " + route.major;
        auto found = buckets_.find(key);
        if (found != buckets_.end()) return found->second;
        const auto limit = limit_for(route.name);
        Bucket bucket;
        bucket.limit = limit.limit;
        bucket.window = Ms(limit.window_ms);
        bucket.hash = hex_hash(route.name);
        return buckets_[key] = bucket;
    }

    void add_bucket_headers(HttpResponse& response, const Bucket& bucket, TimePoint now) const {
        const double reset_after = seconds_between(now, bucket.reset_at);
        const double reset = static_cast<double>(unix_ms()) / 1000.0 + reset_after;
        response.headers.emplace_back("X-RateLimit-Limit", std::to_string(bucket.limit));
        response.headers.emplace_back("X-RateLimit-Remaining",
                                      std::to_string(std::max(0, bucket.limit - bucket.count)));
        response.headers.emplace_back("X-RateLimit-Reset", decimal3(reset));
        response.headers.emplace_back("X-RateLimit-Reset-After", decimal3(reset_after));
        response.headers.emplace_back("X-RateLimit-Bucket", bucket.hash);
    }

    HttpResponse too_many(double retry_after, bool global) {
        ++stats_.rate_limited;
        if (global) ++stats_.rate_limited_global;
        auto response = HttpResponse::json(
            429, {{"message", "You are being rate limited."}, {"retry_after", retry_after}, {"global", global}});
        response.headers.emplace_back("Retry-After", std::to_string(static_cast<long long>(std::ceil(retry_after))));
        if (global) response.headers.emplace_back("X-RateLimit-Global", "true");
        response.headers.emplace_back("X-RateLimit-Scope", global ? "global" : "user");
        return response;
    }

    void api(const HttpRequest& request, Respond respond) {
        const auto now = Clock::now();
        std::vector<std::string> parts;
        {
            std::string_view rest = std::string_view(request.path).substr(5);  // after "/api/"
            while (!rest.empty()) {
                const auto slash = rest.find('/');
                if (slash != 0) parts.emplace_back(rest.substr(0, slash));
                if (slash == std::string_view::npos) break;
                rest.remove_prefix(slash + 1);
            }
        }
        if (!parts.empty() && (parts[0] == "v10" || parts[0] == "v9")) parts.erase(parts.begin());
        json entry = {{"t", unix_ms()}, {"method", request.method}, {"path", request.path}};
        ++stats_.requests_total;
        auto finish = [&](HttpResponse response) {
            entry["status"] = response.status;
            if (response.status == 401 || response.status == 403 || response.status == 429) ++stats_.invalid_requests;
            log_request(std::move(entry));
            if (delay_.active(now)) {
                if (delay_.remaining > 0) --delay_.remaining;
                loop_.after(Ms(delay_.ms),
                            [respond, response = std::move(response)]() mutable { respond(std::move(response)); });
                return;
            }
            respond(std::move(response));
        };

        const auto route = match_route(request.method, parts);
        if (!route) {
            entry["route"] = nullptr;
            return finish(api_error(404, "404: Not Found", 0));
        }
        entry["route"] = route->name;
        ++stats_.requests[route->name];
        if (route->name != "GET /gateway" && request.header("authorization") != "Bot " + options_.token)
            return finish(api_error(401, "401: Unauthorized", 0));

        Bucket& bucket = bucket_for(*route);
        if (now >= bucket.reset_at) bucket.count = 0;
        entry["bucket"] = bucket.hash;
        const bool bucket_wait = now < bucket.blocked_until || (bucket.count >= bucket.limit && now < bucket.reset_at);
        const bool global_wait = now < global_blocked_until_;
        entry["said_wait"] = bucket_wait || global_wait;
        if (bucket_wait || global_wait) {
            ++stats_.requests_while_told_to_wait;
            entry["waited_for"] = bucket_wait ? "bucket" : "global";
        }

        if (storm_.active(now) && (storm_.route.empty() || storm_.route == route->name) &&
            (storm_.channel_id.empty() || storm_.channel_id == route->major)) {
            if (storm_.remaining > 0) --storm_.remaining;
            const auto until =
                now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(storm_.retry_after));
            entry["storm"] = true;
            if (storm_.global) {
                global_blocked_until_ = std::max(global_blocked_until_, until);
                return finish(too_many(storm_.retry_after, true));
            }
            bucket.blocked_until = std::max(bucket.blocked_until, until);
            auto response = too_many(storm_.retry_after, false);
            Bucket shown = bucket;
            shown.count = shown.limit;
            shown.reset_at = std::max(bucket.reset_at, until);
            add_bucket_headers(response, shown, now);
            return finish(std::move(response));
        }

        if (now >= global_window_end_) {
            global_count_ = 0;
            global_window_end_ = now + std::chrono::seconds(1);
        }
        if (options_.global_rate > 0 && global_count_ >= options_.global_rate) {
            global_blocked_until_ = global_window_end_;
            return finish(too_many(seconds_between(now, global_window_end_), true));
        }
        if (bucket.count >= bucket.limit && now < bucket.reset_at) {
            bucket.blocked_until = std::max(bucket.blocked_until, bucket.reset_at);
            auto response = too_many(seconds_between(now, bucket.reset_at), false);
            add_bucket_headers(response, bucket, now);
            return finish(std::move(response));
        }
        ++global_count_;
        if (bucket.count == 0) bucket.reset_at = now + bucket.window;
        ++bucket.count;

        auto response = execute(*route, request);
        add_bucket_headers(response, bucket, now);
        finish(std::move(response));
    }

    void log_request(json entry) {
        stats_.request_log.push_back(std::move(entry));
        while (stats_.request_log.size() > options_.request_log_max) {
            stats_.request_log.pop_front();
            ++stats_.request_log_dropped;
        }
    }

    HttpResponse execute(const Route& route, const HttpRequest& request) {
        const auto& name = route.name;
        if (name == "GET /gateway") return HttpResponse::json(200, {{"url", gateway_url_}});
        if (name == "GET /gateway/bot") {
            refresh_identify_window();
            return HttpResponse::json(
                200, {{"url", gateway_url_},
                      {"shards", 1},
                      {"session_start_limit",
                       {{"total", options_.identify_budget},
                        {"remaining", identify_remaining_},
                        {"reset_after",
                         std::max<std::int64_t>(0, kIdentifyWindowMs - (unix_ms() - identify_window_start_ms_))},
                        {"max_concurrency", 1}}}});
        }
        if (name == "GET /users/@me") return HttpResponse::json(200, user_json(bot_, true));
        if (name == "GET /users/{user.id}") {
            auto user = users_.find(route.params[0]);
            if (user == users_.end()) return api_error(404, "Unknown User", 10013);
            return HttpResponse::json(200, user_json(user->second));
        }
        if (name == "GET /applications/@me")
            return HttpResponse::json(200, {{"id", bot_.id},
                                            {"name", bot_.username},
                                            {"icon", nullptr},
                                            {"description", ""},
                                            {"bot_public", false},
                                            {"bot_require_code_grant", false},
                                            {"flags", options_.message_content_allowed ? 1 << 19 : 0},
                                            {"bot", user_json(bot_)}});
        if (name == "GET /users/@me/guilds") {
            json out = json::array();
            for (const auto& [id, guild] : guilds_)
                out.push_back({{"id", id},
                               {"name", guild.name},
                               {"icon", nullptr},
                               {"owner", false},
                               {"permissions", "2248473465835073"},
                               {"features", json::array()}});
            return HttpResponse::json(200, out);
        }
        if (name == "POST /users/@me/channels") {
            const json body = json::parse(request.body, nullptr, false);
            if (body.is_discarded() || !body.is_object()) return api_error(400, "400: Bad Request", 50109);
            const std::string recipient = string_field(body, "recipient_id");
            if (users_.find(recipient) == users_.end() || recipient == bot_.id)
                return form_error("recipient_id", "NUMBER_TYPE_COERCE",
                                  "Value \"" + recipient + "\" is not snowflake.");
            return HttpResponse::json(200, channel_json(dm_channel_for(recipient)));
        }
        if (name == "GET /guilds/{guild.id}") {
            auto guild = guilds_.find(route.params[0]);
            if (guild == guilds_.end()) return api_error(404, "Unknown Guild", 10004);
            return HttpResponse::json(200, guild_json(guild->second));
        }
        if (name == "GET /guilds/{guild.id}/channels") {
            auto guild = guilds_.find(route.params[0]);
            if (guild == guilds_.end()) return api_error(404, "Unknown Guild", 10004);
            json out = json::array();
            for (const auto& id : guild->second.channel_ids) out.push_back(channel_json(channels_.at(id)));
            return HttpResponse::json(200, out);
        }

        auto channel_it = channels_.find(route.params.empty() ? std::string() : route.params[0]);
        if (channel_it == channels_.end()) return api_error(404, "Unknown Channel", 10003);
        Channel& channel = channel_it->second;
        if (name == "GET /channels/{channel.id}") return HttpResponse::json(200, channel_json(channel));
        if (name == "GET /channels/{channel.id}/messages") return list_messages(channel, request);
        if (name == "POST /channels/{channel.id}/messages") return post_message(channel, request);
        const auto message_id = parse_snowflake(route.params[1]);
        auto message = message_id ? channel.messages.find(*message_id) : channel.messages.end();
        if (message == channel.messages.end()) return api_error(404, "Unknown Message", 10008);
        if (name == "GET /channels/{channel.id}/messages/{message.id}")
            return HttpResponse::json(200, rest_view(channel, message->second));
        // DELETE
        delete_message(channel, message);
        deleted_.push_back({{"channel_id", channel.id}, {"message_id", route.params[1]}, {"t", unix_ms()}});
        return HttpResponse::empty(204);
    }

    void delete_message(Channel& channel, std::map<std::uint64_t, json>::iterator message) {
        json deletion = {{"id", std::to_string(message->first)}, {"channel_id", channel.id}};
        if (!channel.guild_id.empty()) deletion["guild_id"] = channel.guild_id;
        channel.messages.erase(message);
        dispatch_all("MESSAGE_DELETE", channel.guild_id.empty() ? kIntentDirectMessages : kIntentGuildMessages,
                     [&](const Session&) -> const json& { return deletion; });
    }

    HttpResponse list_messages(const Channel& channel, const HttpRequest& request) const {
        int limit = 50;
        if (auto text = request.query_param("limit")) {
            const auto value = parse_integer(*text);
            if (!value) return form_error("limit", "NUMBER_TYPE_COERCE", "Value \"" + *text + "\" is not int.");
            if (*value < 1 || *value > 100)
                return form_error("limit", "NUMBER_TYPE_MAX", "Int value should be between 1 and 100.");
            limit = static_cast<int>(*value);
        }
        std::optional<std::uint64_t> around, before, after;
        for (auto [key, target] :
             {std::pair{"around", &around}, std::pair{"before", &before}, std::pair{"after", &after}}) {
            if (auto text = request.query_param(key)) {
                *target = parse_snowflake(*text);
                if (!*target) return form_error(key, "NUMBER_TYPE_COERCE", "Value \"" + *text + "\" is not snowflake.");
            }
        }
        const auto& messages = channel.messages;
        std::vector<const json*> picked;  // newest first
        if (around) {
            // Half from X on (X itself included), the rest older; a short side lends its share to the other.
            std::vector<const json*> older, newer;  // older: newest first; newer: oldest first
            const auto split = messages.lower_bound(*around);
            auto up = split;
            for (; up != messages.end() && static_cast<int>(newer.size()) < (limit + 1) / 2; ++up)
                newer.push_back(&up->second);
            for (auto it = std::make_reverse_iterator(split);
                 it != messages.rend() && static_cast<int>(older.size() + newer.size()) < limit; ++it)
                older.push_back(&it->second);
            for (; up != messages.end() && static_cast<int>(older.size() + newer.size()) < limit; ++up)
                newer.push_back(&up->second);
            picked.assign(newer.rbegin(), newer.rend());
            picked.insert(picked.end(), older.begin(), older.end());
        } else if (before) {
            for (auto it = std::make_reverse_iterator(messages.lower_bound(*before));
                 it != messages.rend() && static_cast<int>(picked.size()) < limit; ++it)
                picked.push_back(&it->second);
        } else if (after) {
            for (auto it = messages.upper_bound(*after);
                 it != messages.end() && static_cast<int>(picked.size()) < limit; ++it)
                picked.push_back(&it->second);
            std::reverse(picked.begin(), picked.end());
        } else {
            for (auto it = messages.rbegin(); it != messages.rend() && static_cast<int>(picked.size()) < limit; ++it)
                picked.push_back(&it->second);
        }
        json out = json::array();
        for (const json* message : picked) out.push_back(rest_view(channel, *message));
        return HttpResponse::json(200, out);
    }

    static std::optional<std::string> multipart_payload(const HttpRequest& request) {
        const std::string marker = "name=\"payload_json\"";
        const auto at = request.body.find(marker);
        if (at == std::string::npos) return std::nullopt;
        const auto start = request.body.find("\r\n\r\n", at);
        if (start == std::string::npos) return std::nullopt;
        const auto end = request.body.find("\r\n--", start + 4);
        return request.body.substr(start + 4, end == std::string::npos ? std::string::npos : end - start - 4);
    }

    HttpResponse post_message(Channel& channel, const HttpRequest& request) {
        std::string text = request.body;
        if (request.header("content-type").rfind("multipart/form-data", 0) == 0) {
            auto payload = multipart_payload(request);
            if (!payload) return api_error(400, "Cannot send an empty message", 50006);
            text = *payload;
        }
        const json body = json::parse(text, nullptr, false);
        if (body.is_discarded() || !body.is_object()) return api_error(400, "400: Bad Request", 50109);
        const std::string content =
            body.contains("content") && body["content"].is_string() ? body["content"].get<std::string>() : "";
        if (utf8_length(content) > 2000)
            return form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.");
        const bool has_embeds = body.contains("embeds") && body["embeds"].is_array() && !body["embeds"].empty();
        const bool has_stickers =
            body.contains("sticker_ids") && body["sticker_ids"].is_array() && !body["sticker_ids"].empty();
        if (content.empty() && !has_embeds && !has_stickers)
            return api_error(400, "Cannot send an empty message", 50006);
        if (has_embeds && body["embeds"].size() > 10)
            return form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.");

        json nonce = body.contains("nonce") ? body["nonce"] : json();
        std::string nonce_key;
        if (nonce.is_string()) {
            nonce_key = nonce.get<std::string>();
            if (nonce_key.size() > 25)
                return form_error("nonce", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.");
        } else if (nonce.is_number_integer()) {
            nonce_key = nonce.dump();
        } else if (!nonce.is_null()) {
            return form_error("nonce", "BASE_TYPE_BAD_TYPE", "Must be a string or an integer.");
        }
        const bool enforce = body.value("enforce_nonce", false) && !nonce_key.empty();
        const auto now = Clock::now();
        if (enforce) {
            for (auto it = nonces_.begin(); it != nonces_.end();)
                it = now - it->second.first > Ms(options_.nonce_window_ms) ? nonces_.erase(it) : std::next(it);
            if (auto seen = nonces_.find(nonce_key); seen != nonces_.end()) {
                ++stats_.nonce_reuses;
                return HttpResponse::json(200, seen->second.second);
            }
        }

        json extra = json::object();
        if (!nonce.is_null()) extra["nonce"] = nonce;
        if (has_embeds) extra["embeds"] = body["embeds"];
        if (body.value("tts", false)) extra["tts"] = true;
        if (body.contains("flags") && body["flags"].is_number_integer()) extra["flags"] = body["flags"];
        if (body.contains("message_reference") && body["message_reference"].is_object()) {
            const auto& reference = body["message_reference"];
            const std::string referenced_id = string_field(reference, "message_id");
            const std::string referenced_channel = string_field(reference, "channel_id", channel.id);
            const Channel* target = channels_.count(referenced_channel) ? &channels_.at(referenced_channel) : nullptr;
            const auto parsed = parse_snowflake(referenced_id);
            const json* referenced = nullptr;
            if (target && parsed)
                if (auto it = target->messages.find(*parsed); it != target->messages.end()) referenced = &it->second;
            if (!referenced && reference.value("fail_if_not_exists", true))
                return form_error("message_reference", "REPLIES_UNKNOWN_MESSAGE", "Unknown message");
            if (referenced) {
                json ref = {{"message_id", referenced_id}, {"channel_id", referenced_channel}, {"type", 0}};
                if (target && !target->guild_id.empty()) ref["guild_id"] = target->guild_id;
                extra["message_reference"] = ref;
                extra["referenced_message"] = *referenced;
                extra["type"] = 19;
            }
        }
        json message = create_message(channel, bot_, content, ids_.next(), extra, true);
        sent_.push_back(message);
        if (enforce) nonces_[nonce_key] = {now, message};
        return HttpResponse::json(200, message);
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
            if (post && path == "/guilds") return control_add_guild(body);
            if (post && path == "/channels") return control_add_channel(body);
            if (post && path == "/users") return control_add_user(body);
            if (post && path == "/messages") return control_post_messages(body);
            if (get && path == "/messages") return control_history(request);
            if (post && (path == "/messages/edit" || path == "/messages/delete")) return control_change(path, body);
            if (get && path == "/sent") return control_sent(request);
            if (get && path == "/stats") return HttpResponse::json(200, stats_json(request.query_param("log") != "0"));
            if (post && path == "/stats/reset") {
                stats_ = Stats{};
                return HttpResponse::json(200, {{"ok", true}});
            }
            if (get && path == "/config") return HttpResponse::json(200, config_json());
            if (post && path == "/config") return control_config(body);
            if (get && path == "/sessions") return HttpResponse::json(200, sessions_json());
            if (post && path.rfind("/gateway/", 0) == 0) return control_gateway(path.substr(9), body);
            if (post && path == "/rest/storm") return control_storm(body);
            if (post && path == "/rest/delay") return control_delay(body);
            if (post && path == "/rest/clear") {
                storm_ = Storm{};
                delay_ = Delay{};
                return HttpResponse::json(200, {{"ok", true}});
            }
        } catch (const json::exception& error) {
            return control_error(400, std::string("bad field type: ") + error.what());
        }
        return control_error(
            404, "no control endpoint " + request.method + " " + request.path + " (GET /_sandbox/ lists them)");
    }

    static json control_index() {
        return {{"endpoints", json::array({"GET /_sandbox/world",
                                           "POST /_sandbox/guilds",
                                           "POST /_sandbox/channels",
                                           "POST /_sandbox/users",
                                           "POST /_sandbox/messages",
                                           "POST /_sandbox/messages/edit",
                                           "POST /_sandbox/messages/delete",
                                           "GET /_sandbox/messages?channel_id=",
                                           "GET /_sandbox/sent[?channel_id=]",
                                           "GET /_sandbox/stats[?log=0]",
                                           "POST /_sandbox/stats/reset",
                                           "GET|POST /_sandbox/config",
                                           "GET /_sandbox/sessions",
                                           "POST /_sandbox/gateway/drop",
                                           "POST /_sandbox/gateway/reconnect",
                                           "POST /_sandbox/gateway/invalid_session",
                                           "POST /_sandbox/gateway/close",
                                           "POST /_sandbox/gateway/heartbeat_acks",
                                           "POST /_sandbox/gateway/request_heartbeat",
                                           "POST /_sandbox/gateway/invalidate_sessions",
                                           "POST /_sandbox/rest/storm",
                                           "POST /_sandbox/rest/delay",
                                           "POST /_sandbox/rest/clear"})},
                {"docs", "tools/sandbox/README.md"}};
    }

    json world_json() const {
        json users = json::array();
        for (const auto& [id, user] : users_) users.push_back(user_json(user));
        json guilds = json::array();
        for (const auto& [id, guild] : guilds_) {
            json entry = {{"id", id}, {"name", guild.name}, {"channel_ids", guild.channel_ids}};
            guilds.push_back(entry);
        }
        json channels = json::array();
        for (const auto& [id, channel] : channels_) {
            json entry = channel_json(channel);
            entry["message_count"] = channel.messages.size();
            channels.push_back(entry);
        }
        return {{"bot", user_json(bot_, true)},
                {"token", options_.token},
                {"users", users},
                {"guilds", guilds},
                {"channels", channels}};
    }

    std::string id_or_new(const json& body) {
        std::string id = string_field(body, "id");
        return id.empty() ? std::to_string(ids_.next()) : id;
    }

    HttpResponse control_add_guild(const json& body) {
        Guild guild;
        guild.id = id_or_new(body);
        if (guilds_.count(guild.id)) return control_error(409, "guild " + guild.id + " exists");
        guild.name = body.value("name", "guild-" + guild.id);
        guild.joined_ms = unix_ms();
        guilds_[guild.id] = guild;
        dispatch_all("GUILD_CREATE", 0, [&](const Session&) { return guild_create_json(guilds_.at(guild.id)); });
        return HttpResponse::json(200, guild_json(guild));
    }

    HttpResponse control_add_channel(const json& body) {
        const std::string guild_id = string_field(body, "guild_id", "1");
        if (!guilds_.count(guild_id)) return control_error(404, "no guild " + guild_id);
        const std::string id = id_or_new(body);
        if (channels_.count(id)) return control_error(409, "channel " + id + " exists");
        Channel& channel = add_channel(guild_id, id, body.value("name", "channel-" + id), body.value("topic", ""));
        json created = channel_json(channel);
        dispatch_all("CHANNEL_CREATE", kIntentGuilds, [&](const Session&) -> const json& { return created; });
        return HttpResponse::json(200, created);
    }

    HttpResponse control_add_user(const json& body) {
        User user;
        user.id = id_or_new(body);
        if (users_.count(user.id)) return control_error(409, "user " + user.id + " exists");
        user.username = body.value("username", "user-" + user.id);
        user.global_name = body.value("global_name", "");
        user.bot = body.value("bot", false);
        users_[user.id] = user;
        return HttpResponse::json(200, user_json(user));
    }

    HttpResponse control_post_messages(const json& body) {
        const std::string author_id = string_field(body, "author_id", "2001");
        auto author = users_.find(author_id);
        if (author == users_.end()) return control_error(404, "no user " + author_id);
        Channel* channel = nullptr;
        if (body.value("dm", false)) {
            if (author_id == bot_.id) return control_error(400, "the bot has no DM with itself");
            channel = &dm_channel_for(author_id);
        } else {
            const std::string channel_id = string_field(body, "channel_id", "100");
            auto found = channels_.find(channel_id);
            if (found == channels_.end()) return control_error(404, "no channel " + channel_id);
            channel = &found->second;
        }
        const std::int64_t now_ms = unix_ms();
        std::optional<std::int64_t> at_ms;
        if (body.contains("timestamp")) at_ms = body["timestamp"].get<std::int64_t>();
        if (body.contains("age_ms")) at_ms = now_ms - body["age_ms"].get<std::int64_t>();
        if (at_ms && *at_ms > now_ms + 1000) return control_error(400, "timestamp is in the future");
        const std::int64_t interval = body.value("interval_ms", 0);
        const bool live = body.value("dispatch", true);
        json extra = json::object();
        if (body.contains("message_reference")) {  // a reply, as Discord shows one
            json reference = body["message_reference"];
            const std::string referenced_channel = string_field(reference, "channel_id", channel->id);
            reference["channel_id"] = referenced_channel;
            extra["message_reference"] = reference;
            extra["type"] = 19;
            const auto referenced_id = parse_snowflake(string_field(reference, "message_id"));
            if (auto target = channels_.find(referenced_channel); target != channels_.end() && referenced_id)
                if (auto it = target->second.messages.find(*referenced_id); it != target->second.messages.end())
                    extra["referenced_message"] = it->second;
        }

        auto next_id = [&](std::int64_t index) {
            return at_ms ? ids_.at(std::min(now_ms, *at_ms + index * interval)) : ids_.next();
        };
        if (!body.contains("count")) {
            const json message =
                create_message(*channel, author->second, body.value("content", ""), next_id(0), extra, live);
            return HttpResponse::json(200, message);
        }
        const std::int64_t count = body["count"].get<std::int64_t>();
        if (count < 1 || count > 1000000) return control_error(400, "count must be 1 to 1000000");
        const std::string prefix = body.value("content_prefix", "message ");
        json ids = json::array();
        for (std::int64_t i = 0; i < count; ++i) {
            const json message =
                create_message(*channel, author->second, prefix + std::to_string(i + 1), next_id(i), extra, live);
            ids.push_back(message["id"]);
        }
        return HttpResponse::json(200, {{"count", count},
                                        {"channel_id", channel->id},
                                        {"first_id", ids.front()},
                                        {"last_id", ids.back()},
                                        {"ids", ids}});
    }

    /// A user edits or deletes a stored message (MESSAGE_UPDATE with the whole new message, or MESSAGE_DELETE).
    HttpResponse control_change(const std::string& path, const json& body) {
        const std::string channel_id = string_field(body, "channel_id", "100");
        auto channel = channels_.find(channel_id);
        if (channel == channels_.end()) return control_error(404, "no channel " + channel_id);
        const auto id = parse_snowflake(string_field(body, "message_id"));
        auto message = id ? channel->second.messages.find(*id) : channel->second.messages.end();
        if (message == channel->second.messages.end()) return control_error(404, "no such message in " + channel_id);
        if (path == "/messages/delete") {
            delete_message(channel->second, message);
            return HttpResponse::json(200, {{"ok", true}});
        }
        json& stored = message->second;
        const std::string content = body.value("content", stored.value("content", ""));
        stored["content"] = content;
        stored["mentions"] = mentions_in(content);
        stored["mention_everyone"] = content.find("@everyone") != std::string::npos;
        stored["edited_timestamp"] = iso8601(unix_ms());
        if (body.value("dispatch", true)) dispatch_message("MESSAGE_UPDATE", channel->second, stored);
        return HttpResponse::json(200, stored);
    }

    HttpResponse control_history(const HttpRequest& request) const {
        const std::string channel_id = request.query_param("channel_id").value_or("100");
        auto found = channels_.find(channel_id);
        if (found == channels_.end()) return control_error(404, "no channel " + channel_id);
        json out = json::array();
        for (const auto& [id, message] : found->second.messages) out.push_back(message);
        return HttpResponse::json(200, {{"channel_id", channel_id}, {"messages", out}});
    }

    HttpResponse control_sent(const HttpRequest& request) const {
        const auto channel_id = request.query_param("channel_id");
        json messages = json::array();
        for (const auto& message : sent_)
            if (!channel_id || message["channel_id"] == *channel_id) messages.push_back(message);
        json deleted = json::array();
        for (const auto& deletion : deleted_)
            if (!channel_id || deletion["channel_id"] == *channel_id) deleted.push_back(deletion);
        return HttpResponse::json(200, {{"messages", messages}, {"deleted", deleted}});
    }

    json stats_json(bool with_log) {
        sweep_sessions();
        refresh_identify_window();
        json out = {{"identifies", stats_.identifies},
                    {"identify_remaining", identify_remaining_},
                    {"resumes", stats_.resumes},
                    {"resumes_refused", stats_.resumes_refused},
                    {"sessions", stats_.sessions},
                    {"sessions_live", sessions_.size()},
                    {"gateway_connections", stats_.gateway_connections},
                    {"gateway_open", connections_.size()},
                    {"heartbeats", stats_.heartbeats},
                    {"dispatches", stats_.dispatches},
                    {"replayed", stats_.replayed},
                    {"requests_total", stats_.requests_total},
                    {"requests", stats_.requests},
                    {"rate_limited", stats_.rate_limited},
                    {"rate_limited_global", stats_.rate_limited_global},
                    {"invalid_requests", stats_.invalid_requests},
                    {"requests_while_told_to_wait", stats_.requests_while_told_to_wait},
                    {"nonce_reuses", stats_.nonce_reuses},
                    {"request_log_dropped", stats_.request_log_dropped},
                    {"uptime_ms", std::chrono::duration_cast<Ms>(Clock::now() - started_).count()}};
        if (with_log) {
            out["request_log"] = json(stats_.request_log);
            out["gateway_events"] = stats_.gateway_events;
        }
        return out;
    }

    json config_json() const {
        json routes = json::object();
        for (const auto& [name, limit] : route_limits_)
            routes[name] = {{"limit", limit.limit}, {"window_ms", limit.window_ms}};
        return {{"heartbeat_interval_ms", options_.heartbeat_interval_ms},
                {"resume_timeout_ms", options_.resume_timeout_ms},
                {"reconnect_close_ms", options_.reconnect_close_ms},
                {"global_rate", options_.global_rate},
                {"route_limit", options_.route_limit},
                {"route_window_ms", options_.route_window_ms},
                {"routes", routes},
                {"gateway_rate", options_.gateway_rate},
                {"identify_budget", options_.identify_budget},
                {"identify_remaining", identify_remaining_},
                {"nonce_window_ms", options_.nonce_window_ms},
                {"message_content_allowed", options_.message_content_allowed},
                {"replay_buffer", options_.replay_buffer}};
    }

    HttpResponse control_config(const json& body) {
        auto set_int = [&](const char* key, int& target, int minimum) {
            if (!body.contains(key)) return true;
            const int value = body[key].get<int>();
            if (value < minimum) return false;
            target = value;
            return true;
        };
        if (!set_int("heartbeat_interval_ms", options_.heartbeat_interval_ms, 1) ||
            !set_int("resume_timeout_ms", options_.resume_timeout_ms, 0) ||
            !set_int("reconnect_close_ms", options_.reconnect_close_ms, 0) ||
            !set_int("global_rate", options_.global_rate, 0) || !set_int("route_limit", options_.route_limit, 1) ||
            !set_int("route_window_ms", options_.route_window_ms, 1) ||
            !set_int("gateway_rate", options_.gateway_rate, 1) ||
            !set_int("identify_budget", options_.identify_budget, 0) ||
            !set_int("nonce_window_ms", options_.nonce_window_ms, 0))
            return control_error(400, "a setting is out of range (see GET /_sandbox/config)");
        if (body.contains("identify_remaining")) identify_remaining_ = body["identify_remaining"].get<int>();
        if (body.contains("message_content_allowed"))
            options_.message_content_allowed = body["message_content_allowed"].get<bool>();
        if (body.contains("replay_buffer")) options_.replay_buffer = body["replay_buffer"].get<std::size_t>();
        if (body.contains("routes")) {
            for (const auto& [name, limit] : body["routes"].items()) {
                if (limit.is_null()) {
                    route_limits_.erase(name);
                    continue;
                }
                RouteLimit value{limit.value("limit", options_.route_limit),
                                 limit.value("window_ms", options_.route_window_ms)};
                if (value.limit < 1 || value.window_ms < 1) return control_error(400, "route limits must be >= 1");
                route_limits_[name] = value;
            }
        }
        buckets_.clear();  // new limits apply from a fresh window, with no wait pending
        global_count_ = 0;
        global_blocked_until_ = TimePoint{};
        return HttpResponse::json(200, config_json());
    }

    json sessions_json() {
        sweep_sessions();
        json out = json::array();
        const auto now = Clock::now();
        for (const auto& [id, session] : sessions_) {
            const auto connection = session->connection.lock();
            json entry = {{"session_id", id},
                          {"seq", session->seq},
                          {"intents", session->intents},
                          {"buffered", session->buffer.size()},
                          {"attached", static_cast<bool>(connection)}};
            if (connection) {
                entry["connection"] = connection->id;
                entry["silent"] = connection->silent;
            } else {
                entry["expires_in_ms"] = std::max<std::int64_t>(
                    0, options_.resume_timeout_ms - std::chrono::duration_cast<Ms>(now - session->detached_at).count());
            }
            out.push_back(entry);
        }
        return {{"sessions", out}, {"open_connections", connections_.size()}};
    }

    std::vector<std::shared_ptr<Connection>> targets(const json& body) const {
        const std::string session_id = string_field(body, "session_id");
        std::vector<std::shared_ptr<Connection>> out;
        for (const auto& [id, connection] : connections_) {
            if (connection->closing) continue;
            if (!session_id.empty() && (!connection->session || connection->session->id != session_id)) continue;
            out.push_back(connection);
        }
        return out;
    }

    HttpResponse control_gateway(const std::string& action, const json& body) {
        json affected = json::array();
        auto note = [&](const Connection& connection) {
            affected.push_back(connection.session ? json(connection.session->id) : json(nullptr));
        };
        if (action == "drop") {
            for (auto& connection : targets(body)) {
                note(*connection);
                server_drop(*connection);
            }
        } else if (action == "reconnect") {
            for (auto& connection : targets(body)) {
                note(*connection);
                gateway_event("op7", *connection);
                send_frame(*connection, {{"op", 7}, {"d", nullptr}, {"s", nullptr}, {"t", nullptr}});
                std::weak_ptr<Connection> weak = connection;
                connection->close_timer = loop_.after(Ms(options_.reconnect_close_ms), [this, weak] {
                    if (auto alive = weak.lock(); alive && alive->socket)
                        server_close(*alive, 4000, "Reconnect requested (op 7) and not followed.", true);
                });
            }
        } else if (action == "invalid_session") {
            const bool resumable = body.value("resumable", false);
            for (auto& connection : targets(body)) {
                note(*connection);
                gateway_event("op9", *connection, {{"resumable", resumable}});
                send_frame(*connection, {{"op", 9}, {"d", resumable}, {"s", nullptr}, {"t", nullptr}});
                if (!resumable && connection->session) {
                    sessions_.erase(connection->session->id);
                    connection->session.reset();
                }
            }
        } else if (action == "close") {
            const int code = body.value("code", 4000);
            if (code < 1000 || code > 4999) return control_error(400, "code must be 1000 to 4999");
            static const std::set<int> not_resumable = {4004, 4007, 4009, 4010, 4011, 4012, 4013, 4014};
            const bool resumable = body.value("resumable", not_resumable.count(code) == 0);
            for (auto& connection : targets(body)) {
                note(*connection);
                server_close(*connection, static_cast<std::uint16_t>(code), body.value("reason", "sandbox fault"),
                             resumable);
            }
        } else if (action == "heartbeat_acks") {
            const bool enabled = body.value("enabled", true);
            zombie_new_connections_ = !enabled && body.value("new_connections", false);
            for (auto& connection : targets(body)) {
                if (connection->silent == !enabled) continue;
                note(*connection);
                connection->silent = !enabled;
                gateway_event(enabled ? "awake" : "zombie", *connection);
                if (enabled) {
                    if (!connection->hello_sent) send_hello(*connection);
                    flush(*connection);
                }
            }
        } else if (action == "request_heartbeat") {
            for (auto& connection : targets(body)) {
                note(*connection);
                send_frame(*connection, {{"op", 1}, {"d", nullptr}, {"s", nullptr}, {"t", nullptr}});
            }
        } else if (action == "invalidate_sessions") {
            for (auto& connection : targets(json::object())) {
                if (!connection->session) continue;
                note(*connection);
                send_frame(*connection, {{"op", 9}, {"d", false}, {"s", nullptr}, {"t", nullptr}});
                connection->session.reset();
            }
            json dropped = json::array();
            for (const auto& [id, session] : sessions_) dropped.push_back(id);
            sessions_.clear();
            return HttpResponse::json(200, {{"affected", affected}, {"invalidated", dropped}});
        } else {
            return control_error(404, "no gateway fault '" + action + "'");
        }
        return HttpResponse::json(200, {{"affected", affected}, {"count", affected.size()}});
    }

    HttpResponse control_storm(const json& body) {
        Storm storm;
        storm.global = body.value("global", false) || body.value("scope", "") == "global";
        storm.route = body.value("route", "");
        storm.channel_id = string_field(body, "channel_id");
        storm.retry_after = body.value("retry_after", 1.0);
        if (storm.retry_after < 0) return control_error(400, "retry_after must be >= 0");
        if (body.contains("duration_ms")) storm.until = Clock::now() + Ms(body["duration_ms"].get<std::int64_t>());
        storm.remaining = body.contains("count") ? body["count"].get<int>() : (storm.until ? -1 : 1);
        storm_ = storm;
        return HttpResponse::json(200, {{"ok", true}, {"remaining", storm.remaining}});
    }

    HttpResponse control_delay(const json& body) {
        Delay delay;
        delay.ms = body.value("delay_ms", 0);
        delay.remaining = body.value("count", -1);
        if (body.contains("duration_ms")) delay.until = Clock::now() + Ms(body["duration_ms"].get<std::int64_t>());
        delay_ = delay;
        return HttpResponse::json(200, {{"ok", true}});
    }

    Loop& loop_;
    Options options_;
    std::uint16_t port_;
    TimePoint started_;
    std::string gateway_url_;
    std::mt19937_64 random_{std::random_device{}()};
    Snowflakes ids_;

    User bot_;
    std::map<std::string, User> users_;
    std::map<std::string, Guild> guilds_;
    std::map<std::string, Channel> channels_;
    std::map<std::string, std::string> dm_by_user_;
    std::vector<json> sent_;
    std::vector<json> deleted_;
    std::map<std::string, std::pair<TimePoint, json>> nonces_;

    std::uint64_t connection_counter_ = 0;
    std::map<std::uint64_t, std::shared_ptr<Connection>> connections_;
    std::map<std::string, std::shared_ptr<Session>> sessions_;
    bool zombie_new_connections_ = false;
    int identify_remaining_ = 0;
    std::int64_t identify_window_start_ms_ = 0;

    std::map<std::string, Bucket> buckets_;
    std::map<std::string, RouteLimit> route_limits_;
    int global_count_ = 0;
    TimePoint global_window_end_{};
    TimePoint global_blocked_until_{};
    Storm storm_;
    Delay delay_;
    Stats stats_;
};

void Connection::on_message(std::string_view data) { sandbox_.on_frame(*this, data); }

void Connection::on_closed(const WebSocketClosed& how) { sandbox_.on_socket_closed(*this, how); }

}  // namespace

std::unique_ptr<Service> make_service(Loop& loop, std::uint16_t port, Options options) {
    return std::make_unique<DiscordSandbox>(loop, port, std::move(options));
}

}  // namespace switchboard::sandbox::discord
