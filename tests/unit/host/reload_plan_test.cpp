// What a reload changes (host/reload.hpp): the running config and plugins compared with the new ones.

#include <algorithm>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "fake_plugins.hpp"
#include "host/reload.hpp"
#include "plugin/registry.hpp"

using namespace switchboard;
namespace fakes = switchboard::config::testing;
using Names = std::vector<std::string>;
using host::plan_reload;

namespace {

const ConfigSchema* empty_schema() noexcept {
    static const ConfigSchema schema{};
    return &schema;
}

PluginObject* no_object(const PluginContext&, const PluginConfig&, Error& error) noexcept {
    error = Error{"unused", "these tests create nothing"};
    return nullptr;
}

// The fakes with a factory and a schema, as the registry accepts them. Each call makes new descriptors: a registry made
// from a second call holds "libraries" that differ from the first's, as a changed plugin file does.
struct FakeLibraries {
    std::vector<PluginDescriptor> descriptors;
    FakeLibraries() {
        for (const PluginDescriptor* fake :
             {&fakes::kSqlite, &fakes::kMemoryStore, &fakes::kConsole, &fakes::kIrc, &fakes::kNone, &fakes::kEcho,
              &fakes::kHelp, &fakes::kGroupStrategy, &fakes::kPrivateStrategy, &fakes::kBroadcastStrategy}) {
            descriptors.push_back(*fake);
            descriptors.back().create = &no_object;
            if (descriptors.back().schema == nullptr) descriptors.back().schema = &empty_schema;
        }
    }
    // A registry of these, but with @p changed taken from @p other (its file "changed").
    void fill(plugin::Registry& registry, const FakeLibraries* other = nullptr, const std::string& changed = {}) const {
        for (std::size_t i = 0; i < descriptors.size(); ++i) {
            const bool from_other = other != nullptr && changed == descriptors[i].name;
            const auto refusal = registry.add(from_other ? other->descriptors[i] : descriptors[i]);
            INFO((refusal ? refusal->to_string() : std::string()));
            REQUIRE_FALSE(refusal);
        }
    }
};

const std::string kBase = R"(
store: { plugin: memory }
connections:
  - { name: irc, plugin: irc, server: irc.example.org, nick: bot }
  - { name: console, plugin: console }
channels:
  ops: { connection: irc, id: "#ops" }
  dev: { connection: irc, id: "#dev" }
  local: { connection: console, id: stdin }
groups:
  team: { members: [ops, local] }
routes:
  - { from: ops, to: { group: team } }
bots:
  - { plugin: echo, channels: [ops] }
  - { plugin: help }
)";

config::Config load(const std::string& text, const plugin::Registry& registry) {
    auto result = config::load_config_text(text, "test.yaml", registry);
    std::string errors;
    for (const auto& error : result.errors) errors += error.to_string() + "\n";
    INFO(errors);
    REQUIRE(result.config);
    return std::move(*result.config);
}

// @p text with @p from replaced by @p to.
std::string replaced(std::string text, const std::string& from, const std::string& to) {
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
}

// kBase with @p from replaced by @p to.
std::string edit(const std::string& from, const std::string& to) { return replaced(kBase, from, to); }

}  // namespace

TEST_CASE("a reload plan sorts connections and bots into added, removed, changed and kept", "[reload]") {
    FakeLibraries libraries;
    plugin::Registry registry;
    libraries.fill(registry);
    const config::Config running = load(kBase, registry);

    SECTION("the same config changes nothing") {
        const host::ReloadPlan plan = plan_reload(running, registry, load(kBase, registry), registry);
        CHECK(plan.refused.empty());
        CHECK(plan.connections.kept == Names{"irc", "console"});
        CHECK(plan.connections.changed.empty());
        CHECK(plan.bots.kept == Names{"echo", "help"});
        CHECK(plan.plugins_changed.empty());
        CHECK_FALSE(plan.routing_changed);
    }
    SECTION("routes, groups and a bot's channels change routing, not connections or bots") {
        const std::string moved =
            replaced(edit("members: [ops, local]", "members: [ops]"), "channels: [ops]", "channels: [local]");
        const host::ReloadPlan plan = plan_reload(running, registry, load(moved, registry), registry);
        CHECK(plan.routing_changed);
        CHECK(plan.connections.kept == Names{"irc", "console"});
        CHECK(plan.bots.kept == Names{"echo", "help"});
    }
    SECTION("a connection's settings, or a channel added on it, change it; the other is kept") {
        const auto settings = plan_reload(running, registry, load(edit("nick: bot", "nick: bot2"), registry), registry);
        CHECK(settings.connections.changed == Names{"irc"});
        CHECK(settings.connections.kept == Names{"console"});
        const auto channel =
            plan_reload(running, registry,
                        load(edit("  dev: { connection: irc, id: \"#dev\" }\n",
                                  "  dev: { connection: irc, id: \"#dev\" }\n  qa: { connection: irc, id: \"#qa\" }\n"),
                             registry),
                        registry);
        CHECK(channel.connections.changed == Names{"irc"});
        CHECK(channel.routing_changed);
        const auto limits =
            plan_reload(running, registry,
                        load(edit("nick: bot }", "nick: bot, limits: { concurrency: 2 } }"), registry), registry);
        CHECK(limits.connections.changed == Names{"irc"});
    }
    SECTION("connections and bots added and removed") {
        std::string next =
            edit("{ name: console, plugin: console }", "{ name: irc2, plugin: irc, server: b, nick: c }");
        next = replaced(next, "{ connection: console, id: stdin }", "{ connection: irc2, id: \"#x\" }");
        next = replaced(next, "{ plugin: help }", "{ plugin: echo, name: echo2 }");
        const host::ReloadPlan plan = plan_reload(running, registry, load(next, registry), registry);
        CHECK(plan.connections.added == Names{"irc2"});
        CHECK(plan.connections.removed == Names{"console"});
        CHECK(plan.connections.kept == Names{"irc"});
        CHECK(plan.bots.added == Names{"echo2"});
        CHECK(plan.bots.removed == Names{"help"});
        CHECK(plan.bots.kept == Names{"echo"});
    }
    SECTION("a bot's settings change it") {
        const auto plan = plan_reload(
            running, registry,
            load(edit("{ plugin: echo, channels: [ops] }", "{ plugin: echo, channels: [ops], prefix: \"> \" }"),
                 registry),
            registry);
        CHECK(plan.bots.changed == Names{"echo"});
        CHECK(plan.bots.kept == Names{"help"});
    }
}

TEST_CASE("a reload plan changes what uses a plugin whose library changed", "[reload]") {
    FakeLibraries first;
    FakeLibraries second;
    plugin::Registry running_plugins;
    first.fill(running_plugins);
    const config::Config running = load(kBase, running_plugins);

    SECTION("a bot plugin") {
        plugin::Registry next_plugins;
        first.fill(next_plugins, &second, "echo");
        const auto plan = plan_reload(running, running_plugins, load(kBase, next_plugins), next_plugins);
        CHECK(plan.plugins_changed == Names{"echo"});
        CHECK(plan.bots.changed == Names{"echo"});
        CHECK(plan.bots.kept == Names{"help"});
        CHECK(plan.connections.changed.empty());
    }
    SECTION("a connector plugin") {
        plugin::Registry next_plugins;
        first.fill(next_plugins, &second, "irc");
        const auto plan = plan_reload(running, running_plugins, load(kBase, next_plugins), next_plugins);
        CHECK(plan.connections.changed == Names{"irc"});
        CHECK(plan.connections.kept == Names{"console"});
        CHECK(plan.bots.changed.empty());
    }
    SECTION("the store plugin: refused, the store stays for the life of the process") {
        plugin::Registry next_plugins;
        first.fill(next_plugins, &second, "memory");
        const auto plan = plan_reload(running, running_plugins, load(kBase, next_plugins), next_plugins);
        REQUIRE(plan.refused.size() == 1);
        CHECK(plan.refused[0].find("store plugin's file (memory)") != std::string::npos);
    }
    SECTION("a strategy plugin changes routing") {
        plugin::Registry next_plugins;
        first.fill(next_plugins, &second, "group");
        const auto plan = plan_reload(running, running_plugins, load(kBase, next_plugins), next_plugins);
        CHECK(plan.routing_changed);
        CHECK(plan.connections.changed.empty());
    }
}

TEST_CASE("a reload plan refuses what only a restart can change", "[reload]") {
    FakeLibraries libraries;
    plugin::Registry registry;
    libraries.fill(registry);
    const config::Config running = load(kBase, registry);
    const auto refused = [&](const std::string& text) {
        return plan_reload(running, registry, load(text, registry), registry).refused;
    };
    CHECK(refused(edit("store: { plugin: memory }", "store: { plugin: sqlite }")).size() == 1);
    CHECK(refused("switchboard: { admin: { listen: \"127.0.0.1:0\" } }\n" + kBase).size() == 1);
    CHECK(refused("switchboard: { log_level: debug }\n" + kBase).size() == 1);
    CHECK(refused("switchboard: { stop_timeout: 3s }\n" + kBase).size() == 1);
    const auto lines = refused("switchboard: { stop_timeout: 3s }\n" + edit("plugin: memory", "plugin: sqlite"));
    REQUIRE(lines.size() == 2);
    CHECK(lines[0].find("store") == 0);
    CHECK(lines[0].find("restart") != std::string::npos);
}
