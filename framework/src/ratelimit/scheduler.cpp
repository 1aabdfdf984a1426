#include "ratelimit/scheduler.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/container/small_vector.hpp>

#include <algorithm>
#include <cmath>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace switchboard::ratelimit {
namespace {

namespace asio = boost::asio;
using TimePoint = SteadyClock::time_point;

// A token that is "due" may come out of the floating-point refill as 0.9999999; counting it as whole keeps a timer
// woken at the computed moment from finding the bucket still (almost) empty.
constexpr double kEpsilon = 1e-9;

// Responses of one window report the same reset give or take their travel time; a reset this much later than the
// one known means the platform started a new window.
constexpr auto kNewWindowSlack = std::chrono::milliseconds(250);

SteadyClock::duration seconds(double s) {
    if (!(s > 0)) return SteadyClock::duration::zero();
    // Round up, so a wait never ends a hair before the platform's.
    return std::chrono::duration_cast<SteadyClock::duration>(
        std::chrono::nanoseconds(static_cast<std::int64_t>(std::ceil(std::min(s, 1e9) * 1e9))));
}

// A static token bucket: refills at `rate` per second up to `capacity`, starts full.
struct StaticBucket {
    double rate = 0;  // <= 0: unlimited
    double capacity = 1;
    double tokens = 1;
    TimePoint last{};

    [[nodiscard]] bool unlimited() const noexcept { return rate <= 0; }

    void refill(TimePoint now) noexcept {
        if (now <= last) return;
        tokens = std::min(capacity, tokens + std::chrono::duration<double>(now - last).count() * rate);
        last = now;
    }
    [[nodiscard]] bool available(TimePoint now) noexcept {
        if (unlimited()) return true;
        refill(now);
        return tokens + kEpsilon >= 1.0;
    }
    void take() noexcept {
        if (!unlimited()) tokens = std::max(0.0, tokens - 1.0);
    }
    // When the next whole token is there (call after available() said no).
    [[nodiscard]] TimePoint next_token() const noexcept {
        return last + seconds((1.0 - tokens) / rate) + std::chrono::nanoseconds(1);
    }
};

// A bucket learned from responses, shared by the routes that report the same platform bucket id.
struct LearnedBucket {
    std::uint32_t limit = 0;      // per window; 0: not known
    std::uint32_t remaining = 0;  // left in the current window, less what was granted since the platform said so
    bool counted = false;         // `remaining` is known
    bool has_reset = false;       // `reset_at` is known
    TimePoint reset_at{};
    TimePoint hold_until{};            // a 429 on it
    std::deque<TimePoint> in_flight;   // grants not yet observed, oldest first
};

struct Route {
    std::shared_ptr<LearnedBucket> bucket;  // null until a response on the route said something about limits
    std::uint32_t unmapped_in_flight = 0;   // grants before that (counted once the connector observes at all)
    TimePoint last_grant{};
};

struct Waiter {
    RateRequest request;
    RateGrant grant;
    TimePoint since;
    bool held = false;  // it was looked at and had to wait
};

// What blocks requests during one pass over the waiters: ids of the global hold, static and learned buckets.
using Taken = boost::container::small_vector<const void*, 8>;

Error cancelled_error(const std::string& connection) {
    return fail(Scheduler::kCancelled, "the rate-limit scheduler of connection '" + connection +
                                           "' was shut down; the request was not sent");
}

}  // namespace

struct Scheduler::State {
    State(asio::io_context& io, Logger& logger_, SchedulerOptions options_, Clock clock_)
        : strand(asio::make_strand(io)),
          timer(strand),
          logger(logger_),
          options(std::move(options_)),
          clock(clock_ ? std::move(clock_) : Clock([] { return SteadyClock::now(); })) {
        global = &statics["global"];
    }

    asio::strand<asio::io_context::executor_type> strand;
    asio::steady_timer timer;
    Logger& logger;
    const SchedulerOptions options;
    const Clock clock;
    std::weak_ptr<Scheduler> self;

    mutable std::mutex mutex;
    bool shut_down = false;
    bool global_configured = false;
    // observe() was called: the connector reports responses, so grants on routes without a bucket are counted (a
    // connector that never observes costs no entry per route).
    bool observing = false;
    std::unordered_map<std::string, StaticBucket> statics;  // never erased: waiters' passes keep pointers into it
    StaticBucket* global = nullptr;                          // statics["global"]
    TimePoint global_hold{};
    std::unordered_map<std::string, Route> routes;
    std::unordered_map<std::string, std::shared_ptr<LearnedBucket>> buckets;
    std::deque<Waiter> live;
    std::deque<Waiter> backfill;
    std::deque<TimePoint> invalid_times;
    bool invalid_warned = false;
    bool invalid_exhausted = false;
    std::optional<TimePoint> timer_due;
    std::uint64_t timer_generation = 0;
    RateLimitStats stats;

    LogFields fields() const { return LogFields{options.connection, {}, {}}; }

    void set_static(const std::string& name, double rate, std::uint32_t burst, TimePoint now) {
        StaticBucket bucket;
        bucket.rate = rate > 0 ? rate : 0;
        bucket.capacity = static_cast<double>(std::max<std::uint32_t>(burst, 1));
        bucket.tokens = bucket.capacity;
        bucket.last = now;
        if (auto it = statics.find(name); it != statics.end()) {
            // A redefinition does not hand out a fresh burst: what was spent stays spent.
            if (!it->second.unlimited() && !bucket.unlimited()) {
                it->second.refill(now);
                bucket.tokens = std::min(bucket.capacity, it->second.tokens);
            }
            it->second = bucket;
        } else {
            statics.emplace(name, bucket);
        }
    }

    void expire_in_flight(LearnedBucket& bucket, TimePoint now) const {
        while (!bucket.in_flight.empty() && bucket.in_flight.front() + options.in_flight_timeout <= now) {
            bucket.in_flight.pop_front();
        }
    }

    // Nullopt when @p bucket lets a request through now; else when to look again (TimePoint::max(): when a
    // response comes).
    std::optional<TimePoint> learned_wait(LearnedBucket& bucket, TimePoint now) const {
        expire_in_flight(bucket, now);
        if (now < bucket.hold_until) return bucket.hold_until;
        if (bucket.has_reset && now >= bucket.reset_at) {
            // The window reset: full again, less what is still in flight (it may land in the new window).
            const auto in_flight = static_cast<std::uint32_t>(bucket.in_flight.size());
            bucket.counted = bucket.limit > 0;
            bucket.remaining = bucket.limit > in_flight ? bucket.limit - in_flight : 0;
            bucket.has_reset = false;
        }
        if (!bucket.counted || bucket.remaining > 0) return std::nullopt;
        if (bucket.has_reset) return bucket.reset_at;
        // Nothing left and no reset known: the responses in flight will tell; with none, one request may go to ask.
        if (!bucket.in_flight.empty()) return bucket.in_flight.front() + options.in_flight_timeout;
        return std::nullopt;
    }

    // Grants @p request if nothing holds it back and nothing it needs is taken by an earlier waiter; otherwise
    // marks what held it in @p taken and notes when to look again in @p wake.
    bool try_grant(const RateRequest& request, TimePoint now, Taken& taken, std::optional<TimePoint>& wake) {
        bool blocked = false;
        const auto is_taken = [&](const void* id) { return std::find(taken.begin(), taken.end(), id) != taken.end(); };
        const auto block = [&](const void* id, TimePoint when) {
            blocked = true;
            if (!is_taken(id)) taken.push_back(id);
            if (when != TimePoint::max() && (!wake || when < *wake)) wake = when;
        };

        if (is_taken(&global_hold)) {
            blocked = true;
        } else if (now < global_hold) {
            block(&global_hold, global_hold);
        }
        boost::container::small_vector<StaticBucket*, 4> needed;
        const auto need_static = [&](StaticBucket& bucket) {
            if (std::find(needed.begin(), needed.end(), &bucket) != needed.end()) return;
            needed.push_back(&bucket);
            if (is_taken(&bucket)) {
                blocked = true;
            } else if (!bucket.available(now)) {
                block(&bucket, bucket.next_token());
            }
        };
        need_static(*global);
        for (const std::string& name : request.buckets) {
            if (auto it = statics.find(name); it != statics.end()) need_static(it->second);
        }
        LearnedBucket* learned = nullptr;
        auto route = routes.empty() ? routes.end() : routes.find(request.route);
        if (route != routes.end() && route->second.bucket) {
            learned = route->second.bucket.get();
            if (is_taken(learned)) {
                blocked = true;
            } else if (auto when = learned_wait(*learned, now)) {
                block(learned, *when);
            }
        }
        if (blocked) return false;

        for (StaticBucket* bucket : needed) bucket->take();
        if (learned != nullptr) {
            if (learned->counted && learned->remaining > 0) --learned->remaining;
            learned->in_flight.push_back(now);
        } else if (observing) {
            if (route == routes.end()) route = routes.emplace(request.route, Route{}).first;
            Route& r = route->second;
            // Grants older than the in-flight timeout are forgotten, as on a bucket.
            if (r.last_grant + options.in_flight_timeout <= now) r.unmapped_in_flight = 0;
            ++r.unmapped_in_flight;
            r.last_grant = now;
        }
        return true;
    }

    // One pass over the waiters at @p now: live first, each queue in arrival order.
    void evaluate(TimePoint now, std::vector<RateGrant>& grants) {
        Taken taken;
        std::optional<TimePoint> wake;
        for (std::deque<Waiter>* queue : {&live, &backfill}) {
            for (auto it = queue->begin(); it != queue->end();) {
                if (!try_grant(it->request, now, taken, wake)) {
                    it->held = true;
                    ++it;
                    continue;
                }
                ++stats.granted;
                if (it->held) {
                    ++stats.delayed;
                    stats.waited_ms += static_cast<std::uint64_t>(
                        std::chrono::duration_cast<std::chrono::milliseconds>(now - it->since).count());
                }
                grants.push_back(std::move(it->grant));
                it = queue->erase(it);
            }
        }
        arm(wake, now);
    }

    void arm(std::optional<TimePoint> wake, TimePoint now) {
        if (!wake) {
            if (timer_due) {
                timer_due.reset();
                ++timer_generation;
                timer.cancel();
            }
            return;
        }
        if (timer_due && *timer_due == *wake) return;
        timer_due = wake;
        const std::uint64_t generation = ++timer_generation;
        timer.expires_after(std::max(SteadyClock::duration::zero(), *wake - now));
        timer.async_wait([weak = self, generation](const boost::system::error_code&) {
            if (auto scheduler = weak.lock()) scheduler->state_->on_timer(generation);
        });
    }

    void on_timer(std::uint64_t generation) {
        std::vector<RateGrant> grants;
        {
            std::lock_guard lock(mutex);
            if (generation != timer_generation || shut_down) return;
            timer_due.reset();
            evaluate(clock(), grants);
        }
        deliver(std::move(grants));
    }

    void deliver(std::vector<RateGrant> grants) {
        if (grants.empty()) return;
        asio::post(strand, [grants = std::move(grants)]() mutable {
            for (RateGrant& grant : grants) grant(Result<void>());
        });
    }

    // Counts an invalid response; returns a line to log when the count crosses a mark.
    std::optional<std::pair<LogLevel, std::string>> count_invalid(TimePoint now) {
        ++stats.invalid;
        if (options.invalid_budget == 0) return std::nullopt;
        invalid_times.push_back(now);
        while (!invalid_times.empty() && invalid_times.front() + options.invalid_window <= now) {
            invalid_times.pop_front();
        }
        while (invalid_times.size() > options.invalid_budget) invalid_times.pop_front();
        const std::size_t count = invalid_times.size();
        const auto threshold = static_cast<std::size_t>(std::max(
            1.0, std::ceil(static_cast<double>(options.invalid_budget) * options.invalid_warn_fraction)));
        const std::string window = std::to_string(options.invalid_window.count() / 1000) + " s";
        const std::string what = std::to_string(count) + " invalid requests (401, 403, 429) in the last " + window +
                                 ", budget " + std::to_string(options.invalid_budget);
        if (count < threshold) {
            invalid_warned = false;
            invalid_exhausted = false;
            return std::nullopt;
        }
        if (count >= options.invalid_budget && !invalid_exhausted) {
            invalid_exhausted = true;
            invalid_warned = true;
            return std::make_pair(LogLevel::error,
                                  "rate limits: " + what +
                                      ": the platform may ban this bot's address for a while; check its token and "
                                      "permissions and what keeps hitting 429s");
        }
        if (!invalid_warned) {
            invalid_warned = true;
            return std::make_pair(LogLevel::warn, "rate limits: " + what +
                                                      ": approaching the platform's ban threshold; check the token, "
                                                      "permissions and what keeps hitting 429s");
        }
        return std::nullopt;
    }

    std::optional<std::pair<LogLevel, std::string>> apply(const std::string& route_key, const RateLimitInfo& info,
                                                          TimePoint now) {
        std::optional<std::pair<LogLevel, std::string>> line;
        if (info.invalid) line = count_invalid(now);
        observing = true;

        const bool learned = info.bucket || info.limit || info.remaining || info.reset_after_s ||
                             (info.limited && !info.global);
        auto route_it = routes.find(route_key);
        // This response ends one grant on the route.
        if (route_it != routes.end()) {
            Route& r = route_it->second;
            if (r.bucket && !r.bucket->in_flight.empty()) {
                r.bucket->in_flight.pop_front();
            } else if (!r.bucket && r.unmapped_in_flight > 0) {
                --r.unmapped_in_flight;
            }
            if (!r.bucket && r.unmapped_in_flight == 0 && !learned) {
                routes.erase(route_it);  // nothing to remember about it
                route_it = routes.end();
            }
        }

        if (learned) {
            if (route_it == routes.end()) route_it = routes.emplace(route_key, Route{}).first;
            Route& r = route_it->second;
            std::string key;
            if (info.bucket) {
                key = "bucket " + *info.bucket;
            } else if (!r.bucket) {
                key = "route " + route_key;
            }
            if (!key.empty()) {
                auto& bucket = buckets[key];
                if (!bucket) bucket = std::make_shared<LearnedBucket>();
                if (r.bucket != bucket) {
                    // Grants made on the route before it knew its bucket are in flight on that bucket now.
                    const bool recent = r.last_grant + options.in_flight_timeout > now;
                    std::uint32_t carried = recent ? r.unmapped_in_flight : 0;
                    if (r.bucket) carried = 0;  // a route moving between buckets leaves its count behind
                    for (std::uint32_t i = 0; i < carried; ++i) bucket->in_flight.push_back(r.last_grant);
                    r.unmapped_in_flight = 0;
                    r.bucket = bucket;
                }
            }
            LearnedBucket& b = *r.bucket;
            expire_in_flight(b, now);
            if (info.limit) b.limit = *info.limit;
            if (info.remaining) {
                const auto in_flight = static_cast<std::uint32_t>(b.in_flight.size());
                const std::uint32_t left = *info.remaining > in_flight ? *info.remaining - in_flight : 0;
                bool new_window = !b.counted;
                if (info.reset_after_s) {
                    const TimePoint reset = now + seconds(*info.reset_after_s);
                    if (!b.has_reset || reset > b.reset_at + kNewWindowSlack) new_window = true;
                    if (new_window || reset > b.reset_at) b.reset_at = reset;
                    b.has_reset = true;
                }
                // Within one window, a response may be older than one already seen: never count up.
                b.remaining = new_window ? left : std::min(b.remaining, left);
                b.counted = true;
            } else if (info.reset_after_s) {
                b.reset_at = now + seconds(*info.reset_after_s);
                b.has_reset = true;
            }
            if (info.limited && !info.global) {
                const TimePoint until = now + seconds(info.retry_after_s);
                b.hold_until = std::max(b.hold_until, until);
            }
        }
        if (info.limited) {
            ++stats.limited;
            if (info.global) {
                ++stats.global_limited;
                global_hold = std::max(global_hold, now + seconds(info.retry_after_s));
            }
        }
        return line;
    }

    void log(const std::optional<std::pair<LogLevel, std::string>>& line) const {
        if (line) logger.log(line->first, line->second, fields());
    }
};

Scheduler::Scheduler(boost::asio::io_context& io, Logger& logger, SchedulerOptions options, Clock clock)
    : state_(std::make_unique<State>(io, logger, std::move(options), std::move(clock))) {}

Scheduler::~Scheduler() {
    shutdown();
    std::lock_guard lock(state_->mutex);
    state_->timer.cancel();
}

void Scheduler::configure_global(double rate_per_second, std::uint32_t burst) {
    std::vector<RateGrant> grants;
    {
        std::lock_guard lock(state_->mutex);
        const TimePoint now = state_->clock();
        state_->self = weak_from_this();
        state_->global_configured = true;
        state_->set_static("global", rate_per_second, burst, now);
        state_->evaluate(now, grants);
    }
    state_->deliver(std::move(grants));
}

void Scheduler::define(const std::string& name, double rate_per_second, std::uint32_t burst) {
    std::vector<RateGrant> grants;
    {
        std::lock_guard lock(state_->mutex);
        if (name == "global" && state_->global_configured) {
            state_->logger.debug("rate limits: the connector's default for \"global\" is ignored: limits: sets it",
                                 state_->fields());
            return;
        }
        const TimePoint now = state_->clock();
        state_->self = weak_from_this();
        state_->set_static(name, rate_per_second, burst, now);
        state_->evaluate(now, grants);
    }
    state_->deliver(std::move(grants));
}

void Scheduler::acquire(RateRequest request, RateGrant grant) {
    std::vector<RateGrant> grants;
    {
        std::lock_guard lock(state_->mutex);
        if (state_->shut_down) {
            boost::asio::post(state_->strand, [grant = std::move(grant), error = cancelled_error(
                                                                              state_->options.connection)]() {
                grant(error);
            });
            return;
        }
        const TimePoint now = state_->clock();
        state_->self = weak_from_this();
        auto& queue = request.priority == RequestPriority::live ? state_->live : state_->backfill;
        queue.push_back(Waiter{std::move(request), std::move(grant), now, false});
        state_->evaluate(now, grants);
    }
    state_->deliver(std::move(grants));
}

bool Scheduler::try_acquire(const RateRequest& request) {
    std::lock_guard lock(state_->mutex);
    if (state_->shut_down || !state_->live.empty()) return false;
    if (request.priority == RequestPriority::backfill && !state_->backfill.empty()) return false;
    State& s = *state_;
    // Nothing that depends on time applies (no rate, no bucket named or learned, never a global hold, nobody
    // observing): granted without reading the clock.
    const bool unlimited = s.global->unlimited() && request.buckets.empty() && s.routes.empty() && !s.observing &&
                           s.global_hold == TimePoint{};
    if (!unlimited) {
        Taken taken;
        std::optional<TimePoint> wake;
        if (!s.try_grant(request, s.clock(), taken, wake)) return false;
    }
    ++s.stats.granted;
    return true;
}

void Scheduler::observe(const std::string& route, const RateLimitInfo& info) {
    std::vector<RateGrant> grants;
    std::optional<std::pair<LogLevel, std::string>> line;
    {
        std::lock_guard lock(state_->mutex);
        const TimePoint now = state_->clock();
        state_->self = weak_from_this();
        line = state_->apply(route, info, now);
        if (!state_->shut_down) state_->evaluate(now, grants);
    }
    state_->log(line);
    state_->deliver(std::move(grants));
}

RateLimitStats Scheduler::stats() const {
    std::lock_guard lock(state_->mutex);
    RateLimitStats stats = state_->stats;
    stats.waiting = state_->live.size() + state_->backfill.size();
    return stats;
}

void Scheduler::shutdown() {
    std::deque<Waiter> cancelled;
    {
        std::lock_guard lock(state_->mutex);
        state_->shut_down = true;
        cancelled.swap(state_->live);
        for (Waiter& waiter : state_->backfill) cancelled.push_back(std::move(waiter));
        state_->backfill.clear();
        state_->timer_due.reset();
        ++state_->timer_generation;
        state_->timer.cancel();
    }
    for (Waiter& waiter : cancelled) waiter.grant(cancelled_error(state_->options.connection));
}

void Scheduler::wake() {
    std::vector<RateGrant> grants;
    {
        std::lock_guard lock(state_->mutex);
        if (state_->shut_down) return;
        state_->self = weak_from_this();
        state_->evaluate(state_->clock(), grants);
    }
    state_->deliver(std::move(grants));
}

std::optional<SteadyClock::time_point> Scheduler::next_wake() const {
    std::lock_guard lock(state_->mutex);
    return state_->timer_due;
}

}  // namespace switchboard::ratelimit
