#pragma once
/// @file recovery.hpp
/// @brief Recovery policies (DESIGN §5): after a reconnect, find what was missed and feed it back.

#include <switchboard/connector.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/store.hpp>

#include <cstddef>
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
    virtual void on_event(const ConnectionEvent& event, RecoveryContext& context) = 0;
};

}  // namespace switchboard
