#pragma once
// The `telegram-offset` recovery policy (DESIGN §5). Telegram keeps every update it has not been told was received
// for 24 hours, and the telegram connector confirms an update (moves the getUpdates offset past it) only once the
// host handled it: after a crash or an outage the unconfirmed updates simply come again, and dedup drops those
// already handled. So this policy fetches nothing. What it does is make the one loss Telegram allows visible: at the
// first poll of every session the connector compares the update ids and the server time with what it saved, and
// records a gap (saved state "gap": `{"from","to","reason"}`) when updates expired — the bot did not poll for more
// than 24 h, or the first update is above the offset it had saved. On `connected` the policy reads that record and
// finishes a RecoveryReport for every watched channel: with the gap and its reason, or without one.

#include <optional>
#include <string>
#include <switchboard/recovery.hpp>

namespace switchboard::recovery {

/// A gap the connector recorded (its saved "gap" state), parsed.
struct TelegramGap {
    std::optional<std::int64_t> from;  ///< First update id missing, when known.
    std::optional<std::int64_t> to;    ///< Last update id missing, when known.
    std::string reason;
};

/// Parses the connector's "gap" state: nullopt for none (absent, empty); a value that is not the expected JSON is a
/// gap of unknown extent (its text is the reason), so that a damaged record never hides a loss.
[[nodiscard]] std::optional<TelegramGap> parse_telegram_gap(const std::optional<std::string>& state);

class TelegramOffset final : public RecoveryPolicy {
public:
    /// The plugin's name in the config (`recovery: { policy: telegram-offset }`).
    static constexpr const char* kName = "telegram-offset";

    TelegramOffset(const PluginContext& context, const PluginConfig& config);
    /// @p logger gets one line per gap.
    explicit TelegramOffset(Logger& logger);

    void on_event(const ConnectionEvent& event, RecoveryContext& context) override;

private:
    Logger& logger_;
};

}  // namespace switchboard::recovery
