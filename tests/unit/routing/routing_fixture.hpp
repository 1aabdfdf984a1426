#pragma once
// A small config for directory and router tests, built in code.

#include "config/config.hpp"

namespace switchboard::testing_support {

inline config::Config routing_config() {
    config::Config c;
    for (const char* name : {"discord", "irc"}) {
        config::ConnectionConfig connection;
        connection.name = name;
        c.connections.push_back(connection);
    }
    c.channels = {{"ops-discord", "discord", "1234", {"ops"}, {}},
                  {"ops-irc", "irc", "#ops", {"ops"}, {}},
                  {"random", "irc", "#random", {}, {}}};
    c.users = {{"alice", "irc", "alice", {}}, {"bob", "discord", "42", {}}};
    config::GroupConfig ops;
    ops.name = "ops";
    ops.members = {"ops-discord", "ops-irc", "alice"};
    ops.delivery = DeliveryMode::atomic;
    c.groups.push_back(ops);
    config::RouteConfig route;
    route.from = "ops-irc";
    route.to = {MessageKind::group, "ops"};
    route.strategy = "group";
    c.routes.push_back(route);
    return c;
}

}  // namespace switchboard::testing_support
