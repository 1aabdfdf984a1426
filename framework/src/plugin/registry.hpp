#pragma once
// The plugin registry: finds plugin libraries, checks and loads them with Boost.DLL, and creates their objects.
// Internal to the core.

#include "config/config.hpp"

#include <switchboard/plugin.hpp>
#include <switchboard/result.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace boost::dll {
class shared_library;
}  // namespace boost::dll

namespace switchboard::plugin {

/// One plugin library that passed every check.
struct LoadedPlugin {
    std::filesystem::path file;                        // empty for a plugin injected by a test
    std::shared_ptr<boost::dll::shared_library> library;  // null for an injected plugin
    const PluginDescriptor* descriptor = nullptr;
    // The file as it was when loaded: a reload takes over a library whose file is still this one (the same inode,
    // so not renamed over) with this size and modification time.
    std::uintmax_t size = 0;
    std::filesystem::file_time_type modified{};
    std::uint64_t inode = 0;  // 0 where the platform has none
};

/// A library the registry refused, and why. `to_string()` is the one-line error:
/// `FILE: error: REASON`.
struct Refusal {
    std::filesystem::path file;
    std::string code;    // stable: not_a_library, no_descriptor, abi_mismatch, build_stamp_mismatch, duplicate_name,
                         // bad_descriptor (right ABI and stamp, but a field is invalid), no_directory,
                         // copy_failed (a reload could not copy a changed file, see Registry::succeed)
    std::string reason;  // a sentence naming what to do
    [[nodiscard]] std::string to_string() const;
};

class Registry final : public config::SchemaSource {
public:
    Registry();
    ~Registry() override;
    Registry(const Registry&) = delete;
    Registry& operator=(const Registry&) = delete;

    /// Loads every `*.so` (`*.dll` on Windows) in @p directory (not recursive), in name order. Returns the
    /// refusals; the good plugins are kept. A missing directory is a refusal too.
    std::vector<Refusal> load_directory(const std::filesystem::path& directory);

    /// Loads one library file. Checks, in this order: it is a shared library; it exports `switchboard_plugin`;
    /// the descriptor's ABI version and then build stamp equal the host's; its name is not taken yet.
    [[nodiscard]] std::optional<Refusal> load_file(const std::filesystem::path& file);

    /// Makes this registry the successor of @p running for a reload: from now on a file that @p running loaded and
    /// that has not changed since (the same inode, size and modification time) is taken over from it — the same library, not
    /// loaded again — and any other file is copied into @p copies (a private directory) and loaded from the copy,
    /// which is deleted once loaded. The dynamic loader hands back the library it already has for a path it has
    /// loaded before, so a changed file has to come in under a new path to be loaded beside the old version.
    /// @p running must outlive the calls to load_directory() and load_file().
    void succeed(const Registry& running, std::filesystem::path copies);

    /// Test hook: registers a descriptor compiled into the test itself (duplicate names are refused too).
    [[nodiscard]] std::optional<Refusal> add(const PluginDescriptor& descriptor);

    /// Every loaded plugin, in load order.
    [[nodiscard]] const std::vector<LoadedPlugin>& plugins() const noexcept { return plugins_; }

    /// The plugin named @p name, or null.
    [[nodiscard]] const LoadedPlugin* find(const std::string& name) const noexcept;

    /// SchemaSource: the descriptor of @p name if it exists and is of @p kind; else null and @p why.
    [[nodiscard]] const PluginDescriptor* find(const std::string& name, PluginKind kind,
                                               std::string& why) const override;

    /// Creates an instance of plugin @p name, which must be of kind `T::kKind`. The returned pointer's deleter keeps
    /// the library loaded until the object is destroyed. Failures (unknown name, wrong kind, the factory's own
    /// error) are values.
    template <class T>
    [[nodiscard]] Result<std::shared_ptr<T>> create(const std::string& name, const PluginContext& context,
                                                    const PluginConfig& config) const {
        auto object = create_object(name, T::kKind, context, config);
        if (!object) return object.error();
        // The factory returned T::Interface* converted to PluginObject*; undo that conversion exactly.
        std::shared_ptr<PluginObject> base = *object;
        return std::shared_ptr<T>(base, static_cast<T*>(base.get()));
    }

    /// Directories searched after the configured ones: $SWITCHBOARD_PLUGIN_PATH (':'-separated), then
    /// `<dir of the running executable>/../<libdir>/switchboard/plugins` (the build tree and an installation share
    /// this layout) and `.../../lib/switchboard/plugins`, those that exist, each once.
    [[nodiscard]] static std::vector<std::filesystem::path> default_directories();

private:
    [[nodiscard]] Result<std::shared_ptr<PluginObject>> create_object(const std::string& name, PluginKind kind,
                                                                      const PluginContext& context,
                                                                      const PluginConfig& config) const;

    std::vector<LoadedPlugin> plugins_;
    const Registry* running_ = nullptr;  // succeed(): the registry whose unchanged libraries this one takes over
    std::filesystem::path copies_;       // succeed(): where changed files are copied to be loaded
};

}  // namespace switchboard::plugin
