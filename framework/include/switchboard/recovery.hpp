#pragma once
/// @file recovery.hpp
/// @brief Recovery policies (DESIGN §5): after a reconnect, find what was missed and feed it back.

#include <switchboard/connector.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/store.hpp>

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace switchboard {

/// @brief The outcome of one recovery run for one channel.
struct RecoveryReport {
    /// @brief Platform channel id.
    std::string channel;
    /// @brief Messages fetched from the platform.
    std::size_t fetched = 0;
    /// @brief Of those, already processed (dropped by dedup).
    std::size_t duplicates = 0;
    /// @brief True if messages may have been lost (no history, history too old, ...).
    bool gap = false;
    /// @brief Why there is a gap.
    std::string gap_reason;
};

/// @brief What the host gives a recovery policy while it runs.
class RecoveryContext {
public:
    virtual ~RecoveryContext() = default;
    /// @brief The connection's name.
    [[nodiscard]] virtual const std::string& connection() const = 0;
    /// @brief The platform channel ids the config watches on this connection.
    [[nodiscard]] virtual std::vector<std::string> channels() const = 0;
    /// @brief The stored cursor of @p channel, if any.
    [[nodiscard]] virtual std::optional<Cursor> cursor(const std::string& channel) = 0;
    /// @brief The connector, to fetch history.
    [[nodiscard]] virtual Connector& connector() = 0;
    /// @brief True if @p message (its channel and id, on this connection) was already processed and is still in
    /// the dedup set: feeding it again would be dropped as a duplicate. A blocking store read: call it where
    /// on_event() runs or in a task given to post(), never on an I/O thread (a fetch_history() callback). The
    /// default, for contexts without a store, fails with `unsupported`.
    [[nodiscard]] virtual Result<bool> is_processed(const Message& message) {
        (void)message;
        return fail("unsupported", "this recovery context cannot tell whether a message was processed");
    }
    /// @brief The value this connection's connector saved under @p key (ConnectorHost::save_state()), or nullopt if
    /// none: the same data as ConnectorHost::load_state(), for policies that read what the connector recorded (such
    /// as a gap it detected). A blocking store read: call it where on_event() runs or in a post() task. The default,
    /// for contexts without a store (simple test fakes), returns nullopt.
    [[nodiscard]] virtual std::optional<std::string> load_state(const std::string& key) {
        (void)key;
        return std::nullopt;
    }
    /// @brief Runs @p task where on_event() runs: on the connection's lane, one task at a time, in order with
    /// on_event() calls and after every message fed or delivered before it. Thread-safe; a fetch_history()
    /// callback uses it to get off the I/O thread before reading the store or feeding. Once the host stops, tasks
    /// are dropped unrun. The default, for contexts without a lane (simple test fakes), runs @p task at once on
    /// the calling thread.
    virtual void post(std::function<void()> task) { task(); }
    /// @brief Holds back live messages of @p channel from now on (those with `recovered = false`: what the
    /// connector delivers, including a resumed session's replay) until release(@p channel), so that the messages
    /// this policy feeds are handled first and in order, and the channel's cursor never moves past a message not
    /// handled yet. Call it on the lane (in on_event() or a post() task) before the channel's first feed(). Held
    /// messages are not lost when the process stops: their cursor did not move, so the next run fetches them again.
    /// The default, for contexts without a pipeline (simple test fakes), does nothing.
    virtual void hold(const std::string& channel) { (void)channel; }
    /// @brief Ends hold(): the held messages follow, in order, every message fed before this call; dedup drops
    /// those that were also fed. Call it once the channel has caught up (or given up). A hold that is never
    /// released stalls the channel, so a policy that holds must release, also after errors.
    virtual void release(const std::string& channel) { (void)channel; }
    /// @brief Feeds a recovered message into the inbound pipeline (dedup makes overlap harmless).
    virtual void feed(Message message) = 0;
    /// @brief Reports one channel's outcome; call once per channel per run.
    virtual void finish(const RecoveryReport& report) = 0;
};

/// @brief The interface every recovery policy plugin implements.
class RecoveryPolicy : public PluginObject {
public:
    /// @brief The SDK interface this class implements (used by SWITCHBOARD_PLUGIN).
    using Interface = RecoveryPolicy;
    /// @brief Recovery plugins are of kind recovery.
    static constexpr PluginKind kKind = PluginKind::recovery;

    /// @brief Reacts to a connection event; typically starts fetching on `connected` after a `disconnected`.
    /// Called on the connection's lane (see RecoveryContext::post()), never on an I/O thread; it returns soon,
    /// continuing long work in fetch_history() callbacks that post() back to the lane.
    virtual void on_event(const ConnectionEvent& event, RecoveryContext& context) = 0;
};

}  // namespace switchboard
