#include "host/reload.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

namespace switchboard::host {
namespace {

bool same(const config::PluginUse& a, const config::PluginUse& b) {
    return a.plugin == b.plugin && a.settings.values() == b.settings.values();
}

// The plugin named @p name was loaded anew: its descriptor in @p next is not the one running (a library loaded
// from a new copy has its own).
bool library_changed(const std::string& name, const plugin::Registry& running, const plugin::Registry& next) {
    const plugin::LoadedPlugin* before = running.find(name);
    const plugin::LoadedPlugin* after = next.find(name);
    return before != nullptr && after != nullptr && before->descriptor != after->descriptor;
}

// The channel ids configured on @p connection, sorted.
std::vector<std::string> channel_ids(const config::Config& config, const std::string& connection) {
    std::vector<std::string> ids;
    for (const auto& channel : config.channels) {
        if (channel.connection == connection) ids.push_back(channel.id);
    }
    std::sort(ids.begin(), ids.end());
    return ids;
}

// Sorts the names of @p before and @p after into @p changes; @p differs(old, new) says whether a kept name changed.
template <class T, class Differs>
void compare(const std::vector<T>& before, const std::vector<T>& after, ReloadChanges& changes, Differs differs) {
    std::map<std::string, const T*> old_by_name;
    for (const T& item : before) old_by_name[item.name] = &item;
    std::set<std::string> new_names;
    for (const T& item : after) {
        new_names.insert(item.name);
        auto old = old_by_name.find(item.name);
        if (old == old_by_name.end()) {
            changes.added.push_back(item.name);
        } else if (differs(*old->second, item)) {
            changes.changed.push_back(item.name);
        } else {
            changes.kept.push_back(item.name);
        }
    }
    for (const T& item : before) {
        if (new_names.count(item.name) == 0) changes.removed.push_back(item.name);
    }
}

template <class T, class Key>
bool same_list(const std::vector<T>& a, const std::vector<T>& b, Key key) {
    return std::equal(a.begin(), a.end(), b.begin(), b.end(), [&](const T& x, const T& y) { return key(x) == key(y); });
}

nlohmann::json changes_json(const ReloadChanges& changes) {
    return {
        {"added", changes.added}, {"removed", changes.removed}, {"changed", changes.changed}, {"kept", changes.kept}};
}

}  // namespace

nlohmann::json ReloadPlan::to_json() const {
    return {{"connections", changes_json(connections)},
            {"bots", changes_json(bots)},
            {"plugins_changed", plugins_changed},
            {"routing_changed", routing_changed}};
}

ReloadPlan plan_reload(const config::Config& running, const plugin::Registry& running_plugins,
                       const config::Config& next, const plugin::Registry& next_plugins) {
    ReloadPlan plan;

    const auto refuse_change = [&](bool changed, const std::string& key) {
        if (changed) plan.refused.push_back(key + " cannot change by reload; restart switchboard to change it");
    };
    refuse_change(!same(running.store, next.store), "store");
    const auto admin_key = [](const std::optional<config::AdminConfig>& admin) {
        return admin ? std::make_pair(admin->listen, admin->token) : std::make_pair(std::string(), std::string());
    };
    refuse_change(
        running.admin.has_value() != next.admin.has_value() || admin_key(running.admin) != admin_key(next.admin),
        "switchboard.admin");
    refuse_change(running.log_level != next.log_level || running.log_levels != next.log_levels,
                  "switchboard.log_level and log_levels");
    refuse_change(running.stop_timeout_ms != next.stop_timeout_ms, "switchboard.stop_timeout");

    for (const plugin::LoadedPlugin& loaded : next_plugins.plugins()) {
        if (library_changed(loaded.descriptor->name, running_plugins, next_plugins)) {
            plan.plugins_changed.emplace_back(loaded.descriptor->name);
        }
    }
    const auto changed_library = [&](const std::string& name) {
        return std::find(plan.plugins_changed.begin(), plan.plugins_changed.end(), name) != plan.plugins_changed.end();
    };
    refuse_change(running.store.plugin == next.store.plugin && changed_library(next.store.plugin),
                  "the store plugin's file (" + next.store.plugin + ")");

    compare(running.connections, next.connections, plan.connections,
            [&](const config::ConnectionConfig& a, const config::ConnectionConfig& b) {
                return !same(a.connector, b.connector) || !same(a.recovery, b.recovery) ||
                       a.limits.values() != b.limits.values() ||
                       channel_ids(running, a.name) != channel_ids(next, b.name) ||
                       changed_library(b.connector.plugin) || changed_library(b.recovery.plugin);
            });
    compare(running.bots, next.bots, plan.bots, [&](const config::BotConfig& a, const config::BotConfig& b) {
        return !same(a.bot, b.bot) || a.isolation != b.isolation || changed_library(b.bot.plugin);
    });

    const auto channel_key = [](const config::ChannelConfig& c) {
        return std::make_tuple(c.name, c.connection, c.id, c.tags);
    };
    const auto user_key = [](const config::UserConfig& u) { return std::make_tuple(u.name, u.connection, u.id); };
    const auto group_key = [](const config::GroupConfig& g) {
        return std::make_tuple(g.name, g.members, g.delivery, g.on_failure);
    };
    const auto route_key = [](const config::RouteConfig& r) {
        return std::make_tuple(r.from, r.to.kind, r.to.name, r.strategy);
    };
    const auto strategy_key = [](const config::PluginUse& s) { return std::make_pair(s.plugin, s.settings.values()); };
    bool strategy_library_changed = false;
    for (const plugin::LoadedPlugin& loaded : next_plugins.plugins()) {
        if (loaded.descriptor->kind == PluginKind::strategy && changed_library(loaded.descriptor->name)) {
            strategy_library_changed = true;
        }
    }
    plan.routing_changed =
        !same_list(running.channels, next.channels, channel_key) || !same_list(running.users, next.users, user_key) ||
        !same_list(running.groups, next.groups, group_key) || !same_list(running.routes, next.routes, route_key) ||
        !same_list(running.strategies, next.strategies, strategy_key) || strategy_library_changed;
    return plan;
}

}  // namespace switchboard::host
