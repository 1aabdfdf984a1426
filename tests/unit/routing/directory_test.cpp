#include "routing/directory.hpp"
#include "routing_fixture.hpp"

#include <catch2/catch.hpp>

using namespace switchboard;
using switchboard::routing::ConfigDirectory;
using switchboard::testing_support::routing_config;

TEST_CASE("the directory maps logical channels, users and groups to addresses", "[directory]") {
    ConfigDirectory directory(routing_config());
    REQUIRE(directory.channel("ops-irc").has_value());
    CHECK(directory.channel("ops-irc")->address == Address::channel("irc", "#ops"));
    CHECK(directory.channel("ops-irc")->tags == std::vector<std::string>{"ops"});
    CHECK(!directory.channel("nope").has_value());
    CHECK(directory.user("bob") == std::optional<Address>(Address::user("discord", "42")));
    auto ops = directory.group("ops");
    REQUIRE(ops);
    CHECK(ops->delivery == DeliveryMode::atomic);
    REQUIRE(ops->members.size() == 3);
    CHECK(ops->members[2] == Recipient{"alice", Address::user("irc", "alice")});
    CHECK(directory.group("nope") == nullptr);
    CHECK(directory.channels().size() == 3);
    CHECK(directory.channel_name("irc", "#random") == std::optional<std::string>("random"));
}

TEST_CASE("group member lists are cached until a reload or a membership change", "[directory]") {
    ConfigDirectory directory(routing_config());
    auto first = directory.group("ops");
    CHECK(directory.group("ops") == first);  // the same snapshot, not a copy
    CHECK(directory.cached_groups() == 1);

    directory.set_members("irc", "#ops", {"alice"});
    CHECK(directory.cached_groups() == 0);
    CHECK(directory.group("ops") != first);

    auto changed = routing_config();
    changed.groups[0].members = {"ops-irc"};
    directory.reload(changed);
    CHECK(directory.group("ops")->members.size() == 1);
    CHECK(first->members.size() == 3);  // a snapshot handed out earlier stays valid
}

TEST_CASE("a group lists each address once, under the first member naming it", "[directory]") {
    auto config = routing_config();
    config.channels.push_back({"ops-alias", "irc", "#ops", {}, {}});  // a second name for the platform channel #ops
    config.channels.push_back({"ops-dm", "irc", "alice", {}, {}});    // a channel, not the person alice: kept
    config.groups[0].members = {"ops-irc", "alice", "ops-alias", "ops-discord", "ops-dm"};
    ConfigDirectory directory(config);

    const auto ops = directory.group("ops");

    REQUIRE(ops);
    CHECK(ops->members == std::vector<Recipient>{{"ops-irc", Address::channel("irc", "#ops")},
                                                 {"alice", Address::user("irc", "alice")},
                                                 {"ops-discord", Address::channel("discord", "1234")},
                                                 {"ops-dm", Address::channel("irc", "alice")}});
}

TEST_CASE("an address is reachable while its connection is up and, where membership is known, the person present",
          "[directory]") {
    ConfigDirectory directory(routing_config());
    const Address channel = Address::channel("irc", "#ops");
    const Address alice = Address::user("irc", "alice");
    CHECK(!directory.reachable(channel));  // not connected yet
    directory.set_connection("irc", true, ConnectorCapabilities{});
    CHECK(directory.reachable(channel));
    CHECK(directory.reachable(alice));  // membership unknown: assume reachable
    directory.set_members("irc", "#ops", {"carol"});
    CHECK(!directory.reachable(alice));
    directory.set_members("irc", "#random", {"alice"});
    CHECK(directory.reachable(alice));
    ConnectorCapabilities no_private;
    no_private.private_messages = false;
    directory.set_connection("irc", true, no_private);
    CHECK(!directory.reachable(alice));
    directory.set_connection("irc", false, ConnectorCapabilities{});
    CHECK(!directory.reachable(channel));
    CHECK(!directory.reachable(Address::channel("nowhere", "x")));
}
