// The configuration loader (DESIGN §6): parses the YAML, checks it against the core schema and every named
// plugin's schema, and reports every problem at once, each at its line and column.

#include "config/config.hpp"

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <system_error>

#include "config/validation.hpp"

namespace switchboard::config {

const ConfigSchema& connection_limits_schema() {
    static const ConfigSchema schema{{
        {"concurrency", ValueType::integer, false, "8", "Sends in flight at once on this connection."},
        {"rate", ValueType::number, false, "",
         "Requests per second on this connection (its rate-limit scheduler's \"global\" token bucket: sends, "
         "history fetches and every other request the connector makes); 0 means no limit. Unset: the connector's "
         "platform default, or no limit."},
        {"burst", ValueType::integer, false, "10", "Requests allowed at once before the rate applies."},
        {"invalid_budget", ValueType::integer, false, "10000",
         "Invalid requests (401, 403, 429) the platform tolerates per invalid_window before it bans; a warning is "
         "logged at 80% of it, an error at all of it. 0: not watched."},
        {"invalid_window", ValueType::duration, false, "10m", "The window of invalid_budget."},
    }};
    return schema;
}

std::string ConfigError::to_string() const {
    if (position.line <= 0) return position.file + ": error: " + message;
    return position.file + ":" + std::to_string(position.line) + ":" + std::to_string(position.column) +
           ": error: " + message;
}

namespace {

using detail::Context;
using detail::Entry;
using detail::find_entry;
using detail::PluginBlock;

/// The keys of one mapping, where it is, and how messages name it ("connection 'irc'").
struct Block {
    std::vector<Entry> entries;
    SourcePosition position;
    std::string where;
};

/// A scalar read from a list, with its node for positions.
struct Item {
    std::string text;
    YAML::Node node;
};

/// The names defined in one namespace (connections, channels, ...), in file order, with where each was defined.
class NameTable {
public:
    explicit NameTable(std::string plural) : plural_(std::move(plural)) {}
    /// Adds @p name; if it is taken, returns the line it was first defined on.
    std::optional<int> add(const std::string& name, const SourcePosition& where) {
        auto [it, added] = lines_.emplace(name, where.line);
        if (!added) return it->second;
        order_.push_back(name);
        return std::nullopt;
    }
    [[nodiscard]] bool has(const std::string& name) const { return lines_.count(name) != 0; }
    /// "(defined groups: a, b)" or "(no groups are defined)".
    [[nodiscard]] std::string defined() const {
        if (order_.empty()) return "(no " + plural_ + " are defined)";
        return "(defined " + plural_ + ": " + detail::join(order_) + ")";
    }
    [[nodiscard]] const std::vector<std::string>& names() const noexcept { return order_; }

private:
    std::string plural_;
    std::map<std::string, int> lines_;
    std::vector<std::string> order_;
};

std::string quoted(const std::string& name) { return "'" + name + "'"; }

class Loader {
public:
    Loader(Context& context, const SchemaSource& schemas, Config& config)
        : context_(context), schemas_(schemas), config_(config) {}

    void load(const YAML::Node& root) {
        std::vector<Entry> top;
        if (root.IsDefined() && !root.IsNull()) {
            if (!root.IsMap()) {
                context_.error(root, "the config must be a mapping of sections (" + detail::join(kTopKeys) + "), got " +
                                         context_.describe(root));
                return;
            }
            top = context_.entries(root);
        }
        context_.check_keys(top, kTopKeys, "the config's top level");
        root_position_ = context_.position(root);

        load_switchboard(find_entry(top, "switchboard"));
        load_store(find_entry(top, "store"));
        load_connections(find_entry(top, "connections"));
        load_channels(find_entry(top, "channels"));
        load_users(find_entry(top, "users"));
        load_groups(find_entry(top, "groups"));
        load_routes(find_entry(top, "routes"));
        load_strategies(find_entry(top, "strategies"));
        load_bots(find_entry(top, "bots"));
    }

private:
    inline static const std::vector<std::string> kTopKeys{"switchboard", "store",  "connections", "channels",
                                                          "users",       "groups", "routes",      "strategies",
                                                          "bots"};

    // ---- reading helpers ----------------------------------------------------------------------------------

    /// The mapping @p value as a Block; absent or empty is an empty block (positioned at @p owner); anything else
    /// is reported.
    std::optional<Block> block(const YAML::Node& value, const YAML::Node& owner, std::string where) {
        Block result{{}, context_.position(owner), std::move(where)};
        if (!value.IsDefined() || value.IsNull()) return result;
        if (!value.IsMap()) {
            context_.error(value, result.where + " must be a mapping of keys, got " + context_.describe(value));
            return std::nullopt;
        }
        result.position = context_.position(value);
        result.entries = context_.entries(value);
        return result;
    }

    /// The items of a top-level list section; absent or empty is no items.
    std::vector<YAML::Node> list_section(const Entry* section, const std::string& example) {
        std::vector<YAML::Node> items;
        if (section == nullptr || !section->value.IsDefined() || section->value.IsNull()) return items;
        if (!section->value.IsSequence()) {
            context_.error(section->value, "'" + section->key + "' must be a list (" + example + "), got " +
                                               context_.describe(section->value));
            return items;
        }
        for (const auto& item : section->value) items.push_back(item);
        return items;
    }

    /// The entries of a top-level mapping section (name -> settings); absent or empty is none.
    std::vector<Entry> map_section(const Entry* section, const std::string& example) {
        if (section == nullptr || !section->value.IsDefined() || section->value.IsNull()) return {};
        if (!section->value.IsMap()) {
            context_.error(section->value, "'" + section->key + "' must be a mapping of names (" + example + "), got " +
                                               context_.describe(section->value));
            return {};
        }
        return context_.entries(section->value);
    }

    /// The text of @p key in @p block. A missing required key is reported at the block; a value that is not
    /// a single scalar, at the value.
    std::optional<std::string> scalar(const Block& block, std::string_view key, bool required) {
        const Entry* entry = find_entry(block.entries, key);
        if (entry == nullptr) {
            if (required) {
                context_.error(block.position, block.where + " is missing required key '" + std::string(key) + "'");
            }
            return std::nullopt;
        }
        if (!entry->value.IsDefined() || entry->value.IsNull()) {
            context_.error(entry->key_node, "'" + entry->key + "' in " + block.where + " has no value");
            return std::nullopt;
        }
        if (!entry->value.IsScalar()) {
            context_.error(entry->value,
                           "'" + entry->key + "' must be a single value, got " + context_.describe(entry->value));
            return std::nullopt;
        }
        return context_.text(entry->value);
    }

    /// The list @p key of @p block (absent: empty; not a list of scalars: reported, nullopt).
    std::optional<std::vector<Item>> list(const Block& block, std::string_view key, bool required) {
        const Entry* entry = find_entry(block.entries, key);
        if (entry == nullptr) {
            if (required) {
                context_.error(block.position, block.where + " is missing required key '" + std::string(key) + "'");
                return std::nullopt;
            }
            return std::vector<Item>{};
        }
        if (!entry->value.IsDefined() || entry->value.IsNull()) return std::vector<Item>{};
        if (!entry->value.IsSequence()) {
            context_.error(entry->value, "'" + entry->key + "' must be a list such as [a, b], got " +
                                             context_.describe(entry->value));
            return std::nullopt;
        }
        std::vector<Item> items;
        bool ok = true;
        for (const auto& node : entry->value) {
            if (!node.IsScalar()) {
                context_.error(node, "the items of '" + entry->key + "' must be names, got " + context_.describe(node));
                ok = false;
            } else if (auto text = context_.text(node)) {
                items.push_back(Item{std::move(*text), node});
            } else {
                ok = false;
            }
        }
        if (!ok) return std::nullopt;
        return items;
    }

    /// The value of @p key if it is one of @p allowed; absent or wrong gives nullopt (wrong is reported).
    std::optional<std::string> choice(const Block& block, std::string_view key,
                                      const std::vector<std::string>& allowed) {
        auto value = scalar(block, key, false);
        if (!value) return std::nullopt;
        if (std::find(allowed.begin(), allowed.end(), *value) == allowed.end()) {
            context_.error(find_entry(block.entries, key)->value, "'" + std::string(key) + "' must be one of " +
                                                                      detail::join(allowed) + ", got '" + *value + "'");
            return std::nullopt;
        }
        return value;
    }

    /// The entries of @p block that are not in @p core_keys: a plugin's settings.
    static std::vector<Entry> settings_of(const Block& block, const std::vector<std::string>& core_keys) {
        std::vector<Entry> settings;
        for (const Entry& entry : block.entries) {
            if (std::find(core_keys.begin(), core_keys.end(), entry.key) == core_keys.end()) settings.push_back(entry);
        }
        return settings;
    }

    SourcePosition value_position(const Block& block, std::string_view key) const {
        const Entry* entry = find_entry(block.entries, key);
        return entry != nullptr ? context_.position(entry->value) : block.position;
    }

    // ---- sections -------------------------------------------------------------------------------------------

    void load_switchboard(const Entry* section) {
        if (section == nullptr) return;
        auto settings = block(section->value, section->key_node, "'switchboard'");
        if (!settings) return;
        context_.check_keys(settings->entries, {"plugin_path", "admin", "log_level", "log_levels", "stop_timeout", "cluster"},
                            settings->where);

        if (auto paths = list(*settings, "plugin_path", false)) {
            for (const Item& item : *paths) config_.plugin_path.push_back(resolve_plugin_dir(item.text));
        }
        const std::vector<std::string> levels{"trace", "debug", "info", "warn", "error"};
        if (auto level = choice(*settings, "log_level", levels)) config_.log_level = *level;
        // How long a stop (SIGTERM) waits for queued messages and sends in flight; the rest stays in the store.
        if (auto timeout = scalar(*settings, "stop_timeout", false)) {
            if (auto ms = parse_duration_ms(*timeout); ms && *ms > 0) {
                config_.stop_timeout_ms = *ms;
            } else {
                context_.error(value_position(*settings, "stop_timeout"),
                               "'stop_timeout' must be a duration such as 10s or 500ms, got '" + *timeout + "'");
            }
        }
        // Per component (a connection, bot or strategy name, `NAME/recovery`, or host, pipeline, delivery, store,
        // admin): its level instead of log_level.
        if (const Entry* entry = find_entry(settings->entries, "log_levels")) {
            if (auto components = block(entry->value, entry->key_node, "'log_levels'")) {
                for (const Entry& component : components->entries) {
                    if (auto level = choice(*components, component.key, levels)) {
                        config_.log_levels[component.key] = *level;
                    }
                }
            }
        }
        if (const Entry* entry = find_entry(settings->entries, "cluster")) {
            if (auto cluster = block(entry->value, entry->key_node, "'cluster'")) {
                context_.check_keys(cluster->entries, {"host_id", "lease_ttl", "work_sharing"}, cluster->where);
                if (auto sharing = choice(*cluster, "work_sharing", {"true", "false"})) {
                    config_.cluster.work_sharing = *sharing == "true";
                }
                if (auto id = scalar(*cluster, "host_id", false)) {
                    if (id->empty() || id->find_first_of(" \t\r\n") != std::string::npos) {
                        context_.error(value_position(*cluster, "host_id"),
                                       "'host_id' must be a non-empty name without spaces, got '" + *id + "'");
                    }
                    config_.cluster.host_id = *id;
                }
                if (auto ttl = scalar(*cluster, "lease_ttl", false)) {
                    if (auto ms = parse_duration_ms(*ttl); ms && *ms >= 300) {
                        config_.cluster.lease_ttl_ms = *ms;
                    } else {
                        context_.error(value_position(*cluster, "lease_ttl"),
                                       "'lease_ttl' must be a duration of at least 300ms, such as 5s, got '" + *ttl +
                                           "'");
                    }
                }
            }
        }
        if (const Entry* admin_entry = find_entry(settings->entries, "admin")) {
            auto admin = block(admin_entry->value, admin_entry->key_node, "'admin'");
            if (!admin) return;
            context_.check_keys(admin->entries, {"listen", "token"}, admin->where);
            AdminConfig result;
            result.position = admin->position;
            if (auto listen = scalar(*admin, "listen", true)) {
                if (!valid_listen_address(*listen)) {
                    context_.error(value_position(*admin, "listen"),
                                   "'listen' must be HOST:PORT with a port from 0 to 65535 (0: any free port), such as 127.0.0.1:8080, "
                                   "got '" +
                                       *listen + "'");
                }
                result.listen = *listen;
            }
            if (auto token = scalar(*admin, "token", false)) result.token = *token;
            config_.admin = std::move(result);
        }
    }

    static bool valid_listen_address(const std::string& text) {
        const auto colon = text.rfind(':');
        if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) return false;
        const std::string port = text.substr(colon + 1);
        if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
            return false;
        }
        const int number = std::stoi(port);
        return number >= 0 && number <= 65535;
    }

    std::string resolve_plugin_dir(const std::string& entry) const {
        namespace fs = std::filesystem;
        fs::path path(entry);
        if (path.is_relative()) {
            std::error_code ec;
            const fs::path base =
                config_.file == "<embedded>" ? fs::current_path(ec) : fs::path(config_.file).parent_path();
            path = base / path;
            if (fs::path absolute = fs::absolute(path, ec); !ec) path = absolute;
        }
        return path.lexically_normal().string();
    }

    void load_store(const Entry* section) {
        PluginBlock use;
        use.kind = PluginKind::store;
        use.where = "store";
        use.core_keys = {"plugin"};
        if (section == nullptr) {
            // No `store:` at all: sqlite with its defaults.
            use.name = "sqlite";
            use.name_is_default = true;
            use.name_position = use.block_position = root_position_;
        } else {
            auto settings = block(section->value, section->key_node, "store");
            if (!settings) return;
            use.block_position = settings->position;
            if (find_entry(settings->entries, "plugin") == nullptr) {
                use.name = "sqlite";
                use.name_is_default = true;
                use.name_position = settings->position;
            } else if (auto name = scalar(*settings, "plugin", true)) {
                use.name = *name;
                use.name_position = value_position(*settings, "plugin");
            } else {
                return;
            }
            use.settings = settings_of(*settings, use.core_keys);
        }
        config_.store = detail::use_plugin(context_, schemas_, use);
    }

    void load_connections(const Entry* section) {
        const std::vector<std::string> core_keys{"name", "plugin", "recovery", "limits"};
        for (const YAML::Node& node : list_section(section, "each item starts with '- name: ...'")) {
            auto settings = block(node, node, "connection");
            if (!settings) continue;
            ConnectionConfig connection;
            connection.position = settings->position;

            const auto name = scalar(*settings, "name", true);
            if (name) {
                settings->where = "connection " + quoted(*name);
                const SourcePosition at = value_position(*settings, "name");
                if (name->empty()) {
                    context_.error(at, "a connection name must not be empty");
                } else if (name->find('/') != std::string::npos) {
                    context_.error(at, "connection name '" + *name +
                                           "' must not contain '/' (addresses are written connection/channel)");
                } else if (auto first = connections_.add(*name, at)) {
                    context_.error(at, "connection '" + *name + "' is defined twice (first at line " +
                                           std::to_string(*first) + "); connection names must be unique");
                }
                connection.name = *name;
            }

            if (auto plugin = scalar(*settings, "plugin", true)) {
                PluginBlock use;
                use.kind = PluginKind::connector;
                use.name = *plugin;
                use.name_position = value_position(*settings, "plugin");
                use.block_position = settings->position;
                use.settings = settings_of(*settings, core_keys);
                use.core_keys = core_keys;
                use.where = settings->where;
                connection.connector = detail::use_plugin(context_, schemas_, use);
            }
            load_recovery(*settings, connection);
            load_limits(*settings, connection);
            if (name) config_.connections.push_back(std::move(connection));
        }
    }

    void load_limits(const Block& connection_block, ConnectionConfig& connection) {
        detail::PluginBlock limits;
        limits.where = "limits of " + connection_block.where;
        limits.block_position = connection_block.position;
        if (const Entry* entry = find_entry(connection_block.entries, "limits")) {
            auto settings = block(entry->value, entry->key_node, limits.where);
            if (!settings) return;
            limits.settings = settings->entries;
            limits.block_position = settings->position;
        }
        detail::validate_settings(context_, connection_limits_schema(), limits, connection.limits);
    }

    void load_recovery(const Block& connection_block, ConnectionConfig& connection) {
        PluginBlock use;
        use.kind = PluginKind::recovery;
        use.where = "recovery of " + connection_block.where;
        use.core_keys = {"policy"};
        const Entry* entry = find_entry(connection_block.entries, "recovery");
        if (entry == nullptr || !entry->value.IsDefined() || entry->value.IsNull()) {
            use.name = "none";
            use.name_is_default = true;
            use.name_position = use.block_position =
                entry != nullptr ? context_.position(entry->key_node) : connection_block.position;
        } else if (entry->value.IsScalar()) {
            // `recovery: irc-replay` is short for `recovery: { policy: irc-replay }`.
            auto policy = context_.text(entry->value);
            if (!policy) return;
            use.name = *policy;
            use.name_position = use.block_position = context_.position(entry->value);
        } else {
            auto settings = block(entry->value, entry->key_node, use.where);
            if (!settings) return;
            auto policy = scalar(*settings, "policy", true);
            if (!policy) return;
            use.name = *policy;
            use.name_position = value_position(*settings, "policy");
            use.block_position = settings->position;
            use.settings = settings_of(*settings, use.core_keys);
        }
        connection.recovery = detail::use_plugin(context_, schemas_, use);
    }

    void load_channels(const Entry* section) {
        for (const Entry& entry : map_section(section, "name: { connection: CONNECTION, id: ID }")) {
            const SourcePosition at = context_.position(entry.key_node);
            if (auto first = channels_.add(entry.key, at)) {
                context_.error(
                    at, "channel '" + entry.key + "' is defined twice (first at line " + std::to_string(*first) + ")");
            }
            auto settings = block(entry.value, entry.key_node, "channel " + quoted(entry.key));
            if (!settings) continue;
            context_.check_keys(settings->entries, {"connection", "id", "tags"}, settings->where);
            ChannelConfig channel;
            channel.name = entry.key;
            channel.position = at;
            if (auto connection = scalar(*settings, "connection", true)) {
                check_connection(*settings, *connection);
                channel.connection = *connection;
            }
            if (auto id = scalar(*settings, "id", true)) channel.id = *id;
            if (auto tags = list(*settings, "tags", false)) {
                for (const Item& tag : *tags) {
                    tags_.insert(tag.text);
                    channel.tags.push_back(tag.text);
                }
            }
            config_.channels.push_back(std::move(channel));
        }
    }

    void check_connection(const Block& block, const std::string& connection) {
        if (connections_.has(connection)) return;
        context_.error(value_position(block, "connection"), block.where + " is on connection '" + connection +
                                                                "', which is not defined " + connections_.defined());
    }

    void load_users(const Entry* section) {
        for (const Entry& entry : map_section(section, "name: { connection: CONNECTION, id: ID }")) {
            const SourcePosition at = context_.position(entry.key_node);
            if (channels_.has(entry.key)) {
                context_.error(at, "user '" + entry.key +
                                       "' has the same name as a channel; group members could "
                                       "not tell them apart, so rename one");
            }
            if (auto first = users_.add(entry.key, at)) {
                context_.error(
                    at, "user '" + entry.key + "' is defined twice (first at line " + std::to_string(*first) + ")");
            }
            auto settings = block(entry.value, entry.key_node, "user " + quoted(entry.key));
            if (!settings) continue;
            context_.check_keys(settings->entries, {"connection", "id"}, settings->where);
            UserConfig user;
            user.name = entry.key;
            user.position = at;
            if (auto connection = scalar(*settings, "connection", true)) {
                check_connection(*settings, *connection);
                user.connection = *connection;
            }
            if (auto id = scalar(*settings, "id", true)) user.id = *id;
            config_.users.push_back(std::move(user));
        }
    }

    void load_groups(const Entry* section) {
        for (const Entry& entry : map_section(section, "name: { members: [CHANNEL, USER, ...] }")) {
            const SourcePosition at = context_.position(entry.key_node);
            if (channels_.has(entry.key)) {
                context_.error(at, "group '" + entry.key +
                                       "' has the same name as a channel; routes and sends "
                                       "could not tell them apart, so rename one");
            }
            if (auto first = groups_.add(entry.key, at)) {
                context_.error(
                    at, "group '" + entry.key + "' is defined twice (first at line " + std::to_string(*first) + ")");
            }
            auto settings = block(entry.value, entry.key_node, "group " + quoted(entry.key));
            if (!settings) continue;
            context_.check_keys(settings->entries, {"members", "delivery", "on_failure"}, settings->where);
            GroupConfig group;
            group.name = entry.key;
            group.position = at;
            if (auto members = list(*settings, "members", true)) {
                std::set<std::string> seen;
                for (const Item& member : *members) {
                    if (!seen.insert(member.text).second) {
                        context_.error(member.node,
                                       "member '" + member.text + "' is listed twice in " + settings->where);
                    } else if (!channels_.has(member.text) && !users_.has(member.text)) {
                        context_.error(member.node, settings->where + " has member '" + member.text +
                                                        "', which is neither a defined channel nor a defined user " +
                                                        channels_.defined() + " " + users_.defined());
                    }
                    group.members.push_back(member.text);
                }
            }
            const auto delivery = choice(*settings, "delivery", {"atomic", "best_effort"});
            if (delivery) group.delivery = *delivery == "atomic" ? DeliveryMode::atomic : DeliveryMode::best_effort;
            if (auto on_failure = choice(*settings, "on_failure", {"keep", "compensate"})) {
                group.on_failure = *on_failure == "compensate" ? OnFailure::compensate : OnFailure::keep;
                if (group.on_failure == OnFailure::compensate && group.delivery != DeliveryMode::atomic) {
                    context_.error(value_position(*settings, "on_failure"),
                                   "'on_failure: compensate' applies only to atomic delivery; add 'delivery: atomic' "
                                   "to " +
                                       settings->where + " or remove 'on_failure'");
                }
            }
            config_.groups.push_back(std::move(group));
        }
    }

    void load_routes(const Entry* section) {
        for (const YAML::Node& node :
             list_section(section, "each item like '- { from: CHANNEL, to: { group: GROUP } }'")) {
            auto settings = block(node, node, "route");
            if (!settings) continue;
            context_.check_keys(settings->entries, {"from", "to", "strategy"}, settings->where);
            RouteConfig route;
            route.position = settings->position;
            bool ok = true;

            if (auto from = scalar(*settings, "from", true)) {
                route.from = *from;
                if (!channels_.has(*from)) {
                    context_.error(
                        value_position(*settings, "from"),
                        "route is from channel '" + *from + "', which is not defined " + channels_.defined());
                }
            } else {
                ok = false;
            }

            const Entry* to = find_entry(settings->entries, "to");
            if (to == nullptr) {
                context_.error(settings->position, "route is missing required key 'to' (such as to: { group: GROUP })");
                ok = false;
            } else if (auto target = route_target(*to)) {
                route.to = *target;
            } else {
                ok = false;
            }

            if (const Entry* strategy = find_entry(settings->entries, "strategy")) {
                auto name = scalar(*settings, "strategy", false);
                if (name) {
                    route.strategy = *name;
                    check_strategy(*name, context_.position(strategy->value), false);
                }
            } else if (to != nullptr && ok) {
                route.strategy = std::string(to_string(route.to.kind));
                check_strategy(route.strategy, settings->position, true);
            }
            config_.routes.push_back(std::move(route));
        }
    }

    void check_strategy(const std::string& name, const SourcePosition& at, bool is_default) {
        PluginBlock use;
        use.kind = PluginKind::strategy;
        use.name = name;
        use.name_position = use.block_position = at;
        use.name_is_default = is_default;
        use.where = "route";
        (void)detail::find_plugin(context_, schemas_, use);
    }

    std::optional<RouteTarget> route_target(const Entry& to) {
        auto settings = block(to.value, to.key_node, "'to' of the route");
        if (!settings) return std::nullopt;
        const std::vector<std::string> kinds{"group", "channel", "user", "broadcast"};
        context_.check_keys(settings->entries, kinds, settings->where);
        const Entry* target = nullptr;
        for (const Entry& entry : settings->entries) {
            if (std::find(kinds.begin(), kinds.end(), entry.key) == kinds.end()) continue;
            if (target != nullptr) {
                context_.error(entry.key_node, "a route has one target, but 'to' names both '" + target->key +
                                                   "' and '" + entry.key + "'; write one route per target");
                return std::nullopt;
            }
            target = &entry;
        }
        if (target == nullptr) {
            context_.error(settings->position,
                           "'to' of the route needs one of group, channel, user or broadcast, such as { group: ops }");
            return std::nullopt;
        }

        RouteTarget result;
        const auto name = target->key == "broadcast" && (!target->value.IsDefined() || target->value.IsNull())
                              ? std::optional<std::string>(std::string{})
                              : scalar(*settings, target->key, true);
        if (!name) return std::nullopt;
        result.name = *name;
        const SourcePosition at = context_.position(target->value);
        if (target->key == "group") {
            result.kind = MessageKind::group;
            if (!groups_.has(*name)) {
                context_.error(at, "route refers to group '" + *name + "', which is not defined " + groups_.defined());
            }
        } else if (target->key == "channel") {
            result.kind = MessageKind::group;
            if (!channels_.has(*name)) {
                context_.error(at,
                               "route refers to channel '" + *name + "', which is not defined " + channels_.defined());
            }
        } else if (target->key == "user") {
            result.kind = MessageKind::private_message;
            if (!users_.has(*name)) {
                context_.error(at, "route refers to user '" + *name + "', which is not defined " + users_.defined());
            }
        } else {
            result.kind = MessageKind::broadcast;
            check_broadcast_scope(*name, at);
        }
        return result;
    }

    void check_broadcast_scope(const std::string& scope, const SourcePosition& at) {
        if (scope.empty()) return;
        if (scope.rfind("tag:", 0) == 0) {
            const std::string tag = scope.substr(4);
            if (tags_.count(tag) == 0) {
                std::vector<std::string> tags(tags_.begin(), tags_.end());
                context_.error(at, "broadcast scope '" + scope + "' names a tag no channel has " +
                                       (tags.empty() ? std::string("(no channel has tags)")
                                                     : "(tags in use: " + detail::join(tags) + ")"));
            }
            return;
        }
        if (!connections_.has(scope)) {
            context_.error(at, "broadcast scope '" + scope +
                                   "' is not a defined connection; use a connection name, tag:NAME, or nothing for "
                                   "every channel " +
                                   connections_.defined());
        }
    }

    /// `strategies: { NAME: { ...settings } }`: settings of routing strategy plugins (each named at most once).
    void load_strategies(const Entry* section) {
        for (const Entry& entry : map_section(section, "name: { batch_size: 50 }")) {
            auto settings = block(entry.value, entry.key_node, "strategy " + quoted(entry.key));
            if (!settings) continue;
            PluginBlock use;
            use.kind = PluginKind::strategy;
            use.name = entry.key;
            use.name_position = context_.position(entry.key_node);
            use.block_position = settings->position;
            use.settings = settings->entries;
            use.where = settings->where;
            config_.strategies.push_back(detail::use_plugin(context_, schemas_, use));
        }
    }

    void load_bots(const Entry* section) {
        const std::vector<std::string> core_keys{"plugin", "name", "channels", "isolation"};
        for (const YAML::Node& node : list_section(section, "each item starts with '- plugin: ...'")) {
            auto settings = block(node, node, "bot");
            if (!settings) continue;
            BotConfig bot;
            bot.position = settings->position;

            const auto plugin = scalar(*settings, "plugin", true);
            const bool named = find_entry(settings->entries, "name") != nullptr;
            const auto name = named ? scalar(*settings, "name", true) : plugin;
            if (name) {
                bot.name = *name;
                settings->where = "bot " + quoted(*name);
                const SourcePosition at = value_position(*settings, named ? "name" : "plugin");
                if (auto first = bots_.add(*name, at)) {
                    context_.error(at, "bot name '" + *name + "' is used twice (first at line " +
                                           std::to_string(*first) + "); give one of them a different 'name:'");
                }
            }

            if (auto channels = list(*settings, "channels", false)) {
                std::set<std::string> seen;
                for (const Item& channel : *channels) {
                    if (!seen.insert(channel.text).second) {
                        context_.error(channel.node,
                                       "channel '" + channel.text + "' is listed twice in " + settings->where);
                    } else if (!channels_.has(channel.text)) {
                        context_.error(channel.node, settings->where + " is on channel '" + channel.text +
                                                         "', which is not defined " + channels_.defined());
                    }
                    bot.channels.push_back(channel.text);
                }
            }
            if (auto isolation = choice(*settings, "isolation", {"in_process", "process"})) {
                bot.isolation = *isolation == "process" ? BotIsolation::process : BotIsolation::in_process;
            }

            if (plugin) {
                PluginBlock use;
                use.kind = PluginKind::bot;
                use.name = *plugin;
                use.name_position = value_position(*settings, "plugin");
                use.block_position = settings->position;
                use.settings = settings_of(*settings, core_keys);
                use.core_keys = core_keys;
                use.where = settings->where;
                bot.bot = detail::use_plugin(context_, schemas_, use);
                config_.bots.push_back(std::move(bot));
            }
        }
    }

    Context& context_;
    const SchemaSource& schemas_;
    Config& config_;
    SourcePosition root_position_;
    NameTable connections_{"connections"};
    NameTable channels_{"channels"};
    NameTable users_{"users"};
    NameTable groups_{"groups"};
    NameTable bots_{"bots"};
    std::set<std::string> tags_;
};

void sort_by_position(std::vector<ConfigError>& errors) {
    std::stable_sort(errors.begin(), errors.end(), [](const ConfigError& a, const ConfigError& b) {
        if (a.position.line != b.position.line) return a.position.line < b.position.line;
        return a.position.column < b.position.column;
    });
}

}  // namespace

LoadResult load_config_text(const std::string& text, const std::string& file, const SchemaSource& schemas) {
    LoadResult result;
    try {
        const detail::ProtectedText protected_text = detail::protect_variables(text);
        std::vector<YAML::Node> documents;
        try {
            documents = YAML::LoadAll(protected_text.text);
        } catch (const YAML::Exception& e) {
            // yaml-cpp marks are 0-based.
            const bool known = !e.mark.is_null();
            result.errors.push_back(
                ConfigError{SourcePosition{file, known ? e.mark.line + 1 : 0, known ? e.mark.column + 1 : 0},
                            "malformed YAML: " + e.msg});
            return result;
        }

        Context context(file, protected_text.open);
        YAML::Node root = documents.empty() ? YAML::Node() : documents.front();
        if (documents.size() > 1) {
            context.error(documents[1], "the config holds " + std::to_string(documents.size()) +
                                            " YAML documents; keep one (remove the '---' separators)");
        }
        context.expand_all(root);

        Config config;
        config.file = file;
        Loader(context, schemas, config).load(root);

        result.errors = context.take_errors();
        sort_by_position(result.errors);
        if (result.errors.empty()) result.config = std::move(config);
    } catch (const std::exception& e) {
        result.config.reset();
        result.errors.push_back(
            ConfigError{SourcePosition{file, 0, 0}, std::string("could not read the config: ") + e.what()});
    }
    return result;
}

LoadResult load_config_file(const std::string& path, const SchemaSource& schemas) try {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
        return LoadResult{
            std::nullopt,
            {ConfigError{SourcePosition{path, 0, 0}, "is a directory; pass the config file itself with -c FILE"}}};
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const std::string reason = std::generic_category().message(errno);
        return LoadResult{std::nullopt,
                          {ConfigError{SourcePosition{path, 0, 0},
                                       "cannot read config file: " + reason + "; check the path given with -c FILE"}}};
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        return LoadResult{std::nullopt,
                          {ConfigError{SourcePosition{path, 0, 0}, "cannot read config file: read error"}}};
    }
    return load_config_text(text.str(), path, schemas);
} catch (const std::exception& e) {
    return LoadResult{std::nullopt,
                      {ConfigError{SourcePosition{path, 0, 0}, std::string("cannot read config file: ") + e.what()}}};
}

}  // namespace switchboard::config
