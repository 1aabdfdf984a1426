// What the redis store offers several hosts (DESIGN §8). Connection leases: one holder at a time, renewal, lapse and
// takeover with a larger fencing token, and fencing — a store object that lost a lease writes nothing more for that
// connection. Shared queues: each item to one consumer of a group, reclaimed from a consumer that went quiet,
// gone once confirmed. Two RedisStore objects on one server stand for two hosts.

#include <chrono>
#include <thread>

#include "redis_test_support.hpp"

using namespace switchboard;
using namespace switchboard::store_tests;
using stores::RedisOptions;
using stores::RedisStore;
using testing_support::RedisServer;

namespace {

std::unique_ptr<RedisStore> open_store(const RedisServer& server) {
    RedisOptions options;
    options.dedup_window = kCenturyWindow;
    return std::make_unique<RedisStore>(server.url(), options);
}

// A redis-server of its own and two stores on it: two hosts.
struct TwoStores {
    RedisServer server;
    std::unique_ptr<RedisStore> first;
    std::unique_ptr<RedisStore> second;
    TwoStores() {
        if (!server.start()) FAIL(server.why());
        first = open_store(server);
        second = open_store(server);
    }
};

constexpr std::chrono::milliseconds kTtl{400};

}  // namespace

TEST_CASE("one host holds a connection's lease; another takes it over only once it lapsed, with a larger token",
          "[redis][lease]") {
    TwoStores stores;
    RedisStore& a = *stores.first;
    RedisStore& b = *stores.second;
    REQUIRE(a.leases() == &a);

    const auto first = ok(a.acquire("irc", "host-a", kTtl));
    REQUIRE(first);
    CHECK(first->holder == "host-a");
    CHECK(first->token >= 1);
    CHECK_FALSE(ok(b.acquire("irc", "host-b", kTtl)));  // held
    const auto seen = ok(b.holder("irc"));
    REQUIRE(seen);
    CHECK(seen->holder == "host-a");
    CHECK(seen->token == first->token);
    CHECK(seen->remaining_ms > 0);
    CHECK(seen->remaining_ms <= kTtl.count());

    // Renewed, it outlives its first time to live.
    for (int i = 0; i < 4; ++i) {
        std::this_thread::sleep_for(kTtl / 4);
        CHECK(ok(a.renew(*first, kTtl)));
    }
    CHECK_FALSE(ok(b.acquire("irc", "host-b", kTtl)));

    // Not renewed, it lapses; the other takes it with a larger token, and the first one's renewal fails.
    std::this_thread::sleep_for(kTtl + std::chrono::milliseconds(100));
    CHECK_FALSE(ok(a.holder("irc")));
    const auto second = ok(b.acquire("irc", "host-b", kTtl));
    REQUIRE(second);
    CHECK(second->token > first->token);
    CHECK_FALSE(ok(a.renew(*first, kTtl)));

    // Released, it is free at once; a lease of another connection is independent.
    ok(b.release(*second));
    CHECK_FALSE(ok(b.holder("irc")));
    CHECK(ok(a.acquire("discord", "host-a", kTtl)));
    CHECK_FALSE(ok(b.acquire("discord", "host-b", kTtl)));
}

TEST_CASE("a host that lost a connection's lease is fenced: its commits and state writes for it change nothing",
          "[redis][lease]") {
    TwoStores stores;
    RedisStore& old_holder = *stores.first;
    RedisStore& successor = *stores.second;

    const auto lease = ok(old_holder.acquire("irc", "host-a", kTtl));
    REQUIRE(lease);
    ok(old_holder.commit(std::vector{processed(make_message("#ops", "m1", 1))}));
    ok(old_holder.put_connection_state("irc", "session", "a-1"));

    std::this_thread::sleep_for(kTtl + std::chrono::milliseconds(100));  // the old holder "paused"
    REQUIRE(ok(successor.acquire("irc", "host-b", kTtl)));
    ok(successor.commit(std::vector{processed(make_message("#ops", "m2", 2))}));
    ok(successor.put_connection_state("irc", "session", "b-1"));

    // The old holder wakes and tries to write: refused, with an error naming the connection, and nothing changed.
    auto committed = old_holder.commit(std::vector{processed(make_message("#ops", "m3", 3), {{"bot", "k", "v"}},
                                                             {outbox_entry("reply-m3", "#ops", 3)})});
    REQUIRE_FALSE(committed.has_value());
    CHECK(committed.error().code == "lease_lost");
    CHECK_FALSE(committed.error().retryable);
    CHECK(committed.error().message.find("'irc'") != std::string::npos);
    auto state = old_holder.put_connection_state("irc", "session", "a-2");
    REQUIRE_FALSE(state.has_value());
    CHECK(state.error().code == "lease_lost");

    CHECK_FALSE(ok(successor.is_processed({"irc", "#ops", "m3"})));
    CHECK(ok(successor.cursor("irc", "#ops")) == Cursor{"m2", 2});
    CHECK(ok(successor.connection_state("irc", "session")) == std::optional<std::string>("b-1"));
    CHECK_FALSE(ok(successor.get_value("bot", "k")));
    CHECK(ok(successor.outbox_pending()).empty());

    // Writes for a connection it never leased are not fenced; acquiring the lease again lifts the fence.
    auto other = make_message("#ops", "x1", 1);
    other.connection = "console";
    ok(old_holder.commit(std::vector{processed(other)}));
    CHECK(ok(successor.is_processed({"console", "#ops", "x1"})));
    std::this_thread::sleep_for(kTtl + std::chrono::milliseconds(100));
    REQUIRE(ok(old_holder.acquire("irc", "host-a", kTtl)));
    ok(old_holder.commit(std::vector{processed(make_message("#ops", "m3", 3))}));
    CHECK(ok(successor.is_processed({"irc", "#ops", "m3"})));
}

TEST_CASE("a host restarted with the same id takes its lease back at once and fences the process before it",
          "[redis][lease]") {
    TwoStores stores;
    RedisStore& before = *stores.first;
    RedisStore& after = *stores.second;

    const auto old_lease = ok(before.acquire("irc", "host-a", std::chrono::seconds(30)));
    REQUIRE(old_lease);
    const auto new_lease = ok(after.acquire("irc", "host-a", std::chrono::seconds(30)));
    REQUIRE(new_lease);
    CHECK(new_lease->token > old_lease->token);
    CHECK_FALSE(ok(before.renew(*old_lease, std::chrono::seconds(30))));
    auto committed = before.commit(std::vector{processed(make_message("#ops", "m1", 1))});
    REQUIRE_FALSE(committed.has_value());
    CHECK(committed.error().code == "lease_lost");
    ok(after.commit(std::vector{processed(make_message("#ops", "m1", 1))}));
    CHECK(ok(before.is_processed({"irc", "#ops", "m1"})));
}

TEST_CASE("a shared queue gives each item to one consumer of a group, and a quiet consumer's items to another",
          "[redis][queue]") {
    TwoStores stores;
    SharedQueues& a = *stores.first->queues();
    SharedQueues& b = *stores.second->queues();
    const std::vector<std::string> queues{"inbound:irc", "inbound:discord"};
    const auto never = std::chrono::hours(1);

    CHECK(ok(a.take(queues, "bots", "host-a", 10, never)).empty());  // nothing yet; the group is made
    for (int i = 0; i < 5; ++i) ok(a.push("inbound:irc", "irc " + std::to_string(i)));
    ok(b.push("inbound:discord", "discord 0"));

    const auto first = ok(a.take(queues, "bots", "host-a", 3, never));  // at most 3 of each queue
    REQUIRE(first.size() == 4);
    CHECK(first[0].queue == "inbound:irc");
    CHECK(first[0].payload == "irc 0");
    CHECK(first[2].payload == "irc 2");
    CHECK(first[3].queue == "inbound:discord");
    CHECK(first[3].payload == "discord 0");
    const auto second = ok(b.take(queues, "bots", "host-b", 10, never));
    std::vector<std::string> payloads;
    for (const QueueItem& item : second) payloads.push_back(item.payload);
    CHECK(payloads == std::vector<std::string>{"irc 3", "irc 4"});
    CHECK(ok(b.take(queues, "bots", "host-b", 10, never)).empty());

    // host-b confirms its items; host-a confirms two of its irc items and goes quiet: after reclaim_after,
    // host-b gets what host-a still held.
    std::vector<std::string> of_b;
    for (const QueueItem& item : second) of_b.push_back(item.id);
    ok(b.done("inbound:irc", "bots", of_b));
    std::vector<std::string> confirmed{first[0].id, first[1].id};
    ok(a.done("inbound:irc", "bots", confirmed));
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    const auto reclaimed = ok(b.take(queues, "bots", "host-b", 10, std::chrono::milliseconds(100)));
    REQUIRE(reclaimed.size() == 2);
    CHECK(reclaimed[0].payload == "irc 2");
    CHECK(reclaimed[0].id == first[2].id);
    CHECK(reclaimed[1].payload == "discord 0");

    // Confirmed items are gone from the queue; another group sees every item still there.
    std::vector<std::string> last{reclaimed[0].id};  // discord 0 stays unconfirmed
    ok(b.done("inbound:irc", "bots", last));
    CHECK(stores.server.command({"XLEN", "switchboard:queue:inbound%3Airc"}) == "0");
    CHECK(ok(a.take(queues, "audit", "host-a", 10, never)).size() == 1);  // discord 0, not confirmed by "bots"
}
