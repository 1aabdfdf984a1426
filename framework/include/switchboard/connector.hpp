#pragma once
/// @file connector.hpp
/// @brief The connector interface: one platform's protocol, turning events into `Message`s and sending.

#include <switchboard/message.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/rate_limit.hpp>
#include <switchboard/result.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace switchboard {

/// @brief A change in a connection's state, reported by the connector to the host (and its recovery policy).
struct ConnectionEvent {
    /// @brief What happened.
    enum class Type {
        connected,      ///< A new session is up (nothing resumed: recovery must fetch what was missed).
        resumed,        ///< The previous session was resumed: the platform replays what was missed itself.
        disconnected,   ///< The connection dropped; the connector will reconnect.
        finished,       ///< The connection ended for good (end of input, fatal error); no reconnect follows.
    };
    /// @brief What happened.
    Type type = Type::connected;
    /// @brief Why, for logs and status ("close code 4009", "end of input", ...).
    std::string detail;
};

/// @brief "connected", "resumed", "disconnected" or "finished".
[[nodiscard]] inline std::string_view to_string(ConnectionEvent::Type type) noexcept {
    switch (type) {
        case ConnectionEvent::Type::connected: return "connected";
        case ConnectionEvent::Type::resumed: return "resumed";
        case ConnectionEvent::Type::disconnected: return "disconnected";
        case ConnectionEvent::Type::finished: return "finished";
    }
    return "unknown";
}

/// @brief What a connector can do beyond sending text.
struct ConnectorCapabilities {
    /// @brief It can delete a message it sent (needed for `on_failure: compensate`).
    bool can_delete = false;
    /// @brief It can fetch channel history (fetch_history()).
    bool history = false;
    /// @brief It can send to a person (`connection/@user`).
    bool private_messages = true;
    /// @brief Longest text the platform accepts in one message (0: no limit known).
    std::uint32_t max_text_length = 0;
};

/// @brief One message to send.
struct OutboundMessage {
    /// @brief Where it goes.
    Address to;
    /// @brief The text.
    std::string text;
    /// @brief The platform id of the message it answers, if any.
    std::optional<std::string> reply_to;
    /// @brief Stable per (plan, recipient): platforms that support a nonce use it so a resend is not doubled.
    std::string idempotency_key;
};

/// @brief What the platform said about a message it accepted.
struct SentMessage {
    /// @brief The platform's id of the sent message (empty where the platform gives none, as on IRC).
    std::string message_id;
};

/// @brief Completion of Connector::send(). Called exactly once, on any thread.
using SendCallback = std::function<void(Result<SentMessage>)>;

/// @brief Completion of Connector::remove(). Called exactly once, on any thread.
using RemoveCallback = std::function<void(Result<void>)>;

/// @brief A request for channel history after a cursor, for recovery.
struct HistoryRequest {
    /// @brief Platform channel id.
    std::string channel;
    /// @brief Fetch messages strictly after this one (nullopt: the newest page).
    std::optional<std::string> after_message_id;
    /// @brief At most this many.
    std::uint32_t limit = 100;
};

/// @brief One page of history, oldest first.
struct HistoryPage {
    /// @brief The messages, oldest first, with `recovered = true`.
    std::vector<Message> messages;
    /// @brief True when there is nothing newer to fetch.
    bool complete = true;
};

/// @brief Completion of Connector::fetch_history(). Called exactly once, on any thread.
using HistoryCallback = std::function<void(Result<HistoryPage>)>;

/// @brief What the host gives a running connector.
class ConnectorHost {
public:
    virtual ~ConnectorHost() = default;
    /// @brief Hands an inbound message to the pipeline. Call in platform order per channel; never blocks.
    virtual void deliver(Message message) = 0;
    /// @brief Reports a state change.
    virtual void report(const ConnectionEvent& event) = 0;
    /// @brief Reports who is present in @p channel now (platform user ids), for connectors that know. The
    /// directory then treats a person on this connection as reachable only while present in some channel.
    virtual void report_members(const std::string& channel, std::vector<std::string> user_ids) = 0;

    /// @brief This connection's rate-limit scheduler (see rate_limit.hpp), shared with the delivery engine, which
    /// acquires send_route(address) before every send() to this connector. A connector that learns limits from its
    /// responses reports them with observe() (sends on send_route(message.to)); requests it makes by itself
    /// (history, deletions, polling) it acquires and reports on routes of its own. A connector may define() its
    /// platform's static buckets from start() (its `"global"` only applies when the connection's `limits:` sets no
    /// `rate`). The scheduler lives as long as the connection; grants still waiting when the host stops are
    /// cancelled (`cancelled`) after stop() returned, on the stopping thread.
    [[nodiscard]] virtual RateLimitScheduler& rate_limits() = 0;

    /// @brief The value this connection saved under @p key earlier, in this run or an earlier one (resume state such
    /// as Discord's session id, sequence and resume URL), or nullopt if none (or the store failed, which is logged).
    /// Sees every save_state() made before it, even those not yet written. A short synchronous read of the store's
    /// connection state: call it from start() or from the connector's own threads, not in a hot path of an I/O
    /// callback.
    [[nodiscard]] virtual std::optional<std::string> load_state(const std::string& key) = 0;

    /// @brief Saves @p value under @p key for this connection. Returns at once and never blocks: the write happens
    /// off the I/O threads, in the order of the calls; when a key is saved again before its last value was written,
    /// only the latest value is written. A write that fails is logged. Saves made before stop() returns are written
    /// before the host closes the store.
    virtual void save_state(std::string key, std::string value) = 0;

    /// @brief True once @p message (its channel and id on this connection) was handled and committed: its dedup
    /// entry, cursor and the bots' writes and replies are durable, so the platform may be told it was received
    /// (Telegram's getUpdates offset). False while it is queued, held or being handled, or was never delivered. A
    /// blocking read of the store's dedup set, like load_state(): call it from the connector's own threads, not in a
    /// hot path of an I/O callback. Fails (with the store's error) when the store cannot answer.
    [[nodiscard]] virtual Result<bool> is_processed(const Message& message) = 0;
};

/// @brief The interface every connector plugin implements.
class Connector : public PluginObject {
public:
    /// @brief The SDK interface this class implements (used by SWITCHBOARD_PLUGIN).
    using Interface = Connector;
    /// @brief Connector plugins are of kind connector.
    static constexpr PluginKind kKind = PluginKind::connector;

    /// @brief What this connector can do.
    [[nodiscard]] virtual ConnectorCapabilities capabilities() const = 0;

    /// @brief Starts connecting and returns at once. @p host outlives the connector's running time.
    virtual void start(ConnectorHost& host) = 0;

    /// @brief Stops intake and closes the connection. After it returns, no deliver() or report() calls follow.
    virtual void stop() = 0;

    /// @brief Sends one message; @p done is called exactly once with the outcome.
    virtual void send(const OutboundMessage& message, SendCallback done) = 0;

    /// @brief Deletes a message this connector sent, if capabilities().can_delete.
    virtual void remove(const Address& where, const std::string& message_id, RemoveCallback done) {
        (void)where;
        (void)message_id;
        done(fail("unsupported", "this connector cannot delete messages"));
    }

    /// @brief Fetches history for recovery, if capabilities().history.
    virtual void fetch_history(const HistoryRequest& request, HistoryCallback done) {
        (void)request;
        done(fail("unsupported", "this connector cannot fetch history"));
    }
};

}  // namespace switchboard
