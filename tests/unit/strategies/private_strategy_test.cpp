#include "private_strategy.hpp"
#include "fake_directory.hpp"

#include <catch2/catch.hpp>

using namespace switchboard;
using switchboard::strategies::PrivateStrategy;
using testing_support::envelope_to;
using testing_support::FakeDirectory;

TEST_CASE("A private message to a known user is planned to exactly that person", "[strategy][private]") {
    FakeDirectory directory;
    const Address alice = directory.add_user("alice", "irc", "alice_");
    directory.add_user("bob", "discord-main", "4242");
    PrivateStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::private_message, "alice"), directory);

    REQUIRE(plan);
    REQUIRE(plan->recipients.size() == 1);
    CHECK(plan->recipients[0] == Recipient{"alice", alice});
    CHECK(plan->mode == DeliveryMode::best_effort);
    CHECK(plan->batch_size == 1);
}

TEST_CASE("A private message to an unknown user fails at once with recipient_not_found", "[strategy][private]") {
    FakeDirectory directory;
    directory.add_user("alice", "irc", "alice_");
    PrivateStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::private_message, "mallory"), directory);

    REQUIRE_FALSE(plan);
    CHECK(plan.error().code == "recipient_not_found");
    CHECK_FALSE(plan.error().retryable);
    CHECK_THAT(plan.error().message, Catch::Contains("no user named 'mallory'"));
}

TEST_CASE("A private message to a literal connection/@user address goes to that person", "[strategy][private]") {
    FakeDirectory directory;
    PrivateStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::private_message, "telegram/@12345"), directory);

    REQUIRE(plan);
    REQUIRE(plan->recipients.size() == 1);
    CHECK(plan->recipients[0].address == Address::user("telegram", "12345"));
    CHECK(plan->recipients[0].name == "telegram/@12345");
    CHECK(plan->batch_size == 1);
}

TEST_CASE("A private message to a channel address or a malformed address is refused as recipient_not_found",
          "[strategy][private]") {
    FakeDirectory directory;
    PrivateStrategy strategy;

    SECTION("a channel address is not a person") {
        auto plan = strategy.plan(envelope_to(MessageKind::private_message, "irc/#ops"), directory);
        REQUIRE_FALSE(plan);
        CHECK(plan.error().code == "recipient_not_found");
        CHECK_THAT(plan.error().message, Catch::Contains("connection/@user"));
    }
    SECTION("an address without a user after '@'") {
        auto plan = strategy.plan(envelope_to(MessageKind::private_message, "irc/@"), directory);
        REQUIRE_FALSE(plan);
        CHECK(plan.error().code == "recipient_not_found");
    }
    SECTION("an empty target") {
        auto plan = strategy.plan(envelope_to(MessageKind::private_message, ""), directory);
        REQUIRE_FALSE(plan);
        CHECK(plan.error().code == "recipient_not_found");
    }
}

TEST_CASE("A private plan leaves reachability to the delivery engine", "[strategy][private]") {
    FakeDirectory directory;
    const Address alice = directory.add_user("alice", "irc", "alice_");
    directory.set_reachable(alice, false);
    PrivateStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::private_message, "alice"), directory);

    REQUIRE(plan);
    CHECK(plan->recipients.size() == 1);
    CHECK(directory.reachable_calls() == 0);
}
