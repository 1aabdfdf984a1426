#include "redis_store.hpp"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <algorithm>
#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "redis_script.hpp"

namespace switchboard::stores {
namespace {

using SteadyClock = std::chrono::steady_clock;
using json = nlohmann::json;

[[noreturn]] void refuse(Error error) { throw ErrorException(std::move(error)); }

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string seconds_text(std::chrono::milliseconds duration) {
    const auto ms = duration.count();
    if (ms % 1000 == 0) return std::to_string(ms / 1000) + " s";
    return std::to_string(ms) + " ms";
}

timeval to_timeval(std::chrono::milliseconds duration) {
    timeval tv{};
    tv.tv_sec = static_cast<decltype(tv.tv_sec)>(duration.count() / 1000);
    tv.tv_usec = static_cast<decltype(tv.tv_usec)>((duration.count() % 1000) * 1000);
    return tv;
}

// Key parts (connection names, channel ids, spaces, plan ids) are escaped so that ':' only ever separates parts
// and no part holds a newline (the scripts split members at '\n'): '%', ':' and control bytes become %XX.
void append_part(std::string& out, std::string_view part) {
    static constexpr char kHex[] = "0123456789ABCDEF";
    for (const char c : part) {
        const auto byte = static_cast<unsigned char>(c);
        if (c == '%' || c == ':' || byte < 0x20 || byte == 0x7f) {
            out.push_back('%');
            out.push_back(kHex[byte >> 4]);
            out.push_back(kHex[byte & 0xf]);
        } else {
            out.push_back(c);
        }
    }
}

std::string part(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    append_part(out, text);
    return out;
}

std::string unpart(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '%' && i + 2 < text.size()) {
            unsigned value = 0;
            const auto [end, ec] = std::from_chars(text.data() + i + 1, text.data() + i + 3, value, 16);
            if (ec == std::errc{} && end == text.data() + i + 3) {
                out.push_back(static_cast<char>(value));
                i += 2;
                continue;
            }
        }
        out.push_back(text[i]);
    }
    return out;
}

// "<connection>:<channel>", both escaped: the suffix of a channel's keys.
std::string channel_pair(std::string_view connection, std::string_view channel) {
    std::string out;
    out.reserve(connection.size() + channel.size() + 1);
    append_part(out, connection);
    out.push_back(':');
    append_part(out, channel);
    return out;
}

std::optional<std::int64_t> parse_int(std::string_view text) {
    std::int64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return value;
}

std::optional<OutboxState> parse_outbox_state(std::string_view text) {
    for (const OutboxState state :
         {OutboxState::pending, OutboxState::sent, OutboxState::failed, OutboxState::withdrawn}) {
        if (to_string(state) == text) return state;
    }
    return std::nullopt;
}

// Values are MessagePack arrays (nlohmann/json): compact, and byte-exact for text that is not UTF-8.
std::string pack(const json& value) {
    std::string out;
    json::to_msgpack(value, out);
    return out;
}

json optional_json(const std::optional<std::string>& text) { return text ? json(*text) : json(nullptr); }

std::optional<std::string> optional_text(const json& value) {
    if (value.is_null()) return std::nullopt;
    return value.get<std::string>();
}

std::string message_blob(const Message& m) {
    return pack(json::array({m.id, m.connection, m.channel, m.author.id, m.author.display_name, m.author.is_bot, m.text,
                             m.timestamp_ms, to_string(m.kind), optional_json(m.reply_to), m.recovered, m.raw}));
}

Message parse_message_blob(std::string_view blob) {
    const json v = json::from_msgpack(blob);
    Message m;
    m.id = v.at(0).get<std::string>();
    m.connection = v.at(1).get<std::string>();
    m.channel = v.at(2).get<std::string>();
    m.author.id = v.at(3).get<std::string>();
    m.author.display_name = v.at(4).get<std::string>();
    m.author.is_bot = v.at(5).get<bool>();
    m.text = v.at(6).get<std::string>();
    m.timestamp_ms = v.at(7).get<std::int64_t>();
    m.kind = parse_message_kind(v.at(8).get<std::string>()).value_or(MessageKind::group);
    m.reply_to = optional_text(v.at(9));
    m.recovered = v.at(10).get<bool>();
    m.raw = v.at(11).get<std::string>();
    return m;
}

std::string outbox_content_blob(const OutboxEntry& entry) {
    return pack(json::array({entry.text, optional_json(entry.reply_to)}));
}

std::string outbox_state_blob(const OutboxEntry& entry) {
    return pack(json::array({to_string(entry.state), entry.sent_message_id, entry.attempts, entry.error}));
}

struct ReplyDeleter {
    void operator()(redisReply* reply) const noexcept { freeReplyObject(reply); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

struct ContextDeleter {
    void operator()(redisContext* context) const noexcept { redisFree(context); }
};
using Context = std::unique_ptr<redisContext, ContextDeleter>;

std::string_view text_of(const redisReply& reply) { return {reply.str, reply.len}; }

bool is_text(const redisReply* reply) {
    return reply != nullptr && (reply->type == REDIS_REPLY_STRING || reply->type == REDIS_REPLY_STATUS);
}

// One command: views of the caller's strings (which outlive the call), and strings it keeps itself. Each kept
// string has its own allocation, so the views stay valid when the command (or a vector of them) moves; a copy would
// point into the original, so there is none.
class Command {
public:
    Command() = default;
    Command(Command&&) noexcept = default;
    Command& operator=(Command&&) noexcept = default;
    Command(const Command&) = delete;
    Command& operator=(const Command&) = delete;

    Command& arg(std::string_view value) {
        argv_.push_back(value.empty() ? "" : value.data());
        lengths_.push_back(value.size());
        return *this;
    }
    Command& own(std::string value) {
        return arg(*owned_.emplace_back(std::make_unique<std::string>(std::move(value))));
    }
    Command& number(std::int64_t value) { return own(std::to_string(value)); }
    void replace(std::size_t index, std::string_view value) {
        argv_[index] = value.data();
        lengths_[index] = value.size();
    }
    [[nodiscard]] std::string_view at(std::size_t index) const { return {argv_[index], lengths_[index]}; }
    [[nodiscard]] int size() const { return static_cast<int>(argv_.size()); }
    [[nodiscard]] const char** argv() { return argv_.data(); }
    [[nodiscard]] const std::size_t* lengths() const { return lengths_.data(); }

private:
    std::vector<const char*> argv_;
    std::vector<std::size_t> lengths_;
    std::vector<std::unique_ptr<std::string>> owned_;
};

// The script's flat list for one key-value write: space, key, 's' (set) or 'd' (erase), value.
void add_write(json& items, const KeyValueWrite& write) {
    items.push_back(part(write.space));
    items.push_back(write.key);
    items.push_back(write.value ? "s" : "d");
    items.push_back(write.value ? *write.value : std::string());
}

// The script's flat list for one outbox entry: plan, recipient, created_ms, state, state blob, content blob.
void add_outbox_entry(json& items, const OutboxEntry& entry) {
    items.push_back(part(entry.plan_id));
    items.push_back(entry.recipient.to_string());
    items.push_back(std::to_string(entry.created_ms));
    items.push_back(to_string(entry.state));
    items.push_back(outbox_state_blob(entry));
    items.push_back(outbox_content_blob(entry));
}

}  // namespace

std::string RedisEndpoint::describe() const {
    const bool v6 = host.find(':') != std::string::npos;
    return "redis at " + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port) + "/" + std::to_string(database);
}

Result<RedisEndpoint> parse_redis_url(const std::string& url) {
    static const std::string kForm = "write redis://[:PASSWORD@]HOST[:PORT][/DB], e.g. redis://127.0.0.1:6379/0";
    auto parsed = boost::urls::parse_uri(url);
    // The URL may hold a password: no message repeats it.
    if (!parsed) return fail("bad_url", "not a URL (" + parsed.error().message() + "); " + kForm);
    const boost::urls::url_view& view = *parsed;
    std::string scheme(view.scheme());
    std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
    if (scheme == "rediss") {
        return fail("bad_url",
                    "rediss:// (TLS) is not available: this build uses Debian 12's hiredis 0.14, which has no TLS. "
                    "Use redis:// on a trusted network, or reach the server through a TLS tunnel (stunnel, spiped)");
    }
    if (scheme != "redis") return fail("bad_url", "the scheme must be redis://, not '" + scheme + "://'; " + kForm);
    RedisEndpoint endpoint;
    endpoint.host = std::string(view.host_address());
    if (endpoint.host.empty()) return fail("bad_url", "the URL names no host; " + kForm);
    if (view.has_port()) {
        const auto port = parse_int(view.port());
        if (!port || *port < 1 || *port > 65535) {
            return fail("bad_url", "the port '" + std::string(view.port()) + "' is not a number from 1 to 65535");
        }
        endpoint.port = static_cast<int>(*port);
    }
    if (view.has_userinfo()) {
        endpoint.username = std::string(view.user());
        endpoint.password = std::string(view.password());
        if (!view.has_password() && !endpoint.username.empty()) {
            // redis://secret@host: the one word is the password (what redis-cli -u does too).
            endpoint.password = std::move(endpoint.username);
            endpoint.username.clear();
        }
    }
    std::string path(view.path());
    while (!path.empty() && path.front() == '/') path.erase(path.begin());
    if (!path.empty()) {
        const auto database = parse_int(path);
        if (!database || *database < 0 || *database > std::numeric_limits<int>::max()) {
            return fail("bad_url", "the database '" + path +
                                       "' after the host is not a number (0 to 15 on a default "
                                       "redis-server); " +
                                       kForm);
        }
        endpoint.database = static_cast<int>(*database);
    }
    if (view.has_query() || view.has_fragment()) {
        return fail("bad_url", "the URL has a query or fragment, which the redis store does not read; " + kForm);
    }
    return endpoint;
}

struct RedisStore::Impl {
    Impl(RedisEndpoint where, RedisOptions settings, Logger* log)
        : endpoint(std::move(where)),
          options(std::move(settings)),
          server(endpoint.describe()),
          logger(log),
          window_text(std::to_string(options.dedup_window.count())) {
        options.pool_size = std::max<std::size_t>(1, options.pool_size);
        // The first connection loads the script and proves the server usable; its failure is the constructor's.
        auto context = acquire_waiting("connecting");
        if (!context) refuse(context.error());
        release(std::move(*context));
    }

    // ---- connections ----------------------------------------------------------------------------------------

    // A new connection: connect, AUTH, SELECT, SCRIPT LOAD. A retryable error means "the server is not there (yet)".
    Result<Context> connect() {
        Context context(
            redisConnectWithTimeout(endpoint.host.c_str(), endpoint.port, to_timeval(options.connect_timeout)));
        if (!context) return fail_retryable("store_unavailable", "hiredis could not allocate a connection");
        if (context->err != 0) return fail_retryable("store_unavailable", context->errstr);
        redisSetTimeout(context.get(), to_timeval(options.command_timeout));

        std::vector<Command> handshake;
        if (!endpoint.password.empty()) {
            Command& auth = handshake.emplace_back();
            auth.arg("AUTH");
            if (!endpoint.username.empty()) auth.arg(endpoint.username);
            auth.arg(endpoint.password);
        }
        handshake.emplace_back().arg("SELECT").number(endpoint.database);
        handshake.emplace_back().arg("SCRIPT").arg("LOAD").arg(redis_script::kSource);
        bool broken = false;
        auto replies = exchange(*context, handshake, broken);
        if (!replies) return replies.error();
        const redisReply* loaded = replies->back().get();
        if (!is_text(loaded)) return fail("store_error", "SCRIPT LOAD did not answer with the script's SHA1");
        std::lock_guard lock(mutex);
        if (sha.empty()) sha = std::string(text_of(*loaded));
        return context;
    }

    // Sends @p commands in one round trip and reads every reply. An I/O failure sets @p broken (the connection is
    // unusable) and is retryable; an error reply is mapped to an Error (retryable when the server is only busy).
    // A script call answered NOSCRIPT (the server restarted or flushed its scripts) is sent again as EVAL.
    Result<std::vector<Reply>> exchange(redisContext& context, std::vector<Command>& commands, bool& broken) {
        for (Command& command : commands) {
            redisAppendCommandArgv(&context, command.size(), command.argv(), command.lengths());
        }
        std::vector<Reply> replies;
        replies.reserve(commands.size());
        for (std::size_t i = 0; i < commands.size(); ++i) {
            void* raw = nullptr;
            if (redisGetReply(&context, &raw) != REDIS_OK || raw == nullptr) {
                broken = true;
                return io_failure(context);
            }
            replies.emplace_back(static_cast<redisReply*>(raw));
        }
        for (std::size_t i = 0; i < commands.size(); ++i) {
            const redisReply& reply = *replies[i];
            if (reply.type != REDIS_REPLY_ERROR) continue;
            if (text_of(reply).starts_with("NOSCRIPT") && commands[i].at(0) == "EVALSHA") {
                commands[i].replace(0, "EVAL");
                commands[i].replace(1, redis_script::kSource);
                void* raw = redisCommandArgv(&context, commands[i].size(), commands[i].argv(), commands[i].lengths());
                if (raw == nullptr) {
                    broken = true;
                    return io_failure(context);
                }
                replies[i].reset(static_cast<redisReply*>(raw));
                if (replies[i]->type != REDIS_REPLY_ERROR) continue;
            }
            return reply_error(text_of(*replies[i]));
        }
        return replies;
    }

    static Error io_failure(const redisContext& context) {
        std::string why = context.err != 0 ? context.errstr : "no reply";
        if (context.err == REDIS_ERR_IO &&
            (why.find("temporarily unavailable") != std::string::npos || why.find("timed out") != std::string::npos)) {
            why = "no answer within command_timeout (" + why + ")";
        }
        if (context.err == REDIS_ERR_EOF) why = "the server closed the connection";
        return fail_retryable("store_unavailable", why);
    }

    Error reply_error(std::string_view text) const {
        const std::string said(text);
        const auto starts = [&](std::string_view word) { return text.starts_with(word); };
        if (starts("WRONGPASS") || said.find("invalid password") != std::string::npos ||
            said.find("invalid username-password") != std::string::npos) {
            return fail("store_auth_failed",
                        server + " refused the password (" + said +
                            "); correct the password in store.url (redis://:PASSWORD@host:port/db)");
        }
        if (said.find("without any password configured") != std::string::npos) {
            return fail("store_auth_failed", server + " has no password set, but store.url gives one (" + said +
                                                 "); remove it from store.url or set requirepass on the server");
        }
        if (starts("NOAUTH")) {
            return fail("store_auth_failed", server + " requires a password (" + said +
                                                 "); put it in store.url as redis://:PASSWORD@host:port/db");
        }
        if (said.find("DB index is out of range") != std::string::npos) {
            return fail("store_bad_database", server + " has no database " + std::to_string(endpoint.database) + " (" +
                                                  said + "); choose one the server has in store.url");
        }
        if (starts("BUSYGROUP")) return fail("store_group_exists", said);  // not BUSY: XGROUP CREATE said "exists"
        if (starts("LOADING") || starts("BUSY") || starts("TRYAGAIN") || starts("MASTERDOWN")) {
            return fail_retryable("store_unavailable", server + " is not ready (" + said + ")", 100);
        }
        if (starts("LEASE_LOST")) {
            const std::string connection = unpart(text.substr(std::min<std::size_t>(text.size(), 11)));
            return fail("lease_lost", "this host no longer holds the lease of connection '" + connection +
                                          "' in " + server +
                                          " (another host took it over, or it lapsed): the write was refused");
        }
        if (starts("READONLY")) {
            return fail("store_read_only",
                        server + " is a read-only replica (" + said + "); point store.url at the primary");
        }
        if (starts("OOM")) {
            return fail_retryable(
                "store_full", server + " is out of memory (" + said + "); raise maxmemory or free memory on the server",
                5000);
        }
        return fail("store_error", server + " answered an error: " + said);
    }

    // A connection from the pool, or a new one while the pool has room; waits for one otherwise.
    Result<Context> acquire() {
        {
            std::unique_lock lock(mutex);
            available.wait(lock, [&] { return !idle.empty() || open < options.pool_size; });
            if (!idle.empty()) {
                Context context = std::move(idle.back());
                idle.pop_back();
                return context;
            }
            ++open;
        }
        auto context = connect();
        if (!context) drop(nullptr);
        return context;
    }

    void release(Context context) {
        std::lock_guard lock(mutex);
        idle.push_back(std::move(context));
        available.notify_one();
    }

    void drop(Context context) {
        context.reset();
        std::lock_guard lock(mutex);
        --open;
        available.notify_one();
    }

    // Waits (with backoff) until it has a connection or reconnect_timeout passed.
    Result<Context> acquire_waiting(std::string_view what) {
        Retry retry(*this, what);
        for (;;) {
            auto context = acquire();
            if (context) return context;
            if (auto stop = retry.after(context.error())) return *stop;
        }
    }

    // The backoff of one call: 50 ms doubling to 1 s, until reconnect_timeout since the call began.
    class Retry {
    public:
        Retry(Impl& impl, std::string_view what)
            : impl_(impl), what_(what), deadline_(SteadyClock::now() + impl.options.reconnect_timeout) {}

        // Given the attempt's error: nullopt after sleeping (try again), or the error to return.
        std::optional<Error> after(const Error& error) {
            if (!error.retryable) return with_context(error);
            if (SteadyClock::now() >= deadline_) {
                return fail_retryable(
                    "store_unavailable",
                    impl_.server + " did not answer for " + seconds_text(impl_.options.reconnect_timeout) + " while " +
                        std::string(what_) + " (last: " + error.message +
                        "). Is redis-server running, and is store.url right? Nothing was written by this call; "
                        "the host keeps its messages and tries again.",
                    1000);
            }
            if (!warned_ && impl_.logger != nullptr) {
                impl_.logger->warn("redis store: " + impl_.server + " failed while " + std::string(what_) + " (" +
                                   error.message + "); reconnecting for up to " +
                                   seconds_text(impl_.options.reconnect_timeout));
            }
            warned_ = true;
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - SteadyClock::now());
            std::this_thread::sleep_for(std::min(delay_, std::max(left, std::chrono::milliseconds(1))));
            delay_ = std::min(delay_ * 2, std::chrono::milliseconds(1000));
            return std::nullopt;
        }

    private:
        Error with_context(Error error) const {
            if (error.message.find(impl_.server) == std::string::npos) {
                error.message = impl_.server + " failed while " + std::string(what_) + ": " + error.message;
            }
            return error;
        }

        Impl& impl_;
        std::string_view what_;
        SteadyClock::time_point deadline_;
        std::chrono::milliseconds delay_{50};
        bool warned_ = false;
    };

    // Runs @p commands in one round trip on a pooled connection, reconnecting and resending while the server is
    // away (every operation of this store may be sent twice: a commit skips what it already recorded).
    Result<std::vector<Reply>> run(std::string_view what, std::vector<Command>& commands) {
        Retry retry(*this, what);
        for (;;) {
            auto context = acquire();
            if (context) {
                bool broken = false;
                auto replies = exchange(**context, commands, broken);
                if (broken) {
                    drop(std::move(*context));
                } else {
                    release(std::move(*context));
                }
                if (replies) return replies;
                if (auto stop = retry.after(replies.error())) return *stop;
            } else if (auto stop = retry.after(context.error())) {
                return *stop;
            }
        }
    }

    Result<Reply> run_one(std::string_view what, Command command) {
        std::vector<Command> commands;
        commands.push_back(std::move(command));
        auto replies = run(what, commands);
        if (!replies) return replies.error();
        return std::move(replies->front());
    }

    // EVALSHA <sha> 0 <operation> <prefix> <fence>: the start of every script call. The fence lists the leases
    // (of @p connections, escaped) this store holds, which the script checks before it writes anything.
    Command script(std::string_view operation, std::span<const std::string> connections = {}) {
        Command call;
        json fence = json::array();
        {
            std::lock_guard lock(mutex);
            call.arg("EVALSHA").own(sha);
            for (const std::string& connection : connections) {
                if (auto held = leases.find(connection); held != leases.end()) {
                    fence.push_back(connection);
                    fence.push_back(held->second);
                }
            }
        }
        call.arg("0").arg(operation).arg(options.prefix);
        if (fence.empty()) {
            call.arg("");
        } else {
            call.own(pack(fence));
        }
        return call;
    }

    Error corrupt(std::string what) const {
        return fail("store_corrupt", server + " holds " + what + " under prefix '" + options.prefix +
                                         "' that this store cannot read; was the prefix used by something else?");
    }

    std::string key(std::string_view kind, std::string_view suffix) const {
        std::string out;
        out.reserve(options.prefix.size() + kind.size() + suffix.size() + 1);
        out.append(options.prefix).append(kind).push_back(':');
        out.append(suffix);
        return out;
    }

    const RedisEndpoint endpoint;
    RedisOptions options;
    const std::string server;
    Logger* const logger;
    const std::string window_text;

    std::mutex mutex;
    std::condition_variable available;
    std::vector<Context> idle;
    std::size_t open = 0;
    std::string sha;  // of the script, from the first SCRIPT LOAD
    // Escaped connection → "<token> <holder>" of every lease this store acquired, kept after it is lost or given up:
    // writes for those connections stay fenced until the lease is acquired again.
    std::map<std::string, std::string> leases;
    // (stream key, group) pairs this store has made sure exist.
    std::set<std::pair<std::string, std::string>> groups;
};

const ConfigSchema& RedisStore::config_schema() {
    static const ConfigSchema schema{{
        ConfigKey{"url", ValueType::string, false, kDefaultUrl,
                  "The server: redis://[:PASSWORD@]HOST[:PORT][/DB] (write the password as ${REDIS_PASSWORD}). "
                  "rediss:// (TLS) is not available with Debian 12's hiredis."},
        ConfigKey{"prefix", ValueType::string, false,
                  "switchboard:", "Prepended to every key, so that several deployments can share one database."},
        ConfigKey{"dedup_window", ValueType::duration, false, "14d",
                  "How long processed message ids and logged messages are kept, from the message's timestamp; "
                  "Redis forgets them by itself after that."},
        ConfigKey{"message_log", ValueType::boolean, false, "true",
                  "Keep every processed message in the message log (what bots read back by channel and time)."},
        ConfigKey{"connect_timeout", ValueType::duration, false, "2s", "Limit for one TCP connect to the server."},
        ConfigKey{"command_timeout", ValueType::duration, false, "5s",
                  "Limit for one reply; a server silent for longer is taken for lost and reconnected to."},
        ConfigKey{"reconnect_timeout", ValueType::duration, false, "10s",
                  "How long a store call waits for a lost server (reconnecting with backoff) before it fails; the "
                  "host keeps its messages and tries again."},
        ConfigKey{"pool_size", ValueType::integer, false, "4",
                  "Connections at most, used by the host's workers in "
                  "parallel."},
    }};
    return schema;
}

std::vector<ConfigProblem> RedisStore::check_config(const PluginConfig& config) {
    std::vector<ConfigProblem> problems;
    if (auto endpoint = parse_redis_url(config.get_string("url", kDefaultUrl)); !endpoint) {
        problems.push_back({"url", endpoint.error().message});
    }
    for (const char* key : {"dedup_window", "connect_timeout", "command_timeout", "reconnect_timeout"}) {
        if (config.has(key) && config.get_int(key, 1) <= 0) {
            problems.push_back({key, std::string(key) + " must be longer than zero"});
        }
    }
    if (config.get_int("pool_size", 4) < 1) problems.push_back({"pool_size", "pool_size must be at least 1"});
    return problems;
}

namespace {

RedisOptions options_from(const PluginConfig& config) {
    if (auto problems = RedisStore::check_config(config); !problems.empty()) {
        refuse(fail("config_invalid", "store." + problems.front().key + ": " + problems.front().message));
    }
    RedisOptions options;
    options.prefix = config.get_string("prefix", options.prefix);
    options.dedup_window = std::chrono::milliseconds(config.get_int("dedup_window", options.dedup_window.count()));
    options.message_log = config.get_bool("message_log", true);
    options.connect_timeout = std::chrono::milliseconds(config.get_int("connect_timeout", 2000));
    options.command_timeout = std::chrono::milliseconds(config.get_int("command_timeout", 5000));
    options.reconnect_timeout = std::chrono::milliseconds(config.get_int("reconnect_timeout", 10000));
    options.pool_size = static_cast<std::size_t>(config.get_int("pool_size", 4));
    return options;
}

RedisEndpoint endpoint_from(const std::string& url, const char* setting) {
    auto endpoint = parse_redis_url(url);
    if (!endpoint) refuse(fail("config_invalid", std::string(setting) + ": " + endpoint.error().message));
    return *endpoint;
}

}  // namespace

RedisStore::RedisStore(const PluginContext& context, const PluginConfig& config) {
    RedisOptions options = options_from(config);
    impl_ = std::make_unique<Impl>(endpoint_from(config.get_string("url", kDefaultUrl), "store.url"),
                                   std::move(options), &context.logger());
    context.logger().info("redis store open: " + impl_->server + ", key prefix '" + impl_->options.prefix + "'");
}

RedisStore::RedisStore(const std::string& url, RedisOptions options)
    : impl_(std::make_unique<Impl>(endpoint_from(url, "url"), std::move(options), nullptr)) {}

RedisStore::~RedisStore() = default;

std::string RedisStore::server() const { return impl_->server; }

Result<bool> RedisStore::is_processed(const MessageKey& key) {
    Command command;
    command.arg("ZSCORE").own(impl_->key("seen", channel_pair(key.connection, key.channel))).arg(key.message_id);
    auto reply = impl_->run_one("checking the dedup ledger", std::move(command));
    if (!reply) return reply.error();
    if ((*reply)->type == REDIS_REPLY_NIL) return false;
    if (!is_text(reply->get())) return impl_->corrupt("a dedup entry");
    // Entries past the window count as gone even before a commit trims them.
    const double timestamp = std::strtod(std::string(text_of(**reply)).c_str(), nullptr);
    return timestamp >= static_cast<double>(now_ms() - impl_->options.dedup_window.count());
}

Result<std::vector<bool>> RedisStore::are_processed(std::span<const Message> messages) {
    std::vector<bool> seen(messages.size());
    if (messages.empty()) return seen;
    // One ZMSCORE per channel, all of them in one round trip.
    std::vector<Command> commands;
    std::vector<std::vector<std::size_t>> asked;  // per command: the messages it asks for, in argument order
    std::unordered_map<std::string, std::size_t> by_channel;
    for (std::size_t i = 0; i < messages.size(); ++i) {
        const Message& message = messages[i];
        auto [it, added] = by_channel.try_emplace(channel_pair(message.connection, message.channel), commands.size());
        if (added) {
            commands.emplace_back().arg("ZMSCORE").own(impl_->key("seen", it->first));
            asked.emplace_back();
        }
        commands[it->second].arg(message.id);
        asked[it->second].push_back(i);
    }
    auto replies = impl_->run("checking the dedup ledger", commands);
    if (!replies) return replies.error();
    // Entries past the window count as gone even before a commit trims them.
    const auto oldest = static_cast<double>(now_ms() - impl_->options.dedup_window.count());
    for (std::size_t c = 0; c < commands.size(); ++c) {
        const redisReply& list = *(*replies)[c];
        if (list.type != REDIS_REPLY_ARRAY || list.elements != asked[c].size()) {
            return impl_->corrupt("the dedup ledger's answer");
        }
        for (std::size_t k = 0; k < list.elements; ++k) {
            const redisReply* score = list.element[k];
            if (score->type == REDIS_REPLY_NIL) continue;
            if (!is_text(score)) return impl_->corrupt("a dedup entry");
            seen[asked[c][k]] = std::strtod(std::string(text_of(*score)).c_str(), nullptr) >= oldest;
        }
    }
    return seen;
}

Result<void> RedisStore::commit(std::span<const ProcessedMessage> batch) {
    if (batch.empty()) return {};
    Impl& s = *impl_;
    json messages = json::array();
    messages.get_ref<json::array_t&>().reserve(batch.size());
    for (const ProcessedMessage& item : batch) {
        const Message& message = item.message;
        // Built in place: an initializer list would copy every string once more.
        json& packed = messages.emplace_back(json::array());
        auto& fields = packed.get_ref<json::array_t&>();
        fields.reserve(8);
        fields.emplace_back(channel_pair(message.connection, message.channel));
        fields.emplace_back(part(message.connection));
        fields.emplace_back(message.channel);
        fields.emplace_back(message.id);
        fields.emplace_back(std::to_string(message.timestamp_ms));
        fields.emplace_back(s.options.message_log ? message_blob(message) : std::string());
        json& writes = fields.emplace_back(json::array());
        for (const KeyValueWrite& write : item.writes) add_write(writes, write);
        json& entries = fields.emplace_back(json::array());
        for (const OutboxEntry& entry : item.outbox) add_outbox_entry(entries, entry);
    }
    std::vector<std::string> connections;
    for (const ProcessedMessage& item : batch) {
        std::string connection = part(item.message.connection);
        if (std::find(connections.begin(), connections.end(), connection) == connections.end()) {
            connections.push_back(std::move(connection));
        }
    }
    Command command = s.script("commit", connections);
    command.number(now_ms()).arg(s.window_text).arg(s.options.message_log ? "1" : "0").own(pack(messages));
    auto reply =
        s.run_one("committing a batch of " + std::to_string(batch.size()) + " processed messages", std::move(command));
    if (!reply) return reply.error();
    return {};
}

namespace {

std::optional<Cursor> parse_cursor(std::string_view text) {
    const auto space = text.find(' ');
    if (space == std::string_view::npos) return std::nullopt;
    const auto timestamp = parse_int(text.substr(0, space));
    if (!timestamp) return std::nullopt;
    return Cursor{std::string(text.substr(space + 1)), *timestamp};
}

}  // namespace

Result<std::optional<Cursor>> RedisStore::cursor(const std::string& connection, const std::string& channel) {
    Command command;
    command.arg("HGET").own(impl_->key("cursors", part(connection))).arg(channel);
    auto reply = impl_->run_one("reading a cursor", std::move(command));
    if (!reply) return reply.error();
    if ((*reply)->type == REDIS_REPLY_NIL) return std::optional<Cursor>{};
    auto parsed = is_text(reply->get()) ? parse_cursor(text_of(**reply)) : std::nullopt;
    if (!parsed) return impl_->corrupt("a cursor of '" + connection + "' / '" + channel + "'");
    return std::optional<Cursor>{std::move(*parsed)};
}

Result<std::vector<ChannelCursor>> RedisStore::cursors(const std::string& connection) {
    Command command = impl_->script("cursors");
    command.own(part(connection));
    auto reply = impl_->run_one("listing cursors", std::move(command));
    if (!reply) return reply.error();
    const redisReply& list = **reply;
    if (list.type != REDIS_REPLY_ARRAY || list.elements % 3 != 0) return impl_->corrupt("the cursors");
    std::vector<ChannelCursor> result;
    for (std::size_t i = 0; i < list.elements; i += 3) {
        auto parsed = is_text(list.element[i + 2]) ? parse_cursor(text_of(*list.element[i + 2])) : std::nullopt;
        if (!parsed || !is_text(list.element[i]) || !is_text(list.element[i + 1])) return impl_->corrupt("a cursor");
        result.push_back(ChannelCursor{unpart(text_of(*list.element[i])), std::string(text_of(*list.element[i + 1])),
                                       std::move(*parsed)});
    }
    std::sort(result.begin(), result.end(), [](const ChannelCursor& a, const ChannelCursor& b) {
        return std::tie(a.connection, a.channel) < std::tie(b.connection, b.channel);
    });
    return result;
}

Result<void> RedisStore::put_connection_state(const std::string& connection, const std::string& key,
                                              const std::string& value) {
    const std::string escaped = part(connection);
    Command command = impl_->script("state", std::span(&escaped, 1));
    command.arg(escaped).arg(key).arg(value);
    auto reply = impl_->run_one("storing connection state", std::move(command));
    if (!reply) return reply.error();
    return {};
}

namespace {

Result<std::optional<std::string>> optional_reply(Result<Reply> reply) {
    if (!reply) return reply.error();
    if ((*reply)->type == REDIS_REPLY_NIL) return std::optional<std::string>{};
    return std::optional<std::string>{std::string(text_of(**reply))};
}

}  // namespace

Result<std::optional<std::string>> RedisStore::connection_state(const std::string& connection, const std::string& key) {
    Command command;
    command.arg("HGET").own(impl_->key("state", part(connection))).arg(key);
    return optional_reply(impl_->run_one("reading connection state", std::move(command)));
}

Result<std::optional<std::string>> RedisStore::get_value(const std::string& space, const std::string& key) {
    Command command;
    command.arg("HGET").own(impl_->key("kv", part(space))).arg(key);
    return optional_reply(impl_->run_one("reading a key-value entry", std::move(command)));
}

Result<void> RedisStore::put_values(std::span<const KeyValueWrite> writes) {
    if (writes.empty()) return {};
    json items = json::array();
    for (const KeyValueWrite& write : writes) add_write(items, write);
    Command command = impl_->script("values");
    command.own(pack(items));
    auto reply = impl_->run_one("writing key-value entries", std::move(command));
    if (!reply) return reply.error();
    return {};
}

Result<void> RedisStore::outbox_add(std::span<const OutboxEntry> entries) {
    if (entries.empty()) return {};
    json items = json::array();
    for (const OutboxEntry& entry : entries) add_outbox_entry(items, entry);
    Command command = impl_->script("outbox_add");
    command.own(pack(items));
    auto reply = impl_->run_one("adding outbox entries", std::move(command));
    if (!reply) return reply.error();
    return {};
}

Result<void> RedisStore::outbox_update(std::span<const OutboxEntry> entries) {
    if (entries.empty()) return {};
    json items = json::array();
    for (const OutboxEntry& entry : entries) {
        items.push_back(part(entry.plan_id));
        items.push_back(entry.recipient.to_string());
        items.push_back(to_string(entry.state));
        items.push_back(outbox_state_blob(entry));
    }
    Command command = impl_->script("outbox_update");
    command.own(pack(items));
    auto reply = impl_->run_one("updating outbox entries", std::move(command));
    if (!reply) return reply.error();
    if ((*reply)->type != REDIS_REPLY_INTEGER) return impl_->corrupt("an outbox update's answer");
    const long long missing = (*reply)->integer;
    if (missing > 0 && static_cast<std::size_t>(missing) <= entries.size()) {
        const OutboxEntry& entry = entries[static_cast<std::size_t>(missing - 1)];
        return fail("outbox_entry_not_found", "no outbox entry for plan '" + entry.plan_id + "' and recipient '" +
                                                  entry.recipient.to_string() + "' in " + impl_->server +
                                                  "; add it with outbox_add first");
    }
    return {};
}

namespace {

// An entry from its plan, recipient, content ("<seq:16 hex><created_ms>\n<msgpack>") and state blob; nullopt if
// any part does not read.
std::optional<OutboxEntry> parse_outbox_entry(std::string plan_id, std::string_view recipient, std::string_view content,
                                              std::string_view state) {
    const auto newline = content.find('\n', 16);
    if (content.size() < 17 || newline == std::string_view::npos) return std::nullopt;
    auto address = Address::parse(recipient);
    auto created = parse_int(content.substr(16, newline - 16));
    if (!address || !created) return std::nullopt;
    try {
        const json body = json::from_msgpack(content.substr(newline + 1));
        const json status = json::from_msgpack(state);
        const auto parsed_state = parse_outbox_state(status.at(0).get<std::string>());
        if (!parsed_state) return std::nullopt;
        OutboxEntry entry;
        entry.plan_id = std::move(plan_id);
        entry.recipient = std::move(*address);
        entry.text = body.at(0).get<std::string>();
        entry.reply_to = optional_text(body.at(1));
        entry.state = *parsed_state;
        entry.sent_message_id = status.at(1).get<std::string>();
        entry.attempts = status.at(2).get<std::int32_t>();
        entry.error = status.at(3).get<std::string>();
        entry.created_ms = *created;
        return entry;
    } catch (const json::exception&) {
        return std::nullopt;
    }
}

}  // namespace

Result<std::vector<OutboxEntry>> RedisStore::outbox_pending() {
    auto reply = impl_->run_one("listing pending outbox entries", impl_->script("outbox_pending"));
    if (!reply) return reply.error();
    const redisReply& list = **reply;
    if (list.type != REDIS_REPLY_ARRAY || list.elements % 4 != 0) return impl_->corrupt("the pending outbox");
    std::vector<OutboxEntry> result;
    result.reserve(list.elements / 4);
    for (std::size_t i = 0; i < list.elements; i += 4) {
        const bool readable = is_text(list.element[i]) && is_text(list.element[i + 1]) &&
                              is_text(list.element[i + 2]) && is_text(list.element[i + 3]);
        auto entry = readable ? parse_outbox_entry(unpart(text_of(*list.element[i])), text_of(*list.element[i + 1]),
                                                   text_of(*list.element[i + 2]), text_of(*list.element[i + 3]))
                              : std::nullopt;
        if (!entry) return impl_->corrupt("a pending outbox entry");
        result.push_back(std::move(*entry));
    }
    return result;
}

Result<std::vector<OutboxEntry>> RedisStore::outbox_plan(const std::string& plan_id) {
    Command command = impl_->script("outbox_plan");
    command.own(part(plan_id));
    auto reply = impl_->run_one("reading a plan's outbox entries", std::move(command));
    if (!reply) return reply.error();
    const redisReply& both = **reply;
    if (both.type != REDIS_REPLY_ARRAY || both.elements != 2 || both.element[0]->type != REDIS_REPLY_ARRAY ||
        both.element[1]->type != REDIS_REPLY_ARRAY) {
        return impl_->corrupt("the outbox of plan '" + plan_id + "'");
    }
    const redisReply& contents = *both.element[0];
    const redisReply& states = *both.element[1];
    std::unordered_map<std::string_view, std::string_view> state_of;
    for (std::size_t i = 0; i + 1 < states.elements; i += 2) {
        state_of.emplace(text_of(*states.element[i]), text_of(*states.element[i + 1]));
    }
    std::vector<std::pair<std::string_view, OutboxEntry>> found;  // by sequence: the order they were added in
    for (std::size_t i = 0; i + 1 < contents.elements; i += 2) {
        const std::string_view recipient = text_of(*contents.element[i]);
        const std::string_view content = text_of(*contents.element[i + 1]);
        const auto state = state_of.find(recipient);
        auto entry =
            state == state_of.end() ? std::nullopt : parse_outbox_entry(plan_id, recipient, content, state->second);
        if (!entry) return impl_->corrupt("an outbox entry of plan '" + plan_id + "'");
        found.emplace_back(content.substr(0, 16), std::move(*entry));
    }
    std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<OutboxEntry> result;
    result.reserve(found.size());
    for (auto& [sequence, entry] : found) result.push_back(std::move(entry));
    return result;
}

Result<std::vector<Message>> RedisStore::messages(const std::string& connection, const std::string& channel,
                                                  std::int64_t from_ms, std::int64_t to_ms, std::size_t limit) {
    std::vector<Message> result;
    if (limit == 0 || from_ms >= to_ms) return result;
    const std::int64_t cutoff = now_ms() - impl_->options.dedup_window.count();  // not yet trimmed, but gone
    Command command;
    command.arg("ZRANGEBYSCORE")
        .own(impl_->key("log", channel_pair(connection, channel)))
        .number(std::max(from_ms, cutoff))
        .own("(" + std::to_string(to_ms))
        .arg("LIMIT")
        .arg("0")
        .number(static_cast<std::int64_t>(std::min<std::size_t>(limit, std::numeric_limits<std::int64_t>::max())));
    auto reply = impl_->run_one("reading the message log", std::move(command));
    if (!reply) return reply.error();
    const redisReply& list = **reply;
    if (list.type != REDIS_REPLY_ARRAY)
        return impl_->corrupt("the message log of '" + connection + "' / '" + channel + "'");
    result.reserve(list.elements);
    for (std::size_t i = 0; i < list.elements; ++i) {
        const std::string_view member = is_text(list.element[i]) ? text_of(*list.element[i]) : std::string_view{};
        try {
            if (member.size() <= 16) throw std::out_of_range("short");
            result.push_back(parse_message_blob(member.substr(16)));
        } catch (const std::exception&) {
            return impl_->corrupt("a logged message of '" + connection + "' / '" + channel + "'");
        }
    }
    return result;
}

Result<std::size_t> RedisStore::prune(std::int64_t before_ms) {
    // Script calls, each bounded (10,000 outbox entries, 1,000 keys of the backfill scan) so that the server serves
    // other clients between them, until one removes fewer than 10,000 outbox entries with the backfill done.
    constexpr long long kOutboxPerCall = 10'000;
    std::size_t removed = 0;
    for (bool first = true;; first = false) {
        Command command = impl_->script("prune");
        command.number(now_ms())
            .arg(impl_->window_text)
            .number(before_ms)
            .arg(first ? "all" : "outbox")
            .number(kOutboxPerCall);
        auto reply = impl_->run_one("pruning old entries", std::move(command));
        if (!reply) return reply.error();
        const redisReply& answer = **reply;
        if (answer.type != REDIS_REPLY_ARRAY || answer.elements != 3) return impl_->corrupt("prune's answer");
        for (std::size_t i = 0; i < 3; ++i) {
            if (answer.element[i]->type != REDIS_REPLY_INTEGER) return impl_->corrupt("prune's answer");
        }
        removed += static_cast<std::size_t>(answer.element[0]->integer);
        if (answer.element[1]->integer < kOutboxPerCall && answer.element[2]->integer == 1) return removed;
    }
}

// ---- leases ---------------------------------------------------------------------------------------------------

namespace {

// A lease from its stored value "<token> <holder>" and remaining time.
std::optional<Lease> parse_lease(const std::string& connection, std::string_view value, long long remaining_ms) {
    const auto space = value.find(' ');
    if (space == std::string_view::npos) return std::nullopt;
    const auto token = parse_int(value.substr(0, space));
    if (!token || *token <= 0) return std::nullopt;
    return Lease{connection, std::string(value.substr(space + 1)), static_cast<std::uint64_t>(*token),
                 std::max<long long>(0, remaining_ms)};
}

std::string lease_value(const Lease& lease) { return std::to_string(lease.token) + " " + lease.holder; }

}  // namespace

LeaseStore* RedisStore::leases() noexcept { return this; }

Result<std::optional<Lease>> RedisStore::acquire(const std::string& connection, const std::string& holder,
                                                 std::chrono::milliseconds ttl) {
    if (holder.empty()) return fail("invalid_argument", "a lease needs a holder id");
    const std::string escaped = part(connection);
    Command command = impl_->script("lease_acquire");
    command.arg(escaped).arg(holder).number(std::max<std::int64_t>(1, ttl.count()));
    auto reply = impl_->run_one("acquiring the lease of '" + connection + "'", std::move(command));
    if (!reply) return reply.error();
    const redisReply& answer = **reply;
    if (answer.type != REDIS_REPLY_ARRAY || answer.elements != 3 || answer.element[0]->type != REDIS_REPLY_INTEGER ||
        !is_text(answer.element[1]) || answer.element[2]->type != REDIS_REPLY_INTEGER) {
        return impl_->corrupt("the lease of '" + connection + "'");
    }
    auto lease = parse_lease(connection, text_of(*answer.element[1]), answer.element[2]->integer);
    if (!lease) return impl_->corrupt("the lease of '" + connection + "'");
    if (answer.element[0]->integer != 1) return std::optional<Lease>{};
    std::lock_guard lock(impl_->mutex);
    impl_->leases[escaped] = lease_value(*lease);
    return std::optional<Lease>{std::move(*lease)};
}

Result<bool> RedisStore::renew(const Lease& lease, std::chrono::milliseconds ttl) {
    Command command = impl_->script("lease_renew");
    command.own(part(lease.connection)).own(lease_value(lease)).number(std::max<std::int64_t>(1, ttl.count()));
    auto reply = impl_->run_one("renewing the lease of '" + lease.connection + "'", std::move(command));
    if (!reply) return reply.error();
    if ((*reply)->type != REDIS_REPLY_INTEGER) return impl_->corrupt("a lease renewal's answer");
    return (*reply)->integer == 1;
}

Result<void> RedisStore::release(const Lease& lease) {
    Command command = impl_->script("lease_release");
    command.own(part(lease.connection)).own(lease_value(lease));
    auto reply = impl_->run_one("giving up the lease of '" + lease.connection + "'", std::move(command));
    if (!reply) return reply.error();
    return {};
}

Result<std::optional<Lease>> RedisStore::holder(const std::string& connection) {
    Command command = impl_->script("lease_holder");
    command.own(part(connection));
    auto reply = impl_->run_one("reading the lease of '" + connection + "'", std::move(command));
    if (!reply) return reply.error();
    const redisReply& answer = **reply;
    if (answer.type != REDIS_REPLY_ARRAY) return impl_->corrupt("the lease of '" + connection + "'");
    if (answer.elements == 0) return std::optional<Lease>{};
    if (answer.elements != 2 || !is_text(answer.element[0]) || answer.element[1]->type != REDIS_REPLY_INTEGER) {
        return impl_->corrupt("the lease of '" + connection + "'");
    }
    auto lease = parse_lease(connection, text_of(*answer.element[0]), answer.element[1]->integer);
    if (!lease) return impl_->corrupt("the lease of '" + connection + "'");
    return std::optional<Lease>{std::move(*lease)};
}

// ---- shared queues ----------------------------------------------------------------------------------------------

namespace {

// The items of one stream's entry list ([[id, [field, value, ...]], ...]) into @p out; entries a claim found deleted
// (nil) are skipped. False if the shape is not a stream's.
bool read_entries(const redisReply& entries, const std::string& queue, std::vector<QueueItem>& out) {
    if (entries.type != REDIS_REPLY_ARRAY) return false;
    for (std::size_t i = 0; i < entries.elements; ++i) {
        const redisReply* entry = entries.element[i];
        if (entry->type == REDIS_REPLY_NIL) continue;
        if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 || !is_text(entry->element[0])) return false;
        const redisReply* fields = entry->element[1];
        if (fields->type == REDIS_REPLY_NIL) continue;
        if (fields->type != REDIS_REPLY_ARRAY || fields->elements < 2 || !is_text(fields->element[1])) return false;
        out.push_back(QueueItem{queue, std::string(text_of(*entry->element[0])), std::string(text_of(*fields->element[1]))});
    }
    return true;
}

}  // namespace

SharedQueues* RedisStore::queues() noexcept { return this; }

Result<void> RedisStore::ensure_group(const std::string& key, const std::string& group) {
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->groups.contains({key, group})) return {};
    }
    Command command;
    command.arg("XGROUP").arg("CREATE").arg(key).arg(group).arg("0").arg("MKSTREAM");
    auto reply = impl_->run_one("creating a consumer group", std::move(command));
    if (!reply && reply.error().code != "store_group_exists") return reply.error();
    std::lock_guard lock(impl_->mutex);
    impl_->groups.insert({key, group});
    return {};
}

Result<std::string> RedisStore::push(const std::string& queue, const std::string& payload) {
    Command command;
    command.arg("XADD").own(impl_->key("queue", part(queue))).arg("*").arg("p").arg(payload);
    auto reply = impl_->run_one("adding to queue '" + queue + "'", std::move(command));
    if (!reply) return reply.error();
    if (!is_text(reply->get())) return impl_->corrupt("an answer to XADD");
    return ok_string(std::string(text_of(**reply)));
}

Result<std::vector<QueueItem>> RedisStore::take(std::span<const std::string> queues, const std::string& group,
                                                const std::string& consumer, std::size_t max,
                                                std::chrono::milliseconds reclaim_after) {
    std::vector<QueueItem> items;
    if (queues.empty() || max == 0) return items;
    std::vector<std::string> keys;
    for (const std::string& queue : queues) {
        keys.push_back(impl_->key("queue", part(queue)));
        if (auto made = ensure_group(keys.back(), group); !made) return made.error();
    }
    // First what a consumer that went quiet left behind (XAUTOCLAIM, one call per queue), then new items.
    std::vector<Command> commands;
    for (const std::string& key : keys) {
        Command& claim = commands.emplace_back();
        claim.arg("XAUTOCLAIM").arg(key).arg(group).arg(consumer).number(std::max<std::int64_t>(1, reclaim_after.count()))
            .arg("0-0").arg("COUNT").number(static_cast<std::int64_t>(max));
    }
    Command& read = commands.emplace_back();
    read.arg("XREADGROUP").arg("GROUP").arg(group).arg(consumer).arg("COUNT").number(static_cast<std::int64_t>(max))
        .arg("STREAMS");
    for (const std::string& key : keys) read.arg(key);
    for (std::size_t i = 0; i < keys.size(); ++i) read.arg(">");
    auto replies = impl_->run("taking from " + std::to_string(keys.size()) + " queue(s)", commands);
    if (!replies) {
        if (replies.error().message.find("NOGROUP") != std::string::npos) {
            std::lock_guard lock(impl_->mutex);  // the server lost them (a restart without persistence): make again
            impl_->groups.clear();
        }
        return replies.error();
    }
    for (std::size_t i = 0; i < keys.size(); ++i) {
        const redisReply& claimed = *(*replies)[i];
        if (claimed.type != REDIS_REPLY_ARRAY || claimed.elements < 2 ||
            !read_entries(*claimed.element[1], queues[i], items)) {
            return impl_->corrupt("an answer to XAUTOCLAIM");
        }
    }
    const redisReply& fresh = *replies->back();
    if (fresh.type == REDIS_REPLY_NIL) return items;
    if (fresh.type != REDIS_REPLY_ARRAY) return impl_->corrupt("an answer to XREADGROUP");
    for (std::size_t i = 0; i < fresh.elements; ++i) {
        const redisReply* stream = fresh.element[i];
        if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2 || !is_text(stream->element[0])) {
            return impl_->corrupt("an answer to XREADGROUP");
        }
        const auto at = std::find(keys.begin(), keys.end(), text_of(*stream->element[0]));
        if (at == keys.end() || !read_entries(*stream->element[1], queues[at - keys.begin()], items)) {
            return impl_->corrupt("an answer to XREADGROUP");
        }
    }
    return items;
}

Result<void> RedisStore::done(const std::string& queue, const std::string& group, std::span<const std::string> ids) {
    if (ids.empty()) return {};
    const std::string key = impl_->key("queue", part(queue));
    std::vector<Command> commands(2);
    commands[0].arg("XACK").arg(key).arg(group);
    commands[1].arg("XDEL").arg(key);
    for (const std::string& id : ids) {
        commands[0].arg(id);
        commands[1].arg(id);
    }
    auto replies = impl_->run("confirming " + std::to_string(ids.size()) + " item(s) of queue '" + queue + "'", commands);
    if (!replies) return replies.error();
    return {};
}

}  // namespace switchboard::stores
