#include "ratelimit/scheduler.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace switchboard;
using switchboard::ratelimit::Scheduler;
using switchboard::ratelimit::SchedulerOptions;
using switchboard::ratelimit::SteadyClock;
using namespace std::chrono_literals;

namespace {

class CapturingLogger final : public Logger {
public:
    void log(LogLevel level, std::string_view text, const LogFields&) noexcept override {
        std::lock_guard lock(mutex_);
        lines_.emplace_back(level, std::string(text));
    }
    [[nodiscard]] std::size_t count(LogLevel level) const {
        std::lock_guard lock(mutex_);
        return static_cast<std::size_t>(
            std::count_if(lines_.begin(), lines_.end(), [&](const auto& line) { return line.first == level; }));
    }

private:
    mutable std::mutex mutex_;
    std::vector<std::pair<LogLevel, std::string>> lines_;
};

RateRequest live(std::string route, std::vector<std::string> buckets = {}) {
    return RateRequest{std::move(route), std::move(buckets), RequestPriority::live};
}

RateRequest backfill(std::string route, std::vector<std::string> buckets = {}) {
    return RateRequest{std::move(route), std::move(buckets), RequestPriority::backfill};
}

RateLimitInfo window(std::string bucket, std::uint32_t limit, std::uint32_t remaining, double reset_after_s) {
    RateLimitInfo info;
    info.bucket = std::move(bucket);
    info.limit = limit;
    info.remaining = remaining;
    info.reset_after_s = reset_after_s;
    return info;
}

RateLimitInfo too_many(double retry_after_s, bool global = false) {
    RateLimitInfo info;
    info.limited = true;
    info.global = global;
    info.retry_after_s = retry_after_s;
    info.invalid = true;
    return info;
}

/// A scheduler on a fake clock and an io_context the test runs by hand: grants run when the test calls run().
struct Fixture {
    explicit Fixture(SchedulerOptions options = {}) {
        options.connection = "test";
        scheduler = std::make_shared<Scheduler>(io, logger, options, [this] { return now; });
    }

    /// Acquires @p request; its grant appends @p name to `granted` (or "name:code" to `refused`).
    void acquire(const std::string& name, RateRequest request) {
        scheduler->acquire(std::move(request), [this, name](Result<void> result) {
            if (result) {
                granted.push_back(name);
            } else {
                refused.push_back(name + ":" + result.error().code);
            }
        });
    }

    /// Runs the grants posted so far.
    void run() {
        io.restart();
        io.poll();
    }

    /// Moves the clock on and does what the timer does when it fires.
    void advance(SteadyClock::duration by) {
        now += by;
        scheduler->wake();
        run();
    }

    boost::asio::io_context io;
    CapturingLogger logger;
    SteadyClock::time_point now{std::chrono::seconds(1000)};
    std::shared_ptr<Scheduler> scheduler;
    std::vector<std::string> granted;
    std::vector<std::string> refused;
};

using Names = std::vector<std::string>;

}  // namespace

TEST_CASE("with no limits every request is granted at once, on the io_context", "[ratelimit]") {
    Fixture f;
    for (int i = 0; i < 5; ++i) f.acquire("r" + std::to_string(i), live("send #a"));
    CHECK(f.granted.empty());  // grants are posted, never called inside acquire()
    f.run();
    CHECK(f.granted == Names{"r0", "r1", "r2", "r3", "r4"});
    CHECK(f.scheduler->stats().granted == 5);
    CHECK(f.scheduler->stats().delayed == 0);
    CHECK_FALSE(f.scheduler->next_wake().has_value());
}

TEST_CASE("the configured global bucket lets its burst through, then one request per token", "[ratelimit]") {
    Fixture f;
    f.scheduler->configure_global(2, 3);
    for (int i = 0; i < 5; ++i) f.acquire("r" + std::to_string(i), live("send #" + std::to_string(i)));
    f.run();
    CHECK(f.granted == Names{"r0", "r1", "r2"});
    REQUIRE(f.scheduler->next_wake().has_value());
    CHECK(*f.scheduler->next_wake() - f.now >= 500ms);
    CHECK(*f.scheduler->next_wake() - f.now < 501ms);
    f.advance(499ms);
    CHECK(f.granted.size() == 3);
    f.advance(1ms);
    CHECK(f.granted.size() == 4);
    f.advance(500ms);
    CHECK(f.granted == Names{"r0", "r1", "r2", "r3", "r4"});
    CHECK_FALSE(f.scheduler->next_wake().has_value());
    const RateLimitStats stats = f.scheduler->stats();
    CHECK(stats.granted == 5);
    CHECK(stats.delayed == 2);
    CHECK(stats.waited_ms == 500 + 1000);
    CHECK(stats.waiting == 0);
}

TEST_CASE("a connector's global default applies unless limits: set the global bucket", "[ratelimit]") {
    SECTION("no limits: the connector's default holds") {
        Fixture f;
        f.scheduler->define("global", 1, 1);
        f.acquire("a", live("x"));
        f.acquire("b", live("y"));
        f.run();
        CHECK(f.granted == Names{"a"});
    }
    SECTION("limits: set (even to no limit) wins over the connector's default") {
        Fixture f;
        f.scheduler->configure_global(0, 10);
        f.scheduler->define("global", 1, 1);
        f.acquire("a", live("x"));
        f.acquire("b", live("y"));
        f.run();
        CHECK(f.granted == Names{"a", "b"});
    }
}

TEST_CASE("a named static bucket holds only the requests that name it", "[ratelimit]") {
    Fixture f;
    f.scheduler->define("chat 42", 1, 1);
    f.acquire("to-42-a", live("sendMessage 42", {"chat 42"}));
    f.acquire("to-42-b", live("sendMessage 42", {"chat 42"}));
    f.acquire("to-7", live("sendMessage 7", {"chat 7"}));  // never defined: holds nothing
    f.run();
    CHECK(f.granted == Names{"to-42-a", "to-7"});
    f.advance(1s);
    CHECK(f.granted == Names{"to-42-a", "to-7", "to-42-b"});
}

TEST_CASE("a redefined static bucket keeps what was spent", "[ratelimit]") {
    Fixture f;
    f.scheduler->define("chat", 1, 2);
    f.acquire("a", live("r", {"chat"}));
    f.acquire("b", live("r", {"chat"}));
    f.run();
    f.scheduler->define("chat", 1, 5);  // a bigger burst is no fresh burst
    f.acquire("c", live("r", {"chat"}));
    f.run();
    CHECK(f.granted == Names{"a", "b"});
    f.advance(1s);
    CHECK(f.granted == Names{"a", "b", "c"});
}

TEST_CASE("before a route's first response nothing learned holds it back", "[ratelimit]") {
    Fixture f;
    for (int i = 0; i < 10; ++i) f.acquire("r" + std::to_string(i), live("POST /channels/1/messages"));
    f.run();
    CHECK(f.granted.size() == 10);
}

TEST_CASE("after its first response a route sends while its bucket has requests left, then waits for the reset",
          "[ratelimit]") {
    Fixture f;
    const std::string route = "POST /channels/1/messages";
    f.acquire("first", live(route));
    f.run();
    f.scheduler->observe(route, window("abc:1", 5, 4, 2.0));
    for (int i = 0; i < 6; ++i) f.acquire("r" + std::to_string(i), live(route));
    f.run();
    CHECK(f.granted == Names{"first", "r0", "r1", "r2", "r3"});
    // Their responses confirm the count; nothing more goes before the reset.
    for (std::uint32_t left = 3;; --left) {
        f.scheduler->observe(route, window("abc:1", 5, left, 2.0));
        if (left == 0) break;
    }
    f.run();
    CHECK(f.granted.size() == 5);
    REQUIRE(f.scheduler->next_wake().has_value());
    CHECK(*f.scheduler->next_wake() - f.now >= 2s);
    f.advance(1999ms);
    CHECK(f.granted.size() == 5);
    f.advance(1ms);
    CHECK(f.granted == Names{"first", "r0", "r1", "r2", "r3", "r4", "r5"});
}

TEST_CASE("no grant while a learned bucket says wait, under a burst against a platform that counts", "[ratelimit]") {
    // The platform: 5 requests per fixed 1 s window per bucket; every response tells the truth at once.
    Fixture f;
    const std::string route = "POST /channels/9/messages";
    constexpr std::uint32_t kLimit = 5;
    auto window_start = f.now;
    std::uint32_t used = 0;
    std::uint32_t rejected = 0;
    std::size_t answered = 0;
    const auto respond = [&] {
        for (; answered < f.granted.size(); ++answered) {
            if (f.now >= window_start + 1s) {
                window_start += 1s * ((f.now - window_start) / 1s);
                used = 0;
            }
            const double reset_after = std::chrono::duration<double>(window_start + 1s - f.now).count();
            if (used == kLimit) {
                ++rejected;
                RateLimitInfo info = window("w", kLimit, 0, reset_after);
                info.limited = true;
                info.retry_after_s = reset_after;
                info.invalid = true;
                f.scheduler->observe(route, info);
            } else {
                ++used;
                f.scheduler->observe(route, window("w", kLimit, kLimit - used, reset_after));
            }
        }
        f.run();
    };
    f.acquire("probe", live(route));
    f.run();
    respond();
    for (int i = 0; i < 50; ++i) f.acquire("r" + std::to_string(i), live(route));
    f.run();
    respond();
    for (int step = 0; step < 200 && f.granted.size() < 51; ++step) {
        f.advance(50ms);
        respond();
    }
    CHECK(f.granted.size() == 51);
    CHECK(rejected == 0);
    // 51 requests at 5 per second need 10 more windows after the first.
    CHECK(f.now - SteadyClock::time_point(std::chrono::seconds(1000)) >= 10s);
    CHECK(f.now - SteadyClock::time_point(std::chrono::seconds(1000)) < 11s);
}

TEST_CASE("routes that report the same bucket id share one bucket", "[ratelimit]") {
    Fixture f;
    f.acquire("a0", live("route A"));
    f.acquire("b0", live("route B"));
    f.run();
    f.scheduler->observe("route A", window("shared", 2, 1, 1.0));
    f.scheduler->observe("route B", window("shared", 2, 0, 1.0));
    f.acquire("a1", live("route A"));
    f.acquire("b1", live("route B"));
    f.acquire("c", live("route C"));
    f.run();
    CHECK(f.granted == Names{"a0", "b0", "c"});
    f.advance(1s);
    CHECK(f.granted == Names{"a0", "b0", "c", "a1", "b1"});
}

TEST_CASE("responses that come out of order never count a window back up", "[ratelimit]") {
    Fixture f;
    const std::string route = "send #x";
    f.acquire("probe", live(route));
    f.run();
    f.scheduler->observe(route, window("x", 3, 2, 5.0));
    f.acquire("a", live(route));
    f.acquire("b", live(route));
    f.run();
    f.scheduler->observe(route, window("x", 3, 0, 5.0));  // b's answer first
    f.scheduler->observe(route, window("x", 3, 1, 5.0));  // then a's, older
    f.acquire("c", live(route));
    f.run();
    CHECK(f.granted == Names{"probe", "a", "b"});
    f.advance(5s);
    CHECK(f.granted == Names{"probe", "a", "b", "c"});
}

TEST_CASE("a 429 holds its route's bucket for retry_after while other routes go on", "[ratelimit]") {
    Fixture f;
    f.acquire("a0", live("route A"));
    f.run();
    f.scheduler->observe("route A", too_many(1.5));
    f.acquire("a1", live("route A"));
    f.acquire("b", live("route B"));
    f.run();
    CHECK(f.granted == Names{"a0", "b"});
    REQUIRE(f.scheduler->next_wake().has_value());
    CHECK(*f.scheduler->next_wake() - f.now == 1500ms);
    f.advance(1499ms);
    CHECK(f.granted.size() == 2);
    f.advance(1ms);
    CHECK(f.granted == Names{"a0", "b", "a1"});
    CHECK(f.scheduler->stats().limited == 1);
    CHECK(f.scheduler->stats().global_limited == 0);
}

TEST_CASE("a global 429 holds every route of the connection", "[ratelimit]") {
    Fixture f;
    f.acquire("a0", live("route A"));
    f.run();
    f.scheduler->observe("route A", too_many(2.0, true));
    f.acquire("b", live("route B"));
    f.acquire("c", backfill("route C"));
    f.run();
    CHECK(f.granted == Names{"a0"});
    f.advance(2s);
    CHECK(f.granted == Names{"a0", "b", "c"});
    CHECK(f.scheduler->stats().limited == 1);
    CHECK(f.scheduler->stats().global_limited == 1);
}

TEST_CASE("every live request is granted before any backfill request", "[ratelimit]") {
    SECTION("waiting for the same token") {
        Fixture f;
        f.scheduler->configure_global(1, 1);
        f.acquire("first", live("r"));
        f.acquire("b1", backfill("GET /channels/1/messages"));
        f.acquire("b2", backfill("GET /channels/2/messages"));
        f.acquire("l1", live("send #1"));
        f.acquire("l2", live("send #2"));
        f.run();
        CHECK(f.granted == Names{"first"});
        for (int i = 0; i < 4; ++i) f.advance(1s);
        CHECK(f.granted == Names{"first", "l1", "l2", "b1", "b2"});
    }
    SECTION("a backfill request never takes what a waiting live request waits for") {
        Fixture f;
        f.acquire("probe", live("route A"));
        f.run();
        f.scheduler->observe("route A", window("a", 1, 0, 1.0));
        f.acquire("backfill on A", backfill("route A"));
        f.acquire("live on A", live("route A"));
        f.acquire("backfill on B", backfill("route B"));  // needs nothing a live waiter waits for
        f.run();
        CHECK(f.granted == Names{"probe", "backfill on B"});
        f.advance(1s);
        CHECK(f.granted == Names{"probe", "backfill on B", "live on A"});
        f.scheduler->observe("route A", window("a", 1, 0, 1.0));
        f.advance(1s);
        CHECK(f.granted == Names{"probe", "backfill on B", "live on A", "backfill on A"});
    }
}

TEST_CASE("try_acquire grants at once only when it may go and nobody waits ahead of it", "[ratelimit]") {
    Fixture f;
    f.scheduler->configure_global(1, 2);
    CHECK(f.scheduler->try_acquire(live("r")));
    f.acquire("waiting backfill", backfill("h"));
    f.run();
    CHECK(f.granted == Names{"waiting backfill"});
    CHECK_FALSE(f.scheduler->try_acquire(live("r")));  // no token left
    f.acquire("waiting live", live("r"));
    f.run();
    f.advance(500ms);
    CHECK_FALSE(f.scheduler->try_acquire(backfill("h")));  // a live request waits
    f.advance(500ms);
    CHECK(f.granted == Names{"waiting backfill", "waiting live"});
    f.advance(1s);
    CHECK(f.scheduler->try_acquire(backfill("h")));
    CHECK(f.scheduler->stats().granted == 4);
}

TEST_CASE("invalid responses are counted and the log warns as the budget comes near", "[ratelimit]") {
    SchedulerOptions options;
    options.invalid_budget = 10;
    options.invalid_window = std::chrono::minutes(1);
    options.invalid_warn_fraction = 0.8;
    Fixture f(options);
    RateLimitInfo invalid;
    invalid.invalid = true;
    for (int i = 0; i < 7; ++i) f.scheduler->observe("r", invalid);
    CHECK(f.logger.count(LogLevel::warn) == 0);
    f.scheduler->observe("r", invalid);
    CHECK(f.logger.count(LogLevel::warn) == 1);
    f.scheduler->observe("r", invalid);
    CHECK(f.logger.count(LogLevel::warn) == 1);  // once per approach
    f.scheduler->observe("r", invalid);
    CHECK(f.logger.count(LogLevel::error) == 1);
    CHECK(f.scheduler->stats().invalid == 10);
    // A window later the count starts again, and so does the warning.
    f.now += std::chrono::minutes(1);
    for (int i = 0; i < 7; ++i) f.scheduler->observe("r", invalid);
    CHECK(f.logger.count(LogLevel::warn) == 1);
    f.scheduler->observe("r", invalid);
    CHECK(f.logger.count(LogLevel::warn) == 2);
    CHECK(f.scheduler->stats().invalid == 18);
}

TEST_CASE("a grant whose observe never comes stops counting as in flight after the timeout", "[ratelimit]") {
    SchedulerOptions options;
    options.in_flight_timeout = 10s;
    Fixture f(options);
    const std::string route = "send #lost";
    f.acquire("probe", live(route));
    f.run();
    f.scheduler->observe(route, window("lost", 1, 1, 0.5));
    f.acquire("sent, never answered", live(route));
    f.acquire("next", live(route));
    f.run();
    CHECK(f.granted == Names{"probe", "sent, never answered"});
    f.advance(1s);  // the window reset, but the unanswered request may have landed in it
    CHECK(f.granted.size() == 2);
    f.advance(9s);
    CHECK(f.granted == Names{"probe", "sent, never answered", "next"});
}

TEST_CASE("shutdown cancels every waiter at once, and every later request", "[ratelimit]") {
    Fixture f;
    f.scheduler->configure_global(1, 1);
    f.acquire("a", live("r"));
    f.acquire("b", live("r"));
    f.acquire("c", backfill("h"));
    f.run();
    f.scheduler->shutdown();
    CHECK(f.granted == Names{"a"});
    CHECK(f.refused == Names{"b:cancelled", "c:cancelled"});
    CHECK(f.scheduler->stats().waiting == 0);
    CHECK_FALSE(f.scheduler->next_wake().has_value());
    f.acquire("d", live("r"));
    CHECK_FALSE(f.scheduler->try_acquire(live("r")));
    f.run();
    CHECK(f.refused == Names{"b:cancelled", "c:cancelled", "d:cancelled"});
}

TEST_CASE("on the real clock the scheduler's timer wakes waiters on the io_context", "[ratelimit]") {
    boost::asio::io_context io;
    auto guard = boost::asio::make_work_guard(io);
    std::thread runner([&] { io.run(); });
    CapturingLogger logger;
    {
        auto scheduler = std::make_shared<Scheduler>(io, logger);
        scheduler->configure_global(20, 1);  // a token every 50 ms
        std::mutex mutex;
        std::condition_variable cv;
        std::vector<SteadyClock::time_point> grants;
        const auto start = SteadyClock::now();
        for (int i = 0; i < 3; ++i) {
            scheduler->acquire(live("send #a"), [&](Result<void> result) {
                REQUIRE(result.has_value());
                std::lock_guard lock(mutex);
                grants.push_back(SteadyClock::now());
                cv.notify_all();
            });
        }
        // A 429 on another route holds it 80 ms.
        scheduler->observe("send #b", too_many(0.08));
        scheduler->acquire(live("send #b"), [&](Result<void> result) {
            REQUIRE(result.has_value());
            std::lock_guard lock(mutex);
            grants.push_back(SteadyClock::now());
            cv.notify_all();
        });
        std::unique_lock lock(mutex);
        REQUIRE(cv.wait_for(lock, 5s, [&] { return grants.size() == 4; }));
        std::sort(grants.begin(), grants.end());
        CHECK(grants.back() - start >= 100ms);  // three from a burst of one at 20/s, and the hold, take >= 100 ms
        CHECK(scheduler->stats().delayed >= 2);
    }
    guard.reset();
    runner.join();
}

TEST_CASE("grants made before a route's first response count as in flight on the bucket it then reports",
          "[ratelimit]") {
    Fixture f;
    f.scheduler->observe("elsewhere", RateLimitInfo{});  // the connector reports its responses
    const std::string route = "send #new";
    for (int i = 0; i < 4; ++i) f.acquire("r" + std::to_string(i), live(route));
    f.run();
    CHECK(f.granted.size() == 4);  // nothing known yet
    // The first answer: 3 of 5 left, but three more of ours are still on their way.
    f.scheduler->observe(route, window("new", 5, 3, 1.0));
    f.acquire("next", live(route));
    f.run();
    CHECK(f.granted.size() == 4);
    CHECK(f.scheduler->next_wake().has_value());
    f.advance(1s);  // the window reset; the three in flight may still land in the new one, which leaves 2
    CHECK(f.granted.size() == 5);
    f.acquire("one more", live(route));
    f.acquire("too many", live(route));
    f.run();
    CHECK(f.granted.size() == 6);
}
