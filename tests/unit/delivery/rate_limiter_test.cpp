// The token bucket, driven by hand-made time points.

#include "routing/rate_limiter.hpp"

#include <catch2/catch.hpp>

using switchboard::routing::TokenBucket;
using namespace std::chrono_literals;

namespace {
const TokenBucket::Clock::time_point kStart{std::chrono::seconds(1000)};
}

TEST_CASE("A token bucket starts full and lets a burst through at once", "[rate_limiter]") {
    TokenBucket bucket(100, 10, kStart);
    for (int i = 0; i < 10; ++i) CHECK(bucket.try_take(kStart));
    CHECK_FALSE(bucket.try_take(kStart));
}

TEST_CASE("A token bucket refills at its rate and says when the next token is due", "[rate_limiter]") {
    TokenBucket bucket(100, 2, kStart);
    REQUIRE(bucket.try_take(kStart));
    REQUIRE(bucket.try_take(kStart));
    const auto next = bucket.next_token(kStart);
    CHECK(next >= kStart + 10ms);
    CHECK(next <= kStart + 10ms + 1us);
    CHECK_FALSE(bucket.try_take(kStart + 9ms));
    CHECK(bucket.try_take(next));  // exactly when promised, never a hair later
    CHECK_FALSE(bucket.try_take(next));
}

TEST_CASE("A token bucket never holds more than its burst", "[rate_limiter]") {
    TokenBucket bucket(100, 3, kStart);
    const auto later = kStart + 1h;
    for (int i = 0; i < 3; ++i) CHECK(bucket.try_take(later));
    CHECK_FALSE(bucket.try_take(later));
}

TEST_CASE("A token given back can be taken again", "[rate_limiter]") {
    TokenBucket bucket(1, 1, kStart);
    REQUIRE(bucket.try_take(kStart));
    CHECK_FALSE(bucket.try_take(kStart));
    bucket.give_back();
    CHECK(bucket.try_take(kStart));
}

TEST_CASE("A token bucket with no rate never makes anyone wait", "[rate_limiter]") {
    TokenBucket unlimited;
    CHECK(unlimited.unlimited());
    for (int i = 0; i < 1000; ++i) CHECK(unlimited.try_take(kStart));
    CHECK(unlimited.next_token(kStart) == kStart);
    TokenBucket zero(0, 5, kStart);
    CHECK(zero.unlimited());
}

TEST_CASE("A token bucket tolerates a clock reading older than its last one", "[rate_limiter]") {
    TokenBucket bucket(10, 1, kStart);
    REQUIRE(bucket.try_take(kStart + 1s));
    CHECK_FALSE(bucket.try_take(kStart));
    CHECK(bucket.try_take(kStart + 1100ms));
}
