#pragma once
// The configuration model (DESIGN §6) and its loader. Internal to the core: plugins see only PluginConfig.

#include <switchboard/config.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/routing.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace switchboard::config {

/// Where something was written: file, 1-based line and column.
struct SourcePosition {
    std::string file;
    int line = 0;
    int column = 0;
};

/// One problem found in a config file. Printed as `FILE:LINE:COL: error: MESSAGE`.
struct ConfigError {
    SourcePosition position;
    std::string message;
    [[nodiscard]] std::string to_string() const;
};

/// A plugin named at one place of the config, with its validated settings.
struct PluginUse {
    std::string plugin;          // plugin name
    PluginConfig settings;       // validated against the plugin's schema, defaults applied
    SourcePosition position;     // of the `plugin:` value
};

struct AdminConfig {
    std::string listen;  // host:port
    std::string token;
    SourcePosition position;
};

/// `switchboard.cluster`: how this host shares connections with others through the store's leases (DESIGN §8).
/// Used only with a store that offers leases (redis).
struct ClusterConfig {
    std::string host_id;             // `host_id`; empty: the machine's host name
    std::int64_t lease_ttl_ms = 5000;  // `lease_ttl`: a lease not renewed for this long lapses
    bool work_sharing = false;         // `work_sharing`: bots on every host take inbound messages from shared queues
};

struct ConnectionConfig {
    std::string name;
    PluginUse connector;  // kind connector; settings = every key but name/plugin/recovery
    PluginUse recovery;   // kind recovery; `recovery: { policy: NAME, ...settings }`, default policy `none`
    PluginConfig limits;  // `limits:` (connection_limits_schema()), defaults applied (`rate` has none)
    SourcePosition position;
};

struct ChannelConfig {
    std::string name;        // logical name (the map key)
    std::string connection;  // a connection name
    std::string id;          // the platform channel id
    std::vector<std::string> tags;
    SourcePosition position;
};

struct UserConfig {
    std::string name;        // logical name (the map key)
    std::string connection;  // a connection name
    std::string id;          // the platform user id
    SourcePosition position;
};

struct GroupConfig {
    std::string name;                  // logical name (the map key)
    std::vector<std::string> members;  // channel or user names
    DeliveryMode delivery = DeliveryMode::best_effort;
    OnFailure on_failure = OnFailure::keep;
    SourcePosition position;
};

/// `to:` of a route: exactly one of group, channel, user; or broadcast (scope empty = all channels).
struct RouteTarget {
    MessageKind kind = MessageKind::group;
    std::string name;  // group or channel name (group kind), user name (private), scope (broadcast)
};

struct RouteConfig {
    std::string from;  // a channel name
    RouteTarget to;
    std::string strategy;  // strategy plugin name; defaults to the target kind's name
    SourcePosition position;
};

/// `isolation:` of a bot: inside the host, or in a child process over a pipe (a crash restarts only that bot).
enum class BotIsolation { in_process, process };

struct BotConfig {
    std::string name;                   // `name:`, defaults to the plugin name; unique
    PluginUse bot;                      // kind bot; settings = every key but name/plugin/channels/isolation
    std::vector<std::string> channels;  // channel names; empty = every channel
    BotIsolation isolation = BotIsolation::in_process;  // `isolation: in_process | process`
    SourcePosition position;
};

struct Config {
    std::string file;                      // the path it was read from, or "<embedded>"
    std::vector<std::string> plugin_path;  // switchboard.plugin_path, relative entries resolved against the file's dir
    std::optional<AdminConfig> admin;      // switchboard.admin
    std::string log_level = "info";        // switchboard.log_level
    std::map<std::string, std::string> log_levels;  // switchboard.log_levels: component → level
    std::int64_t stop_timeout_ms = 10'000;          // switchboard.stop_timeout
    ClusterConfig cluster;                          // switchboard.cluster
    PluginUse store;                       // `store: { plugin: NAME, ...settings }`, default plugin sqlite
    std::vector<ConnectionConfig> connections;
    std::vector<ChannelConfig> channels;
    std::vector<UserConfig> users;
    std::vector<GroupConfig> groups;
    std::vector<RouteConfig> routes;
    std::vector<PluginUse> strategies;  // `strategies: { NAME: settings }`; strategies not named get their defaults
    std::vector<BotConfig> bots;
};

/// Gives the loader each plugin's schema. Implemented by the plugin registry (and by fakes in tests).
class SchemaSource {
public:
    virtual ~SchemaSource() = default;
    /// The descriptor of plugin @p name, or null with @p why set ("no plugin named X in PATHS",
    /// "plugin X is a store, but a connector is needed here").
    [[nodiscard]] virtual const PluginDescriptor* find(const std::string& name, PluginKind kind,
                                                        std::string& why) const = 0;
};

/// Result of loading: the config, or every error found (never just the first).
struct LoadResult {
    std::optional<Config> config;
    std::vector<ConfigError> errors;
};

/// Reads, expands `${VAR}`, and validates @p text (named @p file in messages) against the core schema and every
/// named plugin's schema (and check function). Never throws; malformed YAML is an error with its position.
[[nodiscard]] LoadResult load_config_text(const std::string& text, const std::string& file,
                                          const SchemaSource& schemas);

/// As load_config_text, reading @p path (an unreadable file is one error naming it).
[[nodiscard]] LoadResult load_config_file(const std::string& path, const SchemaSource& schemas);

/// The embedded default configuration (config/switchboard.yaml, compiled in).
[[nodiscard]] const std::string& embedded_default_config();

/// Parses a duration (`250ms`, `30s`, `5m`, `2h`, `14d`, or a bare number of milliseconds).
[[nodiscard]] std::optional<std::int64_t> parse_duration_ms(const std::string& text);

/// The core schema of a connection's `limits:` block: concurrency (sends in flight), rate (requests per second in
/// the connection's "global" bucket, 0 = unlimited, unset = the connector's default), burst (its size), and the
/// invalid-request budget (invalid_budget per invalid_window).
[[nodiscard]] const ConfigSchema& connection_limits_schema();

/// Settings holding every default of @p schema (for a plugin the config names without a settings block).
[[nodiscard]] PluginConfig default_settings(const ConfigSchema& schema);

/// The plugin's schema as documentation, for `switchboard plugins --describe NAME`.
[[nodiscard]] std::string describe_plugin(const PluginDescriptor& descriptor);

}  // namespace switchboard::config
