// The config loader: the YAML of DESIGN §6, validated against the core schema and fake plugins' schemas.

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>

#include "config/config.hpp"
#include "fake_plugins.hpp"
#include "test_support.hpp"

using namespace switchboard;
using namespace switchboard::config;
using switchboard::config::testing::FakeSchemas;

namespace {

LoadResult load(const std::string& text, const SchemaSource& schemas) {
    return load_config_text(text, "test.yaml", schemas);
}

LoadResult load(const std::string& text) {
    static const FakeSchemas schemas;
    return load(text, schemas);
}

/// Every error, one per line, for failure messages.
std::string listing(const LoadResult& result) {
    std::string text;
    for (const ConfigError& error : result.errors) text += error.to_string() + "\n";
    return text.empty() ? "(no errors)" : text;
}

/// The first error whose message contains @p part, or null.
const ConfigError* error_with(const LoadResult& result, const std::string& part) {
    for (const ConfigError& error : result.errors) {
        if (error.message.find(part) != std::string::npos) return &error;
    }
    return nullptr;
}

/// Checks that exactly one error contains @p part and that it is at @p line : @p column.
void require_error_at(const LoadResult& result, const std::string& part, int line, int column) {
    INFO("looking for '" << part << "' at " << line << ":" << column << " in:\n" << listing(result));
    const ConfigError* error = error_with(result, part);
    REQUIRE(error != nullptr);
    CHECK(error->position.file == "test.yaml");
    CHECK(error->position.line == line);
    CHECK(error->position.column == column);
    int count = 0;
    for (const ConfigError& e : result.errors) count += e.message.find(part) != std::string::npos ? 1 : 0;
    CHECK(count == 1);
}

/// Sets an environment variable for the life of the object, then restores it.
class ScopedEnv {
public:
    ScopedEnv(std::string name, const char* value) : name_(std::move(name)) {
        if (const char* old = std::getenv(name_.c_str())) old_ = old;
        set(value);
    }
    ~ScopedEnv() { set(old_ ? old_->c_str() : nullptr); }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    void set(const char* value) {
#ifdef _WIN32
        _putenv_s(name_.c_str(), value ? value : "");
#else
        if (value) {
            setenv(name_.c_str(), value, 1);
        } else {
            unsetenv(name_.c_str());
        }
#endif
    }
    std::string name_;
    std::optional<std::string> old_;
};

const std::string kFullConfig = R"(switchboard:
  plugin_path: [build/plugins, /opt/switchboard/plugins]
  admin: { listen: 127.0.0.1:8080, token: ${SB_TEST_ADMIN_TOKEN} }
  log_level: debug
store: { plugin: sqlite, path: data/test.db }
connections:
  - name: discord-main
    plugin: discord
    token: ${SB_TEST_DISCORD_TOKEN}
    recovery: { policy: discord-backfill, max_age: 7d }
  - name: irc
    plugin: irc
    server: 127.0.0.1:6667
    nick: switchbot
    autojoin: ["#ops", "#dev"]
    recovery: { policy: irc-replay }
channels:
  ops-discord: { connection: discord-main, id: "123456789012345678", tags: [ops] }
  ops-irc:     { connection: irc, id: "#ops" }
users:
  alice: { connection: irc, id: alice }
groups:
  ops: { members: [ops-discord, ops-irc, alice], delivery: atomic, on_failure: compensate }
routes:
  - { from: ops-irc, to: { group: ops }, strategy: group }
  - { from: ops-discord, to: { channel: ops-irc } }
  - { from: ops-irc, to: { user: alice } }
  - { from: ops-irc, to: { broadcast: "tag:ops" } }
  - { from: ops-irc, to: { broadcast: } }
bots:
  - { plugin: echo, channels: [ops-irc], prefix: "> " }
  - { plugin: echo, name: echo-2, isolation: process, ratio: 0.5 }
)";

}  // namespace

TEST_CASE("A config using every section loads into the model", "[config]") {
    ScopedEnv admin("SB_TEST_ADMIN_TOKEN", "s3cret");
    ScopedEnv discord("SB_TEST_DISCORD_TOKEN", "discord-token");
    const LoadResult result = load(kFullConfig);
    INFO(listing(result));
    REQUIRE(result.errors.empty());
    REQUIRE(result.config);
    const Config& config = *result.config;

    CHECK(config.file == "test.yaml");
    REQUIRE(config.plugin_path.size() == 2);
    CHECK(std::filesystem::path(config.plugin_path[0]).is_absolute());
    CHECK(std::filesystem::path(config.plugin_path[0]) ==
          (std::filesystem::current_path() / "build/plugins").lexically_normal());
    CHECK(config.plugin_path[1] == "/opt/switchboard/plugins");
    REQUIRE(config.admin);
    CHECK(config.admin->listen == "127.0.0.1:8080");
    CHECK(config.admin->token == "s3cret");
    CHECK(config.log_level == "debug");

    CHECK(config.store.plugin == "sqlite");
    CHECK(config.store.settings.get_string("path") == "data/test.db");
    CHECK(config.store.position.line == 5);
    CHECK(config.store.position.column == 18);

    REQUIRE(config.connections.size() == 2);
    const ConnectionConfig& discord_connection = config.connections[0];
    CHECK(discord_connection.name == "discord-main");
    CHECK(discord_connection.connector.plugin == "discord");
    CHECK(discord_connection.connector.settings.get_string("token") == "discord-token");
    CHECK_FALSE(discord_connection.connector.settings.has("intents"));
    CHECK(discord_connection.recovery.plugin == "discord-backfill");
    CHECK(discord_connection.recovery.settings.get_int("max_age") == 7LL * 24 * 3600 * 1000);
    CHECK(discord_connection.recovery.settings.get_int("page_size") == 100);
    const ConnectionConfig& irc = config.connections[1];
    CHECK(irc.connector.settings.get_list("autojoin") == std::vector<std::string>{"#ops", "#dev"});
    CHECK(irc.connector.settings.get_int("port") == 6667);
    CHECK(irc.recovery.plugin == "irc-replay");
    CHECK(irc.recovery.settings.get_int("window") == 3600 * 1000);

    REQUIRE(config.channels.size() == 2);
    CHECK(config.channels[0].name == "ops-discord");
    CHECK(config.channels[0].id == "123456789012345678");
    CHECK(config.channels[0].tags == std::vector<std::string>{"ops"});
    CHECK(config.channels[1].connection == "irc");
    CHECK(config.channels[1].id == "#ops");
    REQUIRE(config.users.size() == 1);
    CHECK(config.users[0].id == "alice");

    REQUIRE(config.groups.size() == 1);
    CHECK(config.groups[0].members == std::vector<std::string>{"ops-discord", "ops-irc", "alice"});
    CHECK(config.groups[0].delivery == DeliveryMode::atomic);
    CHECK(config.groups[0].on_failure == OnFailure::compensate);

    REQUIRE(config.routes.size() == 5);
    CHECK(config.routes[0].to.kind == MessageKind::group);
    CHECK(config.routes[0].to.name == "ops");
    CHECK(config.routes[1].to.kind == MessageKind::group);
    CHECK(config.routes[1].to.name == "ops-irc");
    CHECK(config.routes[1].strategy == "group");
    CHECK(config.routes[2].to.kind == MessageKind::private_message);
    CHECK(config.routes[2].strategy == "private");
    CHECK(config.routes[3].to.kind == MessageKind::broadcast);
    CHECK(config.routes[3].to.name == "tag:ops");
    CHECK(config.routes[3].strategy == "broadcast");
    CHECK(config.routes[4].to.name.empty());

    REQUIRE(config.bots.size() == 2);
    CHECK(config.bots[0].name == "echo");
    CHECK(config.bots[0].channels == std::vector<std::string>{"ops-irc"});
    CHECK(config.bots[0].bot.settings.get_string("prefix") == "> ");
    CHECK(config.bots[0].isolation == BotIsolation::in_process);
    CHECK(config.bots[1].name == "echo-2");
    CHECK(config.bots[1].isolation == BotIsolation::process);
    CHECK(config.bots[1].bot.settings.get_number("ratio") == Approx(0.5));
    CHECK(config.bots[1].channels.empty());
}

TEST_CASE("An unknown key is reported at the key, with the known keys and a likely correction", "[config]") {
    const LoadResult result = load(R"(connections:
  - name: d
    plugin: discord
    tokn: abc
)");
    CHECK_FALSE(result.config);
    require_error_at(result, "unknown key 'tokn' in connection 'd'", 4, 5);
    const ConfigError* error = error_with(result, "unknown key 'tokn'");
    REQUIRE(error);
    CHECK(error->message ==
          "unknown key 'tokn' in connection 'd' (known keys: name, plugin, recovery, limits, token, intents); "
          "did you mean 'token'?");
    // The required token is missing too, reported at the connection's mapping.
    require_error_at(result, "connection 'd' is missing required key 'token'", 2, 5);
}

TEST_CASE("Unknown keys of the core sections are reported too", "[config]") {
    const LoadResult result = load(R"(conections: []
switchboard:
  log_levl: info
channels:
  general: { connection: c, idd: x }
)");
    require_error_at(result, "unknown key 'conections' in the config's top level", 1, 1);
    CHECK(error_with(result, "did you mean 'connections'?"));
    require_error_at(result, "unknown key 'log_levl' in 'switchboard'", 3, 3);
    require_error_at(result, "unknown key 'idd' in channel 'general'", 5, 29);
}

TEST_CASE("A value of the wrong type is reported at the value", "[config]") {
    const LoadResult result = load(R"(connections:
  - name: irc
    plugin: irc
    server: localhost
    nick: bot
    port: abc
    tls: maybe
    autojoin: "#ops"
  - name: d
    plugin: discord
    token: { nested: map }
    recovery: { policy: discord-backfill, max_age: soon }
)");
    require_error_at(result, "'port' must be an integer, got 'abc'", 6, 11);
    require_error_at(result, "'tls' must be true or false, got 'maybe'", 7, 10);
    require_error_at(result, "'autojoin' must be a list of strings such as [a, b], got '#ops'", 8, 15);
    require_error_at(result, "'token' must be a single value, got a mapping", 11, 12);
    require_error_at(result, "'max_age' must be a duration such as 500ms, 30s, 5m, 2h or 14d, got 'soon'", 12, 52);
    CHECK(result.errors.size() == 5);
}

TEST_CASE("A missing required key points at the enclosing mapping", "[config]") {
    const LoadResult result = load(R"(connections:
  - name: irc
    plugin: irc
    server: localhost
  - plugin: console
channels:
  general: { connection: irc }
)");
    require_error_at(result, "connection 'irc' is missing required key 'nick'", 2, 5);
    require_error_at(result, "connection is missing required key 'name'", 5, 5);
    require_error_at(result, "channel 'general' is missing required key 'id'", 7, 12);
}

TEST_CASE("Dangling names are reported at the name that dangles", "[config]") {
    const LoadResult result = load(R"(connections:
  - { name: c, plugin: console }
channels:
  general: { connection: c, id: "1" }
  lost: { connection: nowhere, id: "2" }
users:
  bob: { connection: c, id: bob }
groups:
  ops: { members: [general, carol] }
routes:
  - { from: general, to: { group: opz } }
  - { from: nowhere, to: { user: dave } }
  - { from: general, to: { broadcast: "tag:none" } }
bots:
  - { plugin: echo, channels: [x] }
)");
    require_error_at(result, "channel 'lost' is on connection 'nowhere', which is not defined (defined connections: c)",
                     5, 23);
    require_error_at(result, "group 'ops' has member 'carol', which is neither a defined channel nor a defined user", 9,
                     29);
    require_error_at(result, "route refers to group 'opz', which is not defined (defined groups: ops)", 11, 35);
    require_error_at(result, "route is from channel 'nowhere', which is not defined", 12, 13);
    require_error_at(result, "route refers to user 'dave', which is not defined (defined users: bob)", 12, 34);
    require_error_at(result, "broadcast scope 'tag:none' names a tag no channel has", 13, 39);
    require_error_at(result, "bot 'echo' is on channel 'x', which is not defined (defined channels: general, lost)", 15,
                     32);
    CHECK(result.errors.size() == 7);
}

TEST_CASE("Three different mistakes are all reported at once, in file order, with their positions", "[config]") {
    const LoadResult result = load(R"(connections:
  - name: irc
    plugin: irc
    server: localhost
    nick: bot
    port: abc
    colour: blue
channels:
  ops: { connection: irc, id: "#ops" }
groups:
  team: { members: [ops] }
routes:
  - { from: ops, to: { group: opz } }
)");
    INFO(listing(result));
    CHECK_FALSE(result.config);
    REQUIRE(result.errors.size() == 3);
    CHECK(result.errors[0].to_string() == "test.yaml:6:11: error: 'port' must be an integer, got 'abc'");
    CHECK(result.errors[1].to_string().rfind("test.yaml:7:5: error: unknown key 'colour' in connection 'irc'", 0) == 0);
    CHECK(result.errors[2].to_string() ==
          "test.yaml:13:31: error: route refers to group 'opz', which is not defined (defined groups: team)");
}

TEST_CASE("Duplicate names and duplicate keys are refused", "[config]") {
    const LoadResult result = load(R"(connections:
  - { name: c, plugin: console }
  - { name: c, plugin: console }
channels:
  general: { connection: c, id: "1" }
  general: { connection: c, id: "2" }
groups:
  general: { members: [general] }
bots:
  - { plugin: help }
  - { plugin: help }
)");
    require_error_at(result, "connection 'c' is defined twice (first at line 2)", 3, 13);
    require_error_at(result, "duplicate key 'general' (first written at line 5)", 6, 3);
    require_error_at(result, "group 'general' has the same name as a channel", 8, 3);
    require_error_at(result, "bot name 'help' is used twice (first at line 10)", 11, 15);
}

TEST_CASE("Group and route shapes are checked", "[config]") {
    const LoadResult result = load(R"(connections:
  - { name: c, plugin: console }
channels:
  general: { connection: c, id: "1" }
groups:
  soft: { members: [general], delivery: sometimes, on_failure: compensate }
routes:
  - { from: general, to: { group: soft, channel: general } }
  - { from: general, to: {} }
  - { from: general, to: { broadcast: elsewhere } }
  - { from: general, to: { group: soft }, strategy: fanout }
)");
    require_error_at(result, "'delivery' must be one of atomic, best_effort, got 'sometimes'", 6, 41);
    require_error_at(result, "'on_failure: compensate' applies only to atomic delivery", 6, 64);
    require_error_at(result, "a route has one target, but 'to' names both 'group' and 'channel'", 8, 41);
    require_error_at(result, "'to' of the route needs one of group, channel, user or broadcast", 9, 26);
    require_error_at(result, "broadcast scope 'elsewhere' is not a defined connection", 10, 39);
    require_error_at(result, "no plugin named fanout", 11, 53);
}

TEST_CASE("${VAR} expands from the environment, per scalar, before type checking", "[config]") {
    ScopedEnv token("SB_TEST_TOKEN", "a: b # not a comment");
    ScopedEnv intents("SB_TEST_INTENTS", "513");
    ScopedEnv prefix("SB_TEST_PREFIX", "bot");
    const LoadResult result = load(R"(connections:
  - name: d
    plugin: discord
    token: ${SB_TEST_TOKEN}
    intents: ${SB_TEST_INTENTS}
bots:
  - { plugin: echo, prefix: "[${SB_TEST_PREFIX}] $${HOME} stays" }
)");
    INFO(listing(result));
    REQUIRE(result.config);
    CHECK(result.config->connections[0].connector.settings.get_string("token") == "a: b # not a comment");
    CHECK(result.config->connections[0].connector.settings.get_int("intents") == 513);
    CHECK(result.config->bots[0].bot.settings.get_string("prefix") == "[bot] ${HOME} stays");
}

TEST_CASE("${VAR} works inside flow mappings, as DESIGN §6 writes it, and keeps positions", "[config]") {
    ScopedEnv token("SB_TEST_TOKEN", "tok");
    ScopedEnv unset("SB_TEST_UNSET_TOKEN", nullptr);
    SECTION("set, escaped, and in a key") {
        const LoadResult result = load(R"(connections:
  - { name: d, plugin: discord, token: ${SB_TEST_TOKEN}, recovery: { policy: none } }
bots:
  - { plugin: echo, prefix: $${SB_TEST_TOKEN}, ${SB_TEST_TOKEN}: 1 }
)");
        require_error_at(result, "unknown key '${SB_TEST_TOKEN}' in bot 'echo'", 4, 48);
        CHECK(result.errors.size() == 1);
    }
    SECTION("unset, after a '$(' elsewhere in the file") {
        const LoadResult result = load(R"yaml(bots:
  - { plugin: echo, prefix: "$(date)" }
connections:
  - { name: d, plugin: discord, token: ${SB_TEST_UNSET_TOKEN} }
)yaml");
        require_error_at(result, "environment variable SB_TEST_UNSET_TOKEN is not set", 4, 40);
        CHECK(result.errors.size() == 1);
    }
}

TEST_CASE("The DESIGN §6 sketch validates", "[config]") {
    ScopedEnv admin("SWITCHBOARD_ADMIN_TOKEN", "admin");
    ScopedEnv discord("DISCORD_TOKEN", "discord");
    const LoadResult result = load(R"(switchboard:
  plugin_path: [build/plugins]
  admin: { listen: 127.0.0.1:8080, token: ${SWITCHBOARD_ADMIN_TOKEN} }
store: { plugin: sqlite, path: data/switchboard.db }
connections:
  - name: discord-main
    plugin: discord
    token: ${DISCORD_TOKEN}
    recovery: { policy: discord-backfill, max_age: 14d }
  - name: irc
    plugin: irc
    server: 127.0.0.1:6667
    nick: switchbot
    recovery: { policy: irc-replay }
channels:
  ops-discord: { connection: discord-main, id: "123456789012345678" }
  ops-irc:     { connection: irc, id: "#ops" }
groups:
  ops: { members: [ops-discord, ops-irc], delivery: atomic }
routes:
  - { from: ops-irc, to: { group: ops }, strategy: group }
bots:
  - { plugin: echo, channels: [ops-irc] }
)");
    INFO(listing(result));
    REQUIRE(result.config);
    CHECK(result.config->admin->token == "admin");
}

TEST_CASE("An unset environment variable is an error naming it, at its scalar", "[config]") {
    ScopedEnv unset("SB_TEST_UNSET_TOKEN", nullptr);
    ScopedEnv intents("SB_TEST_INTENTS", "many");
    const LoadResult result = load(R"(connections:
  - name: d
    plugin: discord
    token: ${SB_TEST_UNSET_TOKEN}
    intents: ${SB_TEST_INTENTS}
  - name: e
    plugin: nosuchplugin
    password: "x${SB_TEST_UNSET_TOKEN}"
    broken: "${oops"
)");
    INFO(listing(result));
    // Once per scalar, even where nothing reads the value (an unknown plugin's settings).
    std::vector<std::pair<int, int>> unset_at;
    for (const ConfigError& error : result.errors) {
        if (error.message ==
            "environment variable SB_TEST_UNSET_TOKEN is not set; set it before starting switchboard") {
            unset_at.emplace_back(error.position.line, error.position.column);
        }
    }
    CHECK(unset_at == std::vector<std::pair<int, int>>{{4, 12}, {8, 15}});
    CHECK(error_with(result, "no plugin named nosuchplugin"));
    require_error_at(result, "unterminated '${'", 9, 13);
    require_error_at(result, "'intents' must be an integer, got 'many'", 5, 14);
}

TEST_CASE("Defaults fill whatever the config leaves out", "[config]") {
    const LoadResult result = load(R"(connections:
  - { name: c, plugin: console }
  - { name: irc, plugin: irc, server: localhost, nick: bot }
channels:
  general: { connection: c, id: general }
routes:
  - { from: general, to: { channel: general } }
bots:
  - plugin: echo
)");
    INFO(listing(result));
    REQUIRE(result.config);
    const Config& config = *result.config;
    CHECK(config.log_level == "info");
    CHECK_FALSE(config.admin);
    CHECK(config.plugin_path.empty());
    CHECK(config.store.plugin == "sqlite");
    CHECK(config.store.settings.get_string("path") == "data/switchboard.db");
    CHECK(config.store.settings.get_int("busy_timeout") == 5000);
    CHECK(config.connections[0].recovery.plugin == "none");
    CHECK(config.connections[0].connector.settings.get_string("prompt") == "> ");
    CHECK(config.connections[1].connector.settings.get_int("port") == 6667);
    CHECK(config.connections[1].connector.settings.get_bool("tls", true) == false);
    CHECK_FALSE(config.connections[1].connector.settings.has("autojoin"));
    CHECK(config.routes[0].strategy == "group");
    CHECK(config.bots[0].name == "echo");
    CHECK(config.bots[0].channels.empty());
    CHECK(config.bots[0].isolation == BotIsolation::in_process);
    CHECK(config.bots[0].bot.settings.get_string("prefix") == "echo: ");
    CHECK(config.bots[0].bot.settings.get_number("ratio") == Approx(1.0));
}

TEST_CASE("A store block without a plugin is sqlite with those settings", "[config]") {
    const LoadResult result = load("store: { path: /tmp/x.db }\n");
    INFO(listing(result));
    REQUIRE(result.config);
    CHECK(result.config->store.plugin == "sqlite");
    CHECK(result.config->store.settings.get_string("path") == "/tmp/x.db");
}

TEST_CASE("A plugin of the wrong kind is refused at its name", "[config]") {
    SECTION("the schema source says why") {
        const LoadResult result = load("store: { plugin: echo }\n");
        require_error_at(result, "plugin echo is a bot, but a store is needed here", 1, 18);
    }
    SECTION("the loader checks the kind itself too") {
        const switchboard::config::testing::CarelessSchemas careless;
        const LoadResult result = load("store: { plugin: echo }\n", careless);
        require_error_at(result, "plugin 'echo' is a bot plugin, but a store plugin is needed here", 1, 18);
    }
    SECTION("a missing default plugin is reported with the reason") {
        const FakeSchemas only_memory{&switchboard::config::testing::kMemoryStore};
        const LoadResult result = load("", only_memory);
        require_error_at(result, "store uses the default store plugin 'sqlite', which is not available", 1, 1);
    }
}

TEST_CASE("A plugin's check function reports at the key it names, or at the block", "[config]") {
    SECTION("problems after a clean schema pass") {
        const LoadResult result = load(R"(connections:
  - name: irc
    plugin: irc
    server: localhost
    nick: my bot
    tls: true
)");
        require_error_at(result, "connection 'irc': a nick cannot contain spaces", 5, 5);
        require_error_at(result, "connection 'irc': tls on port 6667 is unusual", 2, 5);
        CHECK(result.errors.size() == 2);
    }
    SECTION("the check does not run on settings that failed the schema") {
        const LoadResult result = load(R"(connections:
  - name: irc
    plugin: irc
    server: localhost
    nick: my bot
    port: none
)");
        CHECK(error_with(result, "'port' must be an integer"));
        CHECK_FALSE(error_with(result, "nick cannot contain spaces"));
    }
}

TEST_CASE("A plugin's invalid default is reported as the plugin's bug", "[config]") {
    const LoadResult result = load("bots:\n  - plugin: broken\n");
    require_error_at(result, "plugin 'broken' declares an invalid default for 'limit'", 2, 13);
}

TEST_CASE("Malformed YAML is one error at the parser's position, 1-based", "[config]") {
    const LoadResult result = load(R"(store:
  plugin: sqlite
  path: a: b
)");
    REQUIRE(result.errors.size() == 1);
    CHECK_FALSE(result.config);
    CHECK(result.errors[0].to_string() == "test.yaml:3:10: error: malformed YAML: illegal map value");

    const LoadResult unclosed = load("channels: [a, b\nbots: []\n");
    REQUIRE(unclosed.errors.size() == 1);
    CHECK(unclosed.errors[0].message.rfind("malformed YAML: ", 0) == 0);
    CHECK(unclosed.errors[0].position.line >= 1);
}

TEST_CASE("Sections of the wrong shape are reported, not thrown", "[config]") {
    CHECK(error_with(load("- just\n- a list\n"), "the config must be a mapping of sections"));
    const LoadResult result = load(R"(connections: { name: c }
channels: [a, b]
bots:
  - just-a-name
)");
    require_error_at(result, "'connections' must be a list", 1, 14);
    require_error_at(result, "'channels' must be a mapping of names", 2, 11);
    require_error_at(result, "bot must be a mapping of keys, got 'just-a-name'", 4, 5);
}

TEST_CASE("An empty config is valid and all defaults", "[config]") {
    const LoadResult result = load("# nothing here\n");
    INFO(listing(result));
    REQUIRE(result.config);
    CHECK(result.config->connections.empty());
    CHECK(result.config->store.plugin == "sqlite");
}

TEST_CASE("The admin listen address must be HOST:PORT", "[config]") {
    const LoadResult result = load("switchboard:\n  admin: { listen: 8080 }\n");
    require_error_at(result, "'listen' must be HOST:PORT", 2, 20);
}

TEST_CASE("switchboard.cluster sets the host id and lease time, and refuses bad values at their place", "[config]") {
    const LoadResult good = load("switchboard:\n  cluster: { host_id: edge-1, lease_ttl: 2s, work_sharing: true }\n");
    INFO(listing(good));
    REQUIRE(good.config);
    CHECK(good.config->cluster.host_id == "edge-1");
    CHECK(good.config->cluster.lease_ttl_ms == 2000);
    CHECK(good.config->cluster.work_sharing);

    const LoadResult defaults = load("");
    REQUIRE(defaults.config);
    CHECK(defaults.config->cluster.host_id.empty());
    CHECK(defaults.config->cluster.lease_ttl_ms == 5000);
    CHECK_FALSE(defaults.config->cluster.work_sharing);

    require_error_at(load("switchboard:\n  cluster: { lease_ttl: 100ms }\n"), "'lease_ttl' must be a duration of at least 300ms", 2, 25);
    require_error_at(load("switchboard:\n  cluster: { host_id: \"a b\" }\n"), "'host_id' must be a non-empty name", 2, 23);
}

TEST_CASE("Errors print as FILE:LINE:COL: error: MESSAGE", "[config]") {
    CHECK(ConfigError{{"a.yaml", 3, 7}, "bad"}.to_string() == "a.yaml:3:7: error: bad");
    CHECK(ConfigError{{"a.yaml", 0, 0}, "cannot read"}.to_string() == "a.yaml: error: cannot read");
}

TEST_CASE("Loading a file resolves plugin_path against the file's directory", "[config]") {
    switchboard::testing_support::TempDir dir;
    std::filesystem::create_directories(dir / "etc");
    const std::string path = (dir / "etc/switchboard.yaml").string();
    std::ofstream(path) << "switchboard:\n  plugin_path: [../plugins, /abs/plugins]\n";
    const FakeSchemas schemas;
    const LoadResult result = load_config_file(path, schemas);
    INFO(listing(result));
    REQUIRE(result.config);
    CHECK(result.config->file == path);
    REQUIRE(result.config->plugin_path.size() == 2);
    CHECK(std::filesystem::path(result.config->plugin_path[0]) == (dir.path() / "plugins").lexically_normal());
    CHECK(result.config->plugin_path[1] == "/abs/plugins");

    const LoadResult bad = load_config_file(path + ".yml", schemas);
    REQUIRE(bad.errors.size() == 1);
    CHECK(bad.errors[0].position.file == path + ".yml");
    CHECK(bad.errors[0].to_string().find("error: cannot read config file") != std::string::npos);
}

TEST_CASE("The embedded default config is the repository's file and validates", "[config]") {
    using namespace switchboard::config::testing;
    std::ifstream in(std::string(SWITCHBOARD_TEST_SOURCE_DIR) + "/config/switchboard.yaml", std::ios::binary);
    const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(embedded_default_config() == file);

    const FakeSchemas schemas{&kSqlite, &kConsole, &kEcho, &kHelp, &kNone};
    const LoadResult result = load_config_text(embedded_default_config(), "<embedded>", schemas);
    INFO(listing(result));
    REQUIRE(result.config);
    CHECK(result.config->file == "<embedded>");
    CHECK(result.config->connections.size() == 1);
    CHECK(result.config->bots.size() == 2);
}
