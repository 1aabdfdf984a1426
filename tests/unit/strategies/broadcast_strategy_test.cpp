#include "broadcast_strategy.hpp"
#include "fake_directory.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace switchboard;
using switchboard::strategies::BroadcastStrategy;
using testing_support::envelope_to;
using testing_support::FakeDirectory;
using testing_support::names_of;

namespace {

struct Channels {
    FakeDirectory directory;
    Address ops_discord = directory.add_channel("ops-discord", "discord-main", "1001", {"ops", "alerts"});
    Address general_discord = directory.add_channel("general-discord", "discord-main", "1002");
    Address ops_irc = directory.add_channel("ops-irc", "irc", "#ops", {"ops"});
    Address news_telegram = directory.add_channel("news", "telegram", "-100200", {"alerts"});
};

}  // namespace

TEST_CASE("A broadcast with an empty or '*' scope goes to every channel in config order", "[strategy][broadcast]") {
    Channels c;
    BroadcastStrategy strategy;
    const std::vector<std::string> all{"ops-discord", "general-discord", "ops-irc", "news"};

    for (const char* scope : {"", "*"}) {
        INFO("scope '" << scope << "'");
        auto plan = strategy.plan(envelope_to(MessageKind::broadcast, scope), c.directory);
        REQUIRE(plan);
        CHECK(names_of(plan->recipients) == all);
        CHECK(plan->recipients[2].address == c.ops_irc);
        CHECK(plan->mode == DeliveryMode::best_effort);
        CHECK(plan->batch_size == 100);
    }
}

TEST_CASE("A broadcast to tag:NAME goes to the channels with that tag", "[strategy][broadcast]") {
    Channels c;
    BroadcastStrategy strategy;

    auto ops = strategy.plan(envelope_to(MessageKind::broadcast, "tag:ops"), c.directory);
    REQUIRE(ops);
    CHECK(names_of(ops->recipients) == std::vector<std::string>{"ops-discord", "ops-irc"});

    auto alerts = strategy.plan(envelope_to(MessageKind::broadcast, "tag:alerts"), c.directory);
    REQUIRE(alerts);
    CHECK(names_of(alerts->recipients) == std::vector<std::string>{"ops-discord", "news"});
}

TEST_CASE("A broadcast to a connection name goes to that connection's channels", "[strategy][broadcast]") {
    Channels c;
    BroadcastStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::broadcast, "discord-main"), c.directory);

    REQUIRE(plan);
    CHECK(names_of(plan->recipients) == std::vector<std::string>{"ops-discord", "general-discord"});
}

TEST_CASE("A broadcast leaves out the channel it came from", "[strategy][broadcast]") {
    Channels c;
    BroadcastStrategy strategy;

    SECTION("all channels") {
        auto plan = strategy.plan(envelope_to(MessageKind::broadcast, "*", c.ops_irc), c.directory);
        REQUIRE(plan);
        CHECK(names_of(plan->recipients) == std::vector<std::string>{"ops-discord", "general-discord", "news"});
    }
    SECTION("a scope whose only channel is the origin plans nobody, without an error") {
        auto plan = strategy.plan(envelope_to(MessageKind::broadcast, "telegram", c.news_telegram), c.directory);
        REQUIRE(plan);
        CHECK(plan->recipients.empty());
    }
}

TEST_CASE("A broadcast reaches each address once even when two channel names share it", "[strategy][broadcast]") {
    Channels c;
    c.directory.add_channel("ops-irc-alias", "irc", "#ops", {"ops"});
    BroadcastStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::broadcast, "tag:ops"), c.directory);

    REQUIRE(plan);
    CHECK(names_of(plan->recipients) == std::vector<std::string>{"ops-discord", "ops-irc"});
}

TEST_CASE("A broadcast scope that matches no channel fails with recipient_not_found", "[strategy][broadcast]") {
    Channels c;
    BroadcastStrategy strategy;

    SECTION("an unknown connection") {
        auto plan = strategy.plan(envelope_to(MessageKind::broadcast, "slack"), c.directory);
        REQUIRE_FALSE(plan);
        CHECK(plan.error().code == "recipient_not_found");
        CHECK_THAT(plan.error().message, Catch::Contains("broadcast scope 'slack' matches no channel"));
    }
    SECTION("an unknown tag") {
        auto plan = strategy.plan(envelope_to(MessageKind::broadcast, "tag:nope"), c.directory);
        REQUIRE_FALSE(plan);
        CHECK(plan.error().code == "recipient_not_found");
        CHECK_THAT(plan.error().message, Catch::Contains("tag 'nope'"));
    }
    SECTION("every channel of an empty directory") {
        FakeDirectory empty;
        auto plan = strategy.plan(envelope_to(MessageKind::broadcast, "*"), empty);
        REQUIRE_FALSE(plan);
        CHECK(plan.error().code == "recipient_not_found");
    }
}

TEST_CASE("The broadcast strategy's batch_size comes from its config, 100 by default", "[strategy][broadcast]") {
    Channels c;
    PluginConfig config;
    CHECK(BroadcastStrategy::batch_size_from(config) == 100);
    config.set("batch_size", std::int64_t{2});
    REQUIRE(BroadcastStrategy::check_config(config).empty());
    BroadcastStrategy strategy(BroadcastStrategy::batch_size_from(config));

    auto plan = strategy.plan(envelope_to(MessageKind::broadcast, "*"), c.directory);

    REQUIRE(plan);
    CHECK(plan->batch_size == 2);

    config.set("batch_size", std::int64_t{0});
    CHECK(BroadcastStrategy::check_config(config).size() == 1);
    CHECK(BroadcastStrategy::schema().keys.at(0).name == "batch_size");
}
