#pragma once
// The per-connection rate limiter of the delivery engine: a token bucket. It refills at `rate` tokens per second up
// to `burst` tokens and starts full, so a connection may send `burst` messages at once and `rate` per second after
// that. Time is passed in rather than read, so the engine reads the clock once per decision and tests drive it.
//
// Not thread-safe: the engine guards each connection's bucket with that connection's lock. Platform buckets learned
// from response headers and 429 handling (DESIGN §3) will sit beside it; this is the configured, pre-emptive part.

#include <chrono>
#include <cstdint>

namespace switchboard::routing {

class TokenBucket {
public:
    using Clock = std::chrono::steady_clock;

    /// An unlimited bucket: every try_take() succeeds.
    TokenBucket() = default;

    /// @p rate_per_second <= 0 means unlimited; @p burst 0 counts as 1. The bucket starts full at @p now.
    TokenBucket(double rate_per_second, std::uint32_t burst, Clock::time_point now) noexcept;

    /// True when the bucket never makes anyone wait.
    [[nodiscard]] bool unlimited() const noexcept { return rate_ <= 0; }

    /// Takes one token if one is available at @p now.
    [[nodiscard]] bool try_take(Clock::time_point now) noexcept;

    /// Puts back a token taken by try_take() that was not used (the send it was for was cancelled).
    void give_back() noexcept;

    /// When the next token is available: @p now if one is, otherwise the moment the refill completes one.
    [[nodiscard]] Clock::time_point next_token(Clock::time_point now) noexcept;

    /// Tokens available at the last refill (for tests and status).
    [[nodiscard]] double tokens() const noexcept { return tokens_; }

private:
    void refill(Clock::time_point now) noexcept;

    double rate_ = 0;      // tokens per second; <= 0: unlimited
    double capacity_ = 1;  // burst
    double tokens_ = 1;
    Clock::time_point last_{};
};

}  // namespace switchboard::routing
