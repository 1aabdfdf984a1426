#include "routing/router.hpp"
#include "routing_fixture.hpp"

#include <catch2/catch.hpp>

using namespace switchboard;
using switchboard::routing::ConfigDirectory;
using switchboard::routing::PlannedDelivery;
using switchboard::routing::Router;
using switchboard::testing_support::routing_config;

namespace {

/// Plans the group named by the target; fails like the real strategies for unknown names; throws on "boom".
class FakeGroupStrategy final : public Strategy {
public:
    Result<DeliveryPlan> plan(const Envelope& envelope, const Directory& directory) override {
        if (envelope.target == "boom") throw std::runtime_error("kaput");
        auto group = directory.group(envelope.target);
        if (!group) return fail("group_dissolved", "no group '" + envelope.target + "'");
        DeliveryPlan plan;
        plan.mode = group->delivery;
        for (const auto& member : group->members) {
            if (envelope.origin && member.address == *envelope.origin) continue;
            plan.recipients.push_back(member);
        }
        return plan;
    }
};

class FakePrivateStrategy final : public Strategy {
public:
    Result<DeliveryPlan> plan(const Envelope& envelope, const Directory& directory) override {
        auto user = directory.user(envelope.target);
        if (!user) return fail("recipient_not_found", "no user '" + envelope.target + "'");
        DeliveryPlan plan;
        plan.recipients.push_back({envelope.target, *user});
        return plan;
    }
};

struct Fixture {
    config::Config config = routing_config();
    ConfigDirectory directory{config};
    Router router{config,
                  directory,
                  {{"group", std::make_shared<FakeGroupStrategy>()}, {"private", std::make_shared<FakePrivateStrategy>()}},
                  nullptr,
                  [] { return std::int64_t{1'000'000}; }};
};

Envelope envelope(MessageKind kind, std::string target) {
    Envelope e;
    e.kind = kind;
    e.target = std::move(target);
    e.text = "hi";
    return e;
}

}  // namespace

TEST_CASE("the router plans with the strategy named like the envelope's kind and fills key and deadline",
          "[router]") {
    Fixture f;
    auto planned = f.router.plan(envelope(MessageKind::group, "ops"), {});
    REQUIRE(std::holds_alternative<PlannedDelivery>(planned));
    const auto& delivery = std::get<PlannedDelivery>(planned);
    CHECK(delivery.plan.recipients.size() == 3);
    CHECK(delivery.plan.mode == DeliveryMode::atomic);
    CHECK(!delivery.plan_id.empty());
    CHECK(delivery.deadline_ms == 1'000'000 + routing::kDefaultDeadlineMs);
    CHECK(delivery.text == "hi");

    Envelope keyed = envelope(MessageKind::private_message, "bob");
    keyed.idempotency_key = "k1";
    keyed.deadline_ms = 5;
    const auto planned_keyed = f.router.plan(keyed, {});
    const auto& mine = std::get<PlannedDelivery>(planned_keyed);
    CHECK(mine.plan_id == "k1");
    CHECK(mine.deadline_ms == 5);
}

TEST_CASE("a plan that fails becomes its report at once, with the status its code names", "[router]") {
    Fixture f;
    auto dissolved = f.router.plan(envelope(MessageKind::group, "gone"), {});
    REQUIRE(std::holds_alternative<DeliveryReport>(dissolved));
    CHECK(std::get<DeliveryReport>(dissolved).status == DeliveryStatus::group_dissolved);

    auto unknown = f.router.plan(envelope(MessageKind::private_message, "zed"), {});
    CHECK(std::get<DeliveryReport>(unknown).status == DeliveryStatus::recipient_not_found);

    auto no_strategy = f.router.plan(envelope(MessageKind::broadcast, ""), {});
    CHECK(std::get<DeliveryReport>(no_strategy).status == DeliveryStatus::rejected);
    CHECK(std::get<DeliveryReport>(no_strategy).error_code == "no_strategy");

    auto thrown = f.router.plan(envelope(MessageKind::group, "boom"), {});
    CHECK(std::get<DeliveryReport>(thrown).error_code == "strategy_failed");

    bool called = false;
    f.router.send(envelope(MessageKind::group, "gone"), {}, [&](DeliveryReport report) {
        called = true;
        CHECK(report.status == DeliveryStatus::group_dissolved);
    });
    CHECK(called);
}

TEST_CASE("the config's routes relay a channel's messages, naming the author and leaving out the origin",
          "[router]") {
    Fixture f;
    Message message;
    message.connection = "irc";
    message.channel = "#ops";
    message.id = "1";
    message.author.display_name = "nick";
    message.text = "deploy done";
    auto routed = f.router.routes_for(message);
    REQUIRE(routed.size() == 1);
    CHECK(routed[0].strategy == "group");
    CHECK(routed[0].envelope.text == "<nick> deploy done");
    auto planned = f.router.plan(routed[0].envelope, routed[0].strategy);
    const auto& delivery = std::get<PlannedDelivery>(planned);
    CHECK(delivery.plan.recipients.size() == 2);  // ops-discord and alice, not #ops itself

    message.channel = "#random";
    CHECK(f.router.routes_for(message).empty());
    message.channel = "#ops";
    message.kind = MessageKind::private_message;
    CHECK(f.router.routes_for(message).empty());
}
