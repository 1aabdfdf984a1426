#include "host/config_source.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace switchboard::host {
namespace {

namespace fs = std::filesystem;

// The config's own plugin_path has to be known before its plugins can be validated, so it is read ahead here.
// Entries that use ${VAR} are resolved by the full load later; a difference triggers a second pass.
std::vector<fs::path> read_plugin_path(const std::string& text, const fs::path& base) {
    std::vector<fs::path> directories;
    try {
        const YAML::Node path = YAML::Load(text)["switchboard"]["plugin_path"];
        if (!path.IsSequence()) return directories;
        for (const auto& entry : path) {
            if (!entry.IsScalar()) continue;
            fs::path directory = entry.as<std::string>();
            directories.push_back(directory.is_relative() ? base / directory : directory);
        }
    } catch (const YAML::Exception&) {
        // Malformed YAML is reported, with its position, by the full load.
    }
    return directories;
}

}  // namespace

std::vector<plugin::Refusal> load_plugin_directories(const std::vector<fs::path>& directories,
                                                     std::vector<fs::path>& done, plugin::Registry& registry) {
    std::vector<plugin::Refusal> refusals;
    for (const fs::path& directory : directories) {
        const fs::path canonical = fs::weakly_canonical(directory);
        if (std::find(done.begin(), done.end(), canonical) != done.end()) continue;
        done.push_back(canonical);
        for (auto& refusal : registry.load_directory(canonical)) refusals.push_back(std::move(refusal));
    }
    return refusals;
}

std::vector<std::string> LoadedConfig::problems() const {
    std::vector<std::string> lines;
    if (!read_error.empty()) lines.push_back(read_error);
    for (const auto& refusal : refusals) lines.push_back(refusal.to_string());
    for (const auto& error : errors) lines.push_back(error.to_string());
    return lines;
}

LoadedConfig load_config(const ConfigSource& source, const plugin::Registry* running, const fs::path& copies) {
    LoadedConfig loaded;
    loaded.registry = std::make_unique<plugin::Registry>();
    if (running != nullptr) loaded.registry->succeed(*running, copies);
    std::string text;
    fs::path base = fs::current_path();
    if (source.path) {
        loaded.name = *source.path;
        std::ifstream in(*source.path, std::ios::binary);
        if (!in) {
            loaded.read_error = *source.path + ": error: cannot read the config file: " + std::strerror(errno);
            return loaded;
        }
        std::ostringstream read;
        read << in.rdbuf();
        text = read.str();
        base = fs::absolute(*source.path).parent_path();
    } else {
        loaded.name = "<embedded>";
        text = config::embedded_default_config();
    }

    std::vector<fs::path> search(source.plugin_dirs.begin(), source.plugin_dirs.end());
    for (auto& directory : read_plugin_path(text, base)) search.push_back(std::move(directory));
    for (auto& directory : plugin::Registry::default_directories()) search.push_back(std::move(directory));
    std::vector<fs::path> done;
    loaded.refusals = load_plugin_directories(search, done, *loaded.registry);
    if (!loaded.refusals.empty()) return loaded;

    config::LoadResult result = config::load_config_text(text, loaded.name, *loaded.registry);
    if (result.config) {
        // plugin_path entries written with ${VAR} are only known now: load any new directory and validate again.
        const std::size_t before = done.size();
        loaded.refusals = load_plugin_directories(
            {result.config->plugin_path.begin(), result.config->plugin_path.end()}, done, *loaded.registry);
        if (!loaded.refusals.empty()) return loaded;
        if (done.size() != before) result = config::load_config_text(text, loaded.name, *loaded.registry);
    }
    loaded.errors = std::move(result.errors);
    if (result.config && loaded.errors.empty()) loaded.config = std::move(result.config);
    return loaded;
}

}  // namespace switchboard::host
