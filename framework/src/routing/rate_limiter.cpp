#include "routing/rate_limiter.hpp"

#include <algorithm>
#include <cmath>

namespace switchboard::routing {
namespace {
// Refills are computed in floating point: a token that is "due" may come out as 0.9999999. Counting that as a whole
// token keeps a timer woken at the computed moment from finding the bucket still (almost) empty and spinning.
constexpr double kEpsilon = 1e-9;
}  // namespace

TokenBucket::TokenBucket(double rate_per_second, std::uint32_t burst, Clock::time_point now) noexcept
    : rate_(rate_per_second > 0 ? rate_per_second : 0),
      capacity_(static_cast<double>(std::max<std::uint32_t>(burst, 1))),
      tokens_(capacity_),
      last_(now) {}

void TokenBucket::refill(Clock::time_point now) noexcept {
    if (now <= last_) return;  // a caller may pass a slightly older reading than the last one
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(capacity_, tokens_ + elapsed * rate_);
    last_ = now;
}

bool TokenBucket::try_take(Clock::time_point now) noexcept {
    if (unlimited()) return true;
    refill(now);
    if (tokens_ + kEpsilon < 1.0) return false;
    tokens_ = std::max(0.0, tokens_ - 1.0);
    return true;
}

void TokenBucket::give_back() noexcept {
    if (unlimited()) return;
    tokens_ = std::min(capacity_, tokens_ + 1.0);
}

TokenBucket::Clock::time_point TokenBucket::next_token(Clock::time_point now) noexcept {
    if (unlimited()) return now;
    refill(now);
    if (tokens_ + kEpsilon >= 1.0) return now;
    const double seconds = (1.0 - tokens_) / rate_;
    // Round up, so the timer never fires a hair before the token is there.
    const auto wait = std::chrono::nanoseconds(static_cast<std::int64_t>(std::ceil(seconds * 1e9)) + 1);
    return last_ + std::chrono::duration_cast<Clock::duration>(wait);
}

}  // namespace switchboard::routing
