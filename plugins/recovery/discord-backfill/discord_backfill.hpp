#pragma once
// The `discord-backfill` recovery policy (DESIGN §5, PROTOCOLS §2 "Recovery policy"). When the Discord connector
// reports a new session (`connected`: the gateway refused to resume), and on the process's first session even when
// it resumed (the gateway replays only what followed the sequence the last process saved, not what that process
// received and never handled), every watched channel is held (its live messages wait), paged with
// `fetch_history(after = cursor)` until caught up, each missed message fed back into the inbound pipeline oldest
// first, and released. A later `resumed` session needs nothing: the gateway replays itself.
//
// Where things run. on_event() runs on the connection's lane (RecoveryContext), and so does every step that reads
// the store or feeds: fetch_history() completes on the connector's I/O threads, and its callback only hands the
// page back to the lane with RecoveryContext::post(). Retry delays are timers on the host's io_context whose
// handlers post back likewise. So the run's state is touched on the lane alone, one step at a time, and needs no
// lock; no store read ever runs on an I/O thread.
//
// Decisions:
// - A channel without a cursor has never had a message processed: nothing is fetched for it (the bot does not
//   answer history from before it first saw the channel) and it reports no gap.
// - A cursor older than now - max_age starts at the synthetic snowflake of now - max_age and reports the gap
//   ("history older than max_age skipped").
// - A run cut short (disconnected, finished, or a new `connected`) reports each unfinished channel once, with a
//   gap, keeps it held, and remembers where each stopped: the next run starts there (or at the cursor, if that is
//   older). A `resumed` after a cut-short run backfills those channels again, since the resumed session replays
//   only what followed the disconnect. This memory does not survive a process restart, and need not: held live
//   messages never moved the cursor, so the next process's first run starts early enough.
// - Pages are sorted by snowflake and deduplicated defensively (the connector already reorders Discord's
//   newest-first pages); ids at or below the channel's position count as duplicates. Messages the store already
//   processed are counted as duplicates and not fed (the pipeline's dedup would drop them anyway).

#include <switchboard/recovery.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace switchboard::recovery {

/// Discord's epoch (2015-01-01T00:00:00Z) in ms since the Unix epoch.
inline constexpr std::int64_t kDiscordEpochMs = 1420070400000;

/// The numeric value of a snowflake id, or nullopt if @p id is not a decimal 64-bit number.
[[nodiscard]] std::optional<std::uint64_t> parse_snowflake(std::string_view id) noexcept;

/// When the message with snowflake @p id was created, ms since the Unix epoch.
[[nodiscard]] std::int64_t snowflake_time_ms(std::uint64_t id) noexcept;

/// The synthetic snowflake `(ms - epoch) << 22` of time @p unix_ms (0 before Discord's epoch): every message
/// created at or after @p unix_ms has a greater or equal id.
[[nodiscard]] std::uint64_t snowflake_at(std::int64_t unix_ms) noexcept;

/// "14d", "6h", "90m", "45s" or "250ms": the largest unit that divides @p duration exactly.
[[nodiscard]] std::string format_duration(std::chrono::milliseconds duration);

/// The policy's settings.
struct BackfillOptions {
    /// History older than this is not fetched (the gap is reported).
    std::chrono::milliseconds max_age{std::chrono::hours(24 * 14)};
    /// Messages per fetch_history() request (Discord: 1 to 100).
    std::uint32_t page_size = 100;
    /// Channels fetched at once.
    std::uint32_t concurrency = 4;
    /// Retries of one page after retryable failures before the channel gives up with a gap.
    std::uint32_t retries = 5;
    /// First wait before a retry when the error names none; doubles each time, up to retry_max_delay.
    std::chrono::milliseconds retry_delay{1000};
    /// Longest wait between retries that the policy chooses itself (a platform's retry_after is always obeyed).
    std::chrono::milliseconds retry_max_delay{30000};
    /// The wall clock, ms since the Unix epoch (tests replace it).
    std::function<std::int64_t()> now_ms;
};

class DiscordBackfill final : public RecoveryPolicy {
public:
    /// The plugin's name in the config (`recovery: { policy: discord-backfill }`).
    static constexpr const char* kName = "discord-backfill";

    /// The keys max_age, page_size, concurrency, retries and retry_delay.
    [[nodiscard]] static const ConfigSchema& config_schema();
    /// Rejects a page_size outside 1..100, a concurrency or retry_delay below 1, negative retries, a max_age of 0.
    [[nodiscard]] static std::vector<ConfigProblem> check_config(const PluginConfig& config);
    /// The options @p config describes (it passed check_config()).
    [[nodiscard]] static BackfillOptions options_from(const PluginConfig& config);

    /// What the host calls. Throws ErrorException (config_invalid) on settings check_config() rejects.
    DiscordBackfill(const PluginContext& context, const PluginConfig& config);
    /// Retry timers run on @p io; @p logger gets one line per run and per channel.
    DiscordBackfill(BackfillOptions options, Logger& logger, boost::asio::io_context& io);
    /// Abandons a run in progress: late page callbacks and timers find nothing to do.
    ~DiscordBackfill() override;

    void on_event(const ConnectionEvent& event, RecoveryContext& context) override;

private:
    struct State;
    std::shared_ptr<State> state_;
};

}  // namespace switchboard::recovery
