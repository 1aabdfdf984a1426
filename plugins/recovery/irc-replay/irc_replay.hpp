#pragma once
// The `irc-replay` recovery policy: after the IRC connector rejoins, take what the server replayed (InspIRCd
// chanhistory) or answers to CHATHISTORY, feed what came after the channel's cursor into the pipeline, and report a
// gap where the server keeps no history. See README.md beside this file for how the work splits with the connector.

#include <switchboard/recovery.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>

namespace switchboard::irc_replay {

struct ReplaySettings {
    std::uint32_t page_size = 500;  ///< Messages asked for per history request.
    std::uint32_t max_pages = 20;   ///< CHATHISTORY AFTER pages per channel and run at most.
    std::int64_t skew_ms = 1000;    ///< Replayed times are whole seconds: older than cursor minus this is old.
};

class IrcReplayPolicy : public RecoveryPolicy {
public:
    explicit IrcReplayPolicy(ReplaySettings settings, std::function<std::int64_t()> clock = {});

    void on_event(const ConnectionEvent& event, RecoveryContext& context) override;

    /// Shared with the channel runs: a run cut short by a new disconnect gives its outage start back, so the next
    /// rejoin recovers and reports from there.
    struct Outage {
        std::mutex mutex;
        std::optional<std::int64_t> since;  // ms since the epoch, of the first disconnect not yet recovered
    };

private:
    void recover(RecoveryContext& context, const std::string& channel, std::optional<std::int64_t> disconnected_at,
                 std::int64_t rejoined_at);

    ReplaySettings settings_;
    std::function<std::int64_t()> clock_;
    std::shared_ptr<Outage> outage_ = std::make_shared<Outage>();
};

/// `2026-11-26T22:12:55.737Z`, for gap reports.
[[nodiscard]] std::string format_utc(std::int64_t ms);

}  // namespace switchboard::irc_replay
