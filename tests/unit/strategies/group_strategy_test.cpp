#include "group_strategy.hpp"
#include "fake_directory.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>
#include <vector>

using namespace switchboard;
using switchboard::strategies::GroupStrategy;
using testing_support::envelope_to;
using testing_support::FakeDirectory;
using testing_support::member;
using testing_support::names_of;

namespace {

struct OpsDirectory {
    FakeDirectory directory;
    Address discord = directory.add_channel("ops-discord", "discord-main", "123456789012345678");
    Address irc = directory.add_channel("ops-irc", "irc", "#ops");
    Address alice = directory.add_user("alice", "irc", "alice_");

    OpsDirectory() {
        directory.set_group("ops", {member("ops-discord", discord), member("ops-irc", irc), member("alice", alice)});
    }
};

}  // namespace

TEST_CASE("A group message is planned to every member in config order", "[strategy][group]") {
    OpsDirectory ops;
    GroupStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::group, "ops"), ops.directory);

    REQUIRE(plan);
    CHECK(names_of(plan->recipients) == std::vector<std::string>{"ops-discord", "ops-irc", "alice"});
    CHECK(plan->recipients[2].address == ops.alice);
    CHECK(plan->mode == DeliveryMode::best_effort);
    CHECK(plan->on_failure == OnFailure::keep);
    CHECK(plan->batch_size == 100);
}

TEST_CASE("A group message leaves out the channel it came from", "[strategy][group]") {
    OpsDirectory ops;
    GroupStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::group, "ops", ops.irc), ops.directory);

    REQUIRE(plan);
    CHECK(names_of(plan->recipients) == std::vector<std::string>{"ops-discord", "alice"});
}

TEST_CASE("A channel and a person with the same id on one connection are different recipients", "[strategy][group]") {
    FakeDirectory directory;
    const Address channel = directory.add_channel("c", "xmpp", "ops");
    const Address person = directory.add_user("u", "xmpp", "ops");
    directory.set_group("g", {member("c", channel), member("u", person)});
    GroupStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::group, "g"), directory);

    REQUIRE(plan);
    CHECK(names_of(plan->recipients) == std::vector<std::string>{"c", "u"});
}

TEST_CASE("A group's atomic delivery and compensate setting pass through to the plan", "[strategy][group]") {
    OpsDirectory ops;
    GroupStrategy strategy;

    SECTION("atomic with compensate") {
        ops.directory.set_group("ops", {member("ops-irc", ops.irc)}, DeliveryMode::atomic, OnFailure::compensate);
        auto plan = strategy.plan(envelope_to(MessageKind::group, "ops"), ops.directory);
        REQUIRE(plan);
        CHECK(plan->mode == DeliveryMode::atomic);
        CHECK(plan->on_failure == OnFailure::compensate);
    }
    SECTION("atomic, keeping what was sent") {
        ops.directory.set_group("ops", {member("ops-irc", ops.irc)}, DeliveryMode::atomic, OnFailure::keep);
        auto plan = strategy.plan(envelope_to(MessageKind::group, "ops"), ops.directory);
        REQUIRE(plan);
        CHECK(plan->mode == DeliveryMode::atomic);
        CHECK(plan->on_failure == OnFailure::keep);
    }
}

TEST_CASE("A group plan leaves reachability and atomic checks to the delivery engine", "[strategy][group]") {
    OpsDirectory ops;
    ops.directory.set_reachable(ops.irc, false);
    GroupStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::group, "ops"), ops.directory);

    REQUIRE(plan);
    CHECK(plan->recipients.size() == 3);
    CHECK(ops.directory.reachable_calls() == 0);
}

TEST_CASE("A message to a group that does not exist fails with group_dissolved", "[strategy][group]") {
    OpsDirectory ops;
    GroupStrategy strategy;

    SECTION("never defined") {
        auto plan = strategy.plan(envelope_to(MessageKind::group, "nope"), ops.directory);
        REQUIRE_FALSE(plan);
        CHECK(plan.error().code == "group_dissolved");
        CHECK_THAT(plan.error().message, Catch::Contains("group 'nope' does not exist (any more)"));
    }
    SECTION("dissolved by a reload") {
        REQUIRE(strategy.plan(envelope_to(MessageKind::group, "ops"), ops.directory));
        ops.directory.dissolve("ops");
        auto plan = strategy.plan(envelope_to(MessageKind::group, "ops"), ops.directory);
        REQUIRE_FALSE(plan);
        CHECK(plan.error().code == "group_dissolved");
    }
}

TEST_CASE("A group message to a channel name is planned to that one channel", "[strategy][group]") {
    OpsDirectory ops;
    GroupStrategy strategy(25);

    SECTION("to the channel") {
        auto plan = strategy.plan(envelope_to(MessageKind::group, "ops-discord"), ops.directory);
        REQUIRE(plan);
        REQUIRE(plan->recipients.size() == 1);
        CHECK(plan->recipients[0] == Recipient{"ops-discord", ops.discord});
        CHECK(plan->mode == DeliveryMode::best_effort);
        CHECK(plan->batch_size == 25);
    }
    SECTION("from that same channel: nobody gets their own message back") {
        auto plan = strategy.plan(envelope_to(MessageKind::group, "ops-discord", ops.discord), ops.directory);
        REQUIRE(plan);
        CHECK(plan->recipients.empty());
    }
}

TEST_CASE("An empty group is planned with zero recipients, not as an error", "[strategy][group]") {
    OpsDirectory ops;
    GroupStrategy strategy;

    SECTION("no members") {
        ops.directory.set_group("empty", {});
        auto plan = strategy.plan(envelope_to(MessageKind::group, "empty"), ops.directory);
        REQUIRE(plan);
        CHECK(plan->recipients.empty());
    }
    SECTION("only the origin") {
        ops.directory.set_group("self", {member("ops-irc", ops.irc)}, DeliveryMode::atomic);
        auto plan = strategy.plan(envelope_to(MessageKind::group, "self", ops.irc), ops.directory);
        REQUIRE(plan);
        CHECK(plan->recipients.empty());
        CHECK(plan->mode == DeliveryMode::atomic);
    }
}

TEST_CASE("The group strategy's batch_size comes from its config, 100 by default", "[strategy][group]") {
    SECTION("default") {
        PluginConfig config;
        CHECK(GroupStrategy::check_config(config).empty());
        CHECK(GroupStrategy::batch_size_from(config) == 100);
    }
    SECTION("set") {
        PluginConfig config;
        config.set("batch_size", std::int64_t{7});
        CHECK(GroupStrategy::batch_size_from(config) == 7);
        OpsDirectory ops;
        GroupStrategy strategy(GroupStrategy::batch_size_from(config));
        auto plan = strategy.plan(envelope_to(MessageKind::group, "ops"), ops.directory);
        REQUIRE(plan);
        CHECK(plan->batch_size == 7);
    }
    SECTION("out of range is a config problem on the key") {
        for (std::int64_t bad : {std::int64_t{0}, std::int64_t{-3}, std::int64_t{10'000'000}}) {
            PluginConfig config;
            config.set("batch_size", bad);
            auto problems = GroupStrategy::check_config(config);
            REQUIRE(problems.size() == 1);
            CHECK(problems[0].key == "batch_size");
            CHECK_THROWS_AS(GroupStrategy::batch_size_from(config), ErrorException);
        }
    }
    SECTION("the schema documents the key and its default") {
        const ConfigSchema schema = GroupStrategy::schema();
        REQUIRE(schema.keys.size() == 1);
        CHECK(schema.keys[0].name == "batch_size");
        CHECK(schema.keys[0].type == ValueType::integer);
        CHECK(schema.keys[0].default_value == "100");
        CHECK_FALSE(schema.keys[0].description.empty());
    }
}

TEST_CASE("A group of 100,000 members is planned correctly (its speed is measured in bench/)", "[strategy][group][scale]") {
    constexpr int kMembers = 100'000;
    FakeDirectory directory;
    std::vector<Recipient> members;
    members.reserve(kMembers);
    for (int i = 0; i < kMembers; ++i) {
        const std::string connection = i % 2 == 0 ? "discord-main" : "irc";
        members.push_back(member("m" + std::to_string(i), Address::user(connection, std::to_string(i))));
    }
    const Address origin = members[7].address;
    directory.set_group("everyone", std::move(members), DeliveryMode::atomic, OnFailure::compensate);
    GroupStrategy strategy(500);
    const Envelope envelope = envelope_to(MessageKind::group, "everyone", origin);

    const auto plan = strategy.plan(envelope, directory);

    REQUIRE(plan);
    REQUIRE(plan->recipients.size() == kMembers - 1);
    CHECK(plan->recipients.front().name == "m0");
    CHECK(plan->recipients[6].name == "m6");
    CHECK(plan->recipients[7].name == "m8");  // m7 is the origin
    CHECK(plan->recipients.back().name == "m99999");
    CHECK(plan->mode == DeliveryMode::atomic);
    CHECK(plan->on_failure == OnFailure::compensate);
    CHECK(plan->batch_size == 500);
    CHECK(std::none_of(plan->recipients.begin(), plan->recipients.end(),
                       [](const Recipient& r) { return r.name == "m7"; }));
}
