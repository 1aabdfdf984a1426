// What only the memory store does: its plan table keeps a 32-bit hash of each plan id beside the plan's number, so
// two ids may share a slot's hash and must still be told apart by the ids themselves.

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
