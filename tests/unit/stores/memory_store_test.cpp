// What only the memory store does: its plan table keeps a 32-bit hash of each plan id beside the plan's number, so
// two ids may share a slot's hash and must still be told apart by the ids themselves; and new plans wait in a small
// table that is merged into the large one every few thousand plans, behind a filter of the large one's hashes.

#include "memory_store.hpp"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "store_test_support.hpp"

using namespace switchboard;
using namespace switchboard::store_tests;

namespace {

// Two plan ids whose hashes agree in the 32 bits the store keeps (the hash it computes: std::hash of the id). With 2^32
// values, a few hundred thousand ids contain such a pair by far the most likely; the search is deterministic.
std::optional<std::pair<std::string, std::string>> colliding_ids() {
    std::unordered_map<std::uint32_t, std::string> seen;
    for (int i = 0; i < 1'000'000; ++i) {
        std::string id = "plan-" + std::to_string(i);
        const auto hash = static_cast<std::uint32_t>(std::hash<std::string_view>{}(id));
        auto [it, added] = seen.try_emplace(hash, id);
        if (!added) return std::pair{it->second, std::move(id)};
    }
    return std::nullopt;
}

}  // namespace

TEST_CASE("the memory store tells apart plans whose ids share the hash its table keeps", "[store]") {
    const auto ids = colliding_ids();
    REQUIRE(ids);
    const auto& [first, second] = *ids;
    REQUIRE(first != second);
    stores::MemoryStore store;
    ok(store.outbox_add(std::vector{outbox_entry(first, "#a", 100)}));
    ok(store.outbox_add(std::vector{outbox_entry(second, "#b", 100)}));

    OutboxEntry sent = outbox_entry(first, "#a", 100);
    sent.state = OutboxState::sent;
    ok(store.outbox_update(std::vector{sent}));

    const auto first_entries = ok(store.outbox_plan(first));
    REQUIRE(first_entries.size() == 1);
    CHECK(first_entries[0].plan_id == first);
    CHECK(first_entries[0].recipient.target == "#a");
    CHECK(first_entries[0].state == OutboxState::sent);
    const auto second_entries = ok(store.outbox_plan(second));
    REQUIRE(second_entries.size() == 1);
    CHECK(second_entries[0].plan_id == second);
    CHECK(second_entries[0].recipient.target == "#b");
    CHECK(second_entries[0].state == OutboxState::pending);
    // An entry of one is not found under the other.
    OutboxEntry crossed = outbox_entry(second, "#a", 100);
    crossed.state = OutboxState::sent;
    CHECK_FALSE(store.outbox_update(std::vector{crossed}).has_value());
    const auto pending = ok(store.outbox_pending());
    REQUIRE(pending.size() == 1);
    CHECK(pending[0].plan_id == second);
}

TEST_CASE("the memory store finds every plan, before and after its new plans are merged into its large table",
          "[store]") {
    // More plans than the small table holds (4,096), so that some were merged and some were not; the colliding pair
    // lands on both sides of a merge.
    const auto ids = colliding_ids();
    REQUIRE(ids);
    constexpr int kPlans = 10'000;
    stores::MemoryStore store;
    ok(store.outbox_add(std::vector{outbox_entry(ids->first, "#first", 100)}));
    for (int i = 0; i < kPlans; ++i) {
        ok(store.outbox_add(std::vector{outbox_entry("p" + std::to_string(i), "#r" + std::to_string(i), 100)}));
    }
    ok(store.outbox_add(std::vector{outbox_entry(ids->second, "#second", 100)}));
    for (int i = 0; i < kPlans; i += 2) {
        OutboxEntry sent = outbox_entry("p" + std::to_string(i), "#r" + std::to_string(i), 100);
        sent.state = OutboxState::sent;
        ok(store.outbox_update(std::vector{sent}));
    }

    int found = 0;
    for (int i = 0; i < kPlans; ++i) {
        const auto entries = ok(store.outbox_plan("p" + std::to_string(i)));
        if (entries.size() == 1 && entries[0].recipient.target == "#r" + std::to_string(i) &&
            entries[0].state == (i % 2 == 0 ? OutboxState::sent : OutboxState::pending)) {
            ++found;
        }
    }
    CHECK(found == kPlans);
    CHECK(ok(store.outbox_plan("p-none")).empty());
    REQUIRE(ok(store.outbox_plan(ids->first)).size() == 1);
    CHECK(ok(store.outbox_plan(ids->first))[0].recipient.target == "#first");
    REQUIRE(ok(store.outbox_plan(ids->second)).size() == 1);
    CHECK(ok(store.outbox_plan(ids->second))[0].recipient.target == "#second");
    CHECK(ok(store.outbox_pending()).size() == kPlans / 2 + 2);

    // An old plan added again is the same plan: what it had comes back, and nothing is added twice.
    OutboxPlanAdd again;
    const Address target = Address::channel("irc", "#r0");
    const OutboxRecipient recipient{&target, OutboxState::pending, {}};
    again.plan_id = "p0";
    again.text = "to #r0";
    again.created_ms = 100;
    again.recipients = std::span(&recipient, 1);
    const auto before = ok(store.outbox_add_plan(again));
    REQUIRE(before.size() == 1);
    CHECK(before[0].state == OutboxState::sent);
    CHECK(ok(store.outbox_plan("p0")).size() == 1);

    // Prune empties the sent plans of both tables; their ids are new plans again, the others are kept.
    ok(store.prune(200));
    CHECK(ok(store.outbox_plan("p0")).empty());
    CHECK(ok(store.outbox_plan("p" + std::to_string(kPlans - 2))).empty());
    CHECK(ok(store.outbox_plan("p1")).size() == 1);
    CHECK(ok(store.outbox_plan("p" + std::to_string(kPlans - 1))).size() == 1);
    CHECK(ok(store.outbox_pending()).size() == kPlans / 2 + 2);
    CHECK(ok(store.outbox_add_plan(again)).empty());
    CHECK(ok(store.outbox_plan("p0")).size() == 1);
}
