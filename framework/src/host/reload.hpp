#pragma once
// What a reload (SIGHUP, POST /api/reload) changes: the running config and plugins compared with the new ones. The
// host applies the plan (host.cpp); this part is pure, so tests check it without a host.
//
// A reload may change connections, channels, users, groups, routes, strategies, bots and plugin files. It may not
// change the store (its plugin, settings or file), the admin server, logging or the stop timeout: those are fixed for
// the life of the process, and a new config that changes them is refused as a whole (restart to change them).

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "plugin/registry.hpp"

namespace switchboard::host {

/// Names that a reload adds, removes, changes (rebuilds from the new config) or keeps as they run.
struct ReloadChanges {
    std::vector<std::string> added;
    std::vector<std::string> removed;
    std::vector<std::string> changed;
    std::vector<std::string> kept;
};

struct ReloadPlan {
    /// What the new config changes that a reload cannot, one line each naming the key and what to do. Not empty:
    /// the reload is refused.
    std::vector<std::string> refused;
    /// Connections by name. Changed: its connector or recovery plugin or settings, its `limits:`, the channel ids
    /// configured on it, or the library of its connector or recovery plugin. A changed one is reconnected.
    ReloadChanges connections;
    /// Bots by name. Changed: its plugin, settings or isolation, or its plugin's library; a changed bot is created
    /// anew. A bot whose channels alone changed is kept (it hears the new channels).
    ReloadChanges bots;
    /// Plugins whose library changed: loaded beside the old one, which drains and unloads.
    std::vector<std::string> plugins_changed;
    /// Channels, users, groups, routes or strategies differ.
    bool routing_changed = false;

    /// The summary POST /api/reload answers and the log shows.
    [[nodiscard]] nlohmann::json to_json() const;
};

/// Compares the running set (@p running with @p running_plugins) with @p next and @p next_plugins.
[[nodiscard]] ReloadPlan plan_reload(const config::Config& running, const plugin::Registry& running_plugins,
                                     const config::Config& next, const plugin::Registry& next_plugins);

}  // namespace switchboard::host
