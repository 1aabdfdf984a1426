#pragma once
// Reading the config and the plugins it names, the one way `switchboard run|check|route` and a reload do it: read
// the file (or the embedded default), load every plugin library of the search path (the command line's
// directories, the config's plugin_path, the defaults), then validate the config against those plugins.

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "plugin/registry.hpp"

namespace switchboard::host {

/// Where the config comes from.
struct ConfigSource {
    /// The config file; nullopt: the embedded default (config/switchboard.yaml).
    std::optional<std::string> path;
    /// `--plugin-path` directories, searched before the config's plugin_path and the default directories.
    std::vector<std::string> plugin_dirs;
};

/// A config read and validated with the plugins it names. Valid when `config` is set; otherwise exactly one kind of
/// problem is filled, in the order they are found: the file could not be read, a plugin library was refused, or
/// the config has errors.
struct LoadedConfig {
    std::string name;                            // how messages call the source: its path, or "<embedded>"
    std::unique_ptr<plugin::Registry> registry;  // every plugin loaded (also when the config is not valid)
    std::optional<config::Config> config;
    std::string read_error;                   // one line: `PATH: error: cannot read the config file: REASON`
    std::vector<plugin::Refusal> refusals;    // plugin libraries refused
    std::vector<config::ConfigError> errors;  // config errors

    /// Every problem, one line each.
    [[nodiscard]] std::vector<std::string> problems() const;
};

/// Loads every directory of @p directories that @p done does not hold yet (by canonical path) into @p registry, and
/// adds it to @p done (the same directory twice would refuse each of its plugins as a duplicate). Returns the
/// refusals; the good plugins are kept.
std::vector<plugin::Refusal> load_plugin_directories(const std::vector<std::filesystem::path>& directories,
                                                     std::vector<std::filesystem::path>& done,
                                                     plugin::Registry& registry);

/// Reads @p source, loads the plugins of its search path into a new registry and validates the config against
/// them. With @p running (a reload), the new registry succeeds it (plugin::Registry::succeed, changed files copied
/// into @p copies). Never throws for a bad file, library or config: those are in the result.
[[nodiscard]] LoadedConfig load_config(const ConfigSource& source, const plugin::Registry* running = nullptr,
                                       const std::filesystem::path& copies = {});

}  // namespace switchboard::host
