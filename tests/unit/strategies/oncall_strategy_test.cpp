#include "oncall_strategy.hpp"
#include "fake_directory.hpp"

#include <catch2/catch.hpp>

#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace switchboard;
using switchboard::examples::OnCallStrategy;
using testing_support::envelope_to;
using testing_support::FakeDirectory;
using testing_support::member;

namespace {

struct Team {
    FakeDirectory directory;
    Address ann = directory.add_user("ann", "irc", "ann");
    Address bob = directory.add_user("bob", "discord-main", "2002");
    Address cid = directory.add_user("cid", "telegram", "3003");
    Address dee = directory.add_user("dee", "irc", "dee");

    Team() {
        directory.set_group("oncall-team",
                            {member("ann", ann), member("bob", bob), member("cid", cid), member("dee", dee)});
    }

    // The names @p count plans pick, in order; "!" + code for a failed plan.
    std::vector<std::string> picks(OnCallStrategy& strategy, int count, const std::string& group = "oncall-team") {
        std::vector<std::string> names;
        for (int i = 0; i < count; ++i) {
            auto plan = strategy.plan(envelope_to(MessageKind::group, group), directory);
            if (!plan) {
                names.push_back("!" + plan.error().code);
                continue;
            }
            REQUIRE(plan->recipients.size() == 1);
            names.push_back(plan->recipients[0].name);
        }
        return names;
    }
};

using Names = std::vector<std::string>;

}  // namespace

TEST_CASE("The on-call strategy picks one member per message, in turn, wrapping around", "[strategy][oncall]") {
    Team team;
    OnCallStrategy strategy;

    CHECK(team.picks(strategy, 6) == Names{"ann", "bob", "cid", "dee", "ann", "bob"});

    auto plan = strategy.plan(envelope_to(MessageKind::group, "oncall-team"), team.directory);
    REQUIRE(plan);
    CHECK(plan->recipients.size() == 1);
    CHECK(plan->recipients[0].address == team.cid);
    CHECK(plan->mode == DeliveryMode::best_effort);
    CHECK(plan->batch_size == 1);
}

TEST_CASE("The on-call strategy skips unreachable members and gives them their turn once back", "[strategy][oncall]") {
    Team team;
    OnCallStrategy strategy;
    team.directory.set_reachable(team.bob, false);
    team.directory.set_reachable(team.dee, false);

    CHECK(team.picks(strategy, 4) == Names{"ann", "cid", "ann", "cid"});

    team.directory.set_reachable(team.dee, true);
    CHECK(team.picks(strategy, 3) == Names{"dee", "ann", "cid"});
}

TEST_CASE("The on-call strategy wraps around past unreachable members at the end of the list", "[strategy][oncall]") {
    Team team;
    OnCallStrategy strategy;
    CHECK(team.picks(strategy, 3) == Names{"ann", "bob", "cid"});
    team.directory.set_reachable(team.dee, false);
    team.directory.set_reachable(team.ann, false);

    CHECK(team.picks(strategy, 2) == Names{"bob", "cid"});
}

TEST_CASE("The on-call strategy fails with recipient_not_found when nobody is reachable", "[strategy][oncall]") {
    Team team;
    OnCallStrategy strategy;
    for (const Address& a : {team.ann, team.bob, team.cid, team.dee}) team.directory.set_reachable(a, false);

    auto plan = strategy.plan(envelope_to(MessageKind::group, "oncall-team"), team.directory);

    REQUIRE_FALSE(plan);
    CHECK(plan.error().code == "recipient_not_found");
    CHECK_THAT(plan.error().message, Catch::Contains("ann") && Catch::Contains("dee"));

    team.directory.set_reachable(team.cid, true);
    CHECK(team.picks(strategy, 2) == Names{"cid", "cid"});
}

TEST_CASE("The on-call strategy fails with group_dissolved for an unknown group", "[strategy][oncall]") {
    Team team;
    OnCallStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::group, "nobody-here"), team.directory);

    REQUIRE_FALSE(plan);
    CHECK(plan.error().code == "group_dissolved");
}

TEST_CASE("The on-call strategy fails with recipient_not_found for a group without members", "[strategy][oncall]") {
    Team team;
    team.directory.set_group("empty", {});
    OnCallStrategy strategy;

    auto plan = strategy.plan(envelope_to(MessageKind::group, "empty"), team.directory);

    REQUIRE_FALSE(plan);
    CHECK(plan.error().code == "recipient_not_found");
}

TEST_CASE("The on-call strategy never picks the message's origin", "[strategy][oncall]") {
    Team team;
    OnCallStrategy strategy;

    for (int i = 0; i < 8; ++i) {
        auto plan = strategy.plan(envelope_to(MessageKind::group, "oncall-team", team.bob), team.directory);
        REQUIRE(plan);
        CHECK(plan->recipients[0].name != "bob");
    }
}

TEST_CASE("The on-call strategy keeps one rotation per group", "[strategy][oncall]") {
    Team team;
    team.directory.set_group("pair", {member("dee", team.dee), member("cid", team.cid)});
    OnCallStrategy strategy;

    CHECK(team.picks(strategy, 2) == Names{"ann", "bob"});
    CHECK(team.picks(strategy, 1, "pair") == Names{"dee"});
    CHECK(team.picks(strategy, 1) == Names{"cid"});
    CHECK(team.picks(strategy, 2, "pair") == Names{"cid", "dee"});
}

TEST_CASE("The on-call rotation follows the member when the group's membership changes", "[strategy][oncall]") {
    Team team;
    OnCallStrategy strategy;
    CHECK(team.picks(strategy, 2) == Names{"ann", "bob"});

    SECTION("a member before the last pick leaves: the next after bob still goes next") {
        team.directory.set_group("oncall-team",
                                 {member("bob", team.bob), member("cid", team.cid), member("dee", team.dee)});
        CHECK(team.picks(strategy, 3) == Names{"cid", "dee", "bob"});
    }
    SECTION("the last pick leaves: whoever took its place goes next") {
        team.directory.set_group("oncall-team",
                                 {member("ann", team.ann), member("cid", team.cid), member("dee", team.dee)});
        CHECK(team.picks(strategy, 3) == Names{"cid", "dee", "ann"});
    }
    SECTION("the group shrinks below the last position") {
        team.directory.set_group("oncall-team", {member("dee", team.dee)});
        CHECK(team.picks(strategy, 2) == Names{"dee", "dee"});
    }
}

TEST_CASE("The on-call strategy hands out turns evenly when planned from several threads", "[strategy][oncall]") {
    Team team;
    OnCallStrategy strategy;
    constexpr int kThreads = 4;
    constexpr int kPlansPerThread = 1000;
    std::vector<std::map<std::string, int>> counts(kThreads);
    std::vector<int> failures(kThreads, 0);

    {
        std::vector<std::jthread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&, t] {
                for (int i = 0; i < kPlansPerThread; ++i) {
                    auto plan = strategy.plan(envelope_to(MessageKind::group, "oncall-team"), team.directory);
                    if (plan && plan->recipients.size() == 1) {
                        ++counts[t][plan->recipients[0].name];
                    } else {
                        ++failures[t];
                    }
                }
            });
        }
    }

    std::map<std::string, int> total;
    for (const auto& per_thread : counts) {
        for (const auto& [name, n] : per_thread) total[name] += n;
    }
    for (int f : failures) CHECK(f == 0);
    // 4,000 plans over 4 reachable members in strict rotation: exactly 1,000 each.
    CHECK(total == std::map<std::string, int>{{"ann", 1000}, {"bob", 1000}, {"cid", 1000}, {"dee", 1000}});
}
