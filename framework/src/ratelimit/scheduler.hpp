#pragma once
// One connection's rate-limit scheduler: the core's implementation of the SDK's RateLimitScheduler (rate_limit.hpp,
// DESIGN §3). The host makes one per connection; the delivery engine and the connector share it.
//
// What holds a request back, checked in this order (a request is granted only when none does):
//   - a connection-wide 429 hold (observe() with `limited` and `global`), until it ends;
//   - the static buckets: `"global"` (every request) and the ones the request names — token buckets that start full;
//     a name nobody defined holds nothing back;
//   - the learned bucket of the request's route, once a response on that route said something about limits: a 429
//     hold on it, or no requests left in its window (until the window resets). Before a route's first such response,
//     nothing learned holds it back.
//
// A learned bucket counts down its `remaining` at each grant, and a response sets it to what the platform says less
// the requests still in flight on it, never above the count of the same window (responses may come out of order and
// report older, larger counts). At its reset the window is full again, less what is in flight. In-flight requests
// are the grants not yet followed by their observe() (on a route that has no bucket yet, counted only once the
// connector has called observe() at all, so a connector that never does costs nothing per route); one older than
// `in_flight_timeout` is forgotten, so a lost observe() slows a bucket down for a while but never stops it.
//
// Waiters: every live waiter is considered before any backfill waiter, and each in arrival order. A waiter that is
// held back marks what holds it (the global hold, a static bucket, a learned bucket) as taken for everyone after it,
// so nobody later — no backfill request while a live one waits, no later live request — takes a token or a place in
// a window that an earlier one is waiting for; requests that need none of those go ahead (one channel's 429 does not
// stop sends to another).
//
// Threads: every member may be called from any thread (one mutex guards the state). Grants are posted to the
// scheduler's strand on the io_context and called there in the order they were granted; a steady_timer on the same
// strand wakes the scheduler when the earliest hold, token or window reset is due. Time comes from an injectable
// clock, so tests drive it (and call wake() where the timer would fire).

#include <switchboard/plugin.hpp>
#include <switchboard/rate_limit.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace switchboard::ratelimit {

using SteadyClock = std::chrono::steady_clock;

/// Where the scheduler reads the time; empty means std::chrono::steady_clock::now.
using Clock = std::function<SteadyClock::time_point()>;

/// Scheduler tuning.
struct SchedulerOptions {
    /// The connection's name, for log lines.
    std::string connection;
    /// Invalid requests (401, 403, 429 as the platform counts them) allowed per `invalid_window` before the
    /// platform bans (Discord: 10,000 per 10 minutes, a temporary Cloudflare ban). 0: not watched.
    std::uint32_t invalid_budget = 10'000;
    /// The window of the invalid-request budget.
    std::chrono::milliseconds invalid_window{10 * 60 * 1000};
    /// A warning is logged when the window holds this fraction of the budget, an error when it holds all of it.
    double invalid_warn_fraction = 0.8;
    /// A grant whose observe() has not come after this long no longer counts as in flight.
    std::chrono::milliseconds in_flight_timeout{60'000};
};

class Scheduler final : public RateLimitScheduler, public std::enable_shared_from_this<Scheduler> {
public:
    /// Owned by a shared_ptr (its timer handler holds a weak reference). Grants and timers run on a strand of @p io.
    Scheduler(boost::asio::io_context& io, Logger& logger, SchedulerOptions options = {}, Clock clock = {});
    /// Cancels what still waits, as shutdown() does.
    ~Scheduler() override;
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    /// The connection's `limits:` (rate, burst): the `"global"` bucket, which the connector's define() then no
    /// longer changes. @p rate_per_second <= 0: unlimited.
    void configure_global(double rate_per_second, std::uint32_t burst);

    void define(const std::string& name, double rate_per_second, std::uint32_t burst) override;
    void acquire(RateRequest request, RateGrant grant) override;
    void observe(const std::string& route, const RateLimitInfo& info) override;
    [[nodiscard]] RateLimitStats stats() const override;

    /// Grants @p request at once and returns true if it may go now and nobody of its priority or higher waits;
    /// otherwise returns false and changes nothing (then acquire() it). A granted request counts as acquire() does
    /// and is followed by its observe() as any grant is.
    [[nodiscard]] bool try_acquire(const RateRequest& request);

    /// Cancels every waiting request: each grant is called with `cancelled`, on the calling thread, before this
    /// returns. Later acquire() calls are cancelled at once (on the strand) and try_acquire() refuses.
    void shutdown();

    /// Looks at the waiters again at the clock's now — what the timer does when it fires. For tests with a fake
    /// clock, after they advanced it.
    void wake();

    /// When the timer is set to wake the scheduler next (nullopt: nothing waits on time).
    [[nodiscard]] std::optional<SteadyClock::time_point> next_wake() const;

    /// The code of the error a cancelled grant receives.
    static constexpr const char* kCancelled = "cancelled";

private:
    struct State;
    std::unique_ptr<State> state_;
};

}  // namespace switchboard::ratelimit
