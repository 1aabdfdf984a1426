#pragma once
// The redis store under test: each factory starts its own redis-server (tests/support/redis_server.hpp) on a free
// loopback port, with nothing kept on disk, and stops it when the test ends.

#include <redis_server.hpp>
#include <redis_store.hpp>

#include "store_test_support.hpp"

namespace switchboard::store_tests {

/// A dedup window no contract test reaches: their messages carry timestamps from 1970, which the default window
/// (14 days, counted from a message's timestamp) would treat as long expired. Expiry has its own tests.
inline constexpr std::chrono::milliseconds kCenturyWindow = std::chrono::hours(24 * 365 * 100);

struct RedisStoreFactory {
    testing_support::RedisServer server;
    RedisStoreFactory() {
        if (!server.start()) FAIL(server.why());
    }
    std::unique_ptr<Store> open() {
        stores::RedisOptions options;
        options.dedup_window = kCenturyWindow;
        return std::make_unique<stores::RedisStore>(server.url(), options);
    }
};

}  // namespace switchboard::store_tests
