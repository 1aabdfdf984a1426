#include "plugin/registry.hpp"

#include <algorithm>
#include <atomic>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <exception>
#include <string_view>
#include <system_error>
#include <utility>

#if !defined(_WIN32)
#include <sys/stat.h>
#endif

namespace switchboard::plugin {

namespace {

namespace fs = std::filesystem;

// Kinds this host knows; a descriptor with any other value comes from a newer or broken SDK.
bool is_known_kind(PluginKind kind) noexcept {
    const auto value = static_cast<std::uint32_t>(kind);
    return value >= static_cast<std::uint32_t>(PluginKind::connector) &&
           value <= static_cast<std::uint32_t>(PluginKind::bot);
}

std::string display_name(const fs::path& file) { return file.empty() ? std::string("<built-in>") : file.string(); }

// Newlines would break the one-line contract of Refusal::to_string (dlerror text is not ours to trust).
std::string one_line(std::string text) {
    std::replace(text.begin(), text.end(), '\n', ' ');
    std::replace(text.begin(), text.end(), '\r', ' ');
    return text;
}

// Boost.DLL puts dlerror's text in what() as "... (dlerror system message: FILE: TEXT): ERRNO TEXT". Keep only
// TEXT: the refusal names the file already, and the errno text ("Bad file descriptor") misleads.
std::string loader_message(const std::exception& e, const fs::path& file) {
    std::string text = e.what();
    static constexpr std::string_view kMarker = "dlerror system message: ";
    if (const auto at = text.find(kMarker); at != std::string::npos) {
        text = text.substr(at + kMarker.size());
        if (const auto close = text.rfind(')'); close != std::string::npos) text.resize(close);
        const std::string prefix = file.string() + ": ";
        if (text.starts_with(prefix)) text = text.substr(prefix.size());
    }
    return one_line(std::move(text));
}

// The file's inode number, or 0 where there is none (or it cannot be read).
std::uint64_t inode_of(const fs::path& file) {
#if defined(_WIN32)
    (void)file;
    return 0;
#else
    struct stat info {};
    return ::stat(file.c_str(), &info) == 0 ? static_cast<std::uint64_t>(info.st_ino) : 0;
#endif
}

Refusal refuse(const fs::path& file, std::string code, std::string reason) {
    return Refusal{file, std::move(code), std::move(reason)};
}

// Keeps the library loaded for as long as the object lives: the object is deleted first (its destructor is code in
// the library), then the deleter, and with it this reference to the library, goes.
struct LibraryKeepingDeleter {
    std::shared_ptr<boost::dll::shared_library> library;
    void operator()(PluginObject* object) const noexcept { delete object; }
};

// The checks every plugin passes before it is registered, in the order registry.hpp documents.
std::optional<Refusal> admit(const Registry& registry, const LoadedPlugin& plugin) {
    const fs::path& file = plugin.file;
    const PluginDescriptor& descriptor = *plugin.descriptor;

    // Only the first field is read before the ABI version is known to match: the rest may be laid out differently.
    if (descriptor.abi_version != kAbiVersion) {
        return refuse(file, "abi_mismatch",
                      "plugin ABI version " + std::to_string(descriptor.abi_version) +
                          ", but this host has ABI version " + std::to_string(kAbiVersion) +
                          "; rebuild the plugin against this Switchboard SDK");
    }
    const std::string_view host_stamp = kBuildStamp;
    const std::string_view plugin_stamp = descriptor.build_stamp != nullptr ? descriptor.build_stamp : "";
    if (plugin_stamp != host_stamp) {
        return refuse(file, "build_stamp_mismatch",
                      "plugin built as '" + std::string(descriptor.build_stamp != nullptr ? plugin_stamp : "(none)") +
                          "', but this host is '" + std::string(host_stamp) +
                          "'; rebuild the plugin with the same compiler, standard library and Boost as the host");
    }

    std::string problem;
    if (!is_known_kind(descriptor.kind)) {
        problem = "unknown plugin kind " + std::to_string(static_cast<std::uint32_t>(descriptor.kind));
    } else if (descriptor.name == nullptr || descriptor.name[0] == '\0') {
        problem = "no plugin name";
    } else if (descriptor.version == nullptr || descriptor.description == nullptr) {
        problem = "no version or description";
    } else if (descriptor.schema == nullptr) {
        problem = "no config schema function";
    } else if (descriptor.create == nullptr) {
        problem = "no factory";
    }
    if (!problem.empty()) {
        return refuse(file, "bad_descriptor",
                      "invalid plugin descriptor (" + problem + "); build the plugin with SWITCHBOARD_PLUGIN(...)");
    }

    if (const LoadedPlugin* other = registry.find(descriptor.name)) {
        std::error_code same_ec;
        if (!file.empty() && !other->file.empty() && fs::equivalent(file, other->file, same_ec)) {
            return refuse(
                file, "duplicate_name",
                std::string("plugin '") + descriptor.name +
                    "' is loaded already from this very file; list its directory only once in the plugin path");
        }
        return refuse(file, "duplicate_name",
                      std::string("plugin name '") + descriptor.name + "' is already taken by " +
                          display_name(other->file) + "; keep only one of the two in the plugin path");
    }
    return std::nullopt;
}

}  // namespace

std::string Refusal::to_string() const { return one_line(display_name(file) + ": error: " + reason); }

Registry::Registry() = default;

// plugins_ holds the registry's references to the libraries: each unloads here unless an object created from it still
// lives, in which case it unloads after that object.
Registry::~Registry() = default;

std::vector<Refusal> Registry::load_directory(const std::filesystem::path& directory) {
    std::vector<Refusal> refusals;
    std::error_code ec;
    if (!fs::is_directory(directory, ec)) {
        refusals.push_back(refuse(directory, "no_directory",
                                  "plugin directory does not exist or is not a directory; fix the plugin path "
                                  "(switchboard.plugin_path or $SWITCHBOARD_PLUGIN_PATH)"));
        return refusals;
    }

    const fs::path suffix = boost::dll::shared_library::suffix();
    std::vector<fs::path> files;
    fs::directory_iterator it(directory, ec);
    if (ec) {
        refusals.push_back(refuse(directory, "no_directory", "cannot read the plugin directory: " + ec.message()));
        return refusals;
    }
    for (const fs::directory_iterator end; it != end; it.increment(ec)) {
        if (ec) break;
        std::error_code type_ec;
        if (it->path().extension() == suffix && it->is_regular_file(type_ec)) files.push_back(it->path());
    }
    if (ec) {
        refusals.push_back(refuse(directory, "no_directory", "cannot read the plugin directory: " + ec.message()));
    }
    std::sort(files.begin(), files.end());

    for (const fs::path& file : files) {
        if (auto refusal = load_file(file)) refusals.push_back(std::move(*refusal));
    }
    return refusals;
}

void Registry::succeed(const Registry& running, std::filesystem::path copies) {
    running_ = &running;
    copies_ = std::move(copies);
}

std::optional<Refusal> Registry::load_file(const std::filesystem::path& file) {
    std::error_code stat_ec;
    const std::uintmax_t size = fs::file_size(file, stat_ec);
    const fs::file_time_type modified = stat_ec ? fs::file_time_type{} : fs::last_write_time(file, stat_ec);
    const std::uint64_t inode = inode_of(file);

    if (running_ != nullptr && !stat_ec) {
        for (const LoadedPlugin& loaded : running_->plugins_) {
            if (loaded.file.empty() || loaded.file.lexically_normal() != file.lexically_normal()) continue;
            // Changed: another size or time, or another file renamed over it (which a same-size file written within
            // the clock's granularity would not show by its time).
            if (loaded.size != size || loaded.modified != modified || loaded.inode != inode) break;
            if (auto refusal = admit(*this, loaded)) return refusal;
            plugins_.push_back(loaded);
            return std::nullopt;
        }
    }

    // After succeed(), a file is loaded from a private copy with a name never used before (see registry.hpp).
    fs::path load_from = file;
    if (running_ != nullptr) {
        static std::atomic<std::uint64_t> copies_made{0};
        load_from = copies_ / (file.stem().string() + "." + std::to_string(copies_made.fetch_add(1) + 1) +
                               file.extension().string());
        std::error_code copy_ec;
        fs::create_directories(copies_, copy_ec);
        if (!copy_ec) fs::copy_file(file, load_from, fs::copy_options::overwrite_existing, copy_ec);
        if (copy_ec) {
            return refuse(file, "copy_failed",
                          "cannot copy it to " + load_from.string() + " to load it beside the running version (" +
                              copy_ec.message() + "); check that directory's space and permissions");
        }
    }
    // The copy can go once loaded or refused: the loader keeps its mapping of a deleted file.
    struct RemoveCopy {
        const fs::path* copy;
        ~RemoveCopy() {
            std::error_code ignored;
            if (copy != nullptr) fs::remove(*copy, ignored);
        }
    } remove_copy{running_ != nullptr ? &load_from : nullptr};

    auto library = std::make_shared<boost::dll::shared_library>();
    try {
        // rtld_now: a library with an unresolved symbol is refused here instead of aborting the process at the first
        // call that needs it. rtld_local: two plugins may export the same symbol names.
        library->load(load_from, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
    } catch (const std::exception& e) {
        return refuse(file, "not_a_library",
                      "not a loadable shared library (" + loader_message(e, load_from) +
                          "); remove it from the plugin directory or rebuild it");
    }

    const PluginDescriptor* descriptor = nullptr;
    try {
        if (!library->has(kPluginSymbol)) {
            return refuse(file, "no_descriptor",
                          std::string("exports no ") + kPluginSymbol +
                              " symbol: is it a Switchboard plugin? build it with SWITCHBOARD_PLUGIN(...)");
        }
        auto& describe = library->get_alias<PluginDescribeFunction>(kPluginSymbol);
        descriptor = describe();
    } catch (const std::exception& e) {
        return refuse(file, "no_descriptor",
                      std::string("cannot read its ") + kPluginSymbol + " symbol (" + one_line(e.what()) + ")");
    }
    if (descriptor == nullptr) {
        return refuse(file, "no_descriptor",
                      std::string("its ") + kPluginSymbol +
                          " function returned no descriptor; build it with SWITCHBOARD_PLUGIN(...)");
    }

    LoadedPlugin plugin{file, std::move(library), descriptor, size, modified, inode};
    if (auto refusal = admit(*this, plugin)) return refusal;  // `library` goes with `plugin`: a refused library unloads
    plugins_.push_back(std::move(plugin));
    return std::nullopt;
}

std::optional<Refusal> Registry::add(const PluginDescriptor& descriptor) {
    LoadedPlugin plugin{{}, nullptr, &descriptor};
    if (auto refusal = admit(*this, plugin)) return refusal;
    plugins_.push_back(std::move(plugin));
    return std::nullopt;
}

const LoadedPlugin* Registry::find(const std::string& name) const noexcept {
    for (const LoadedPlugin& plugin : plugins_) {
        if (name == plugin.descriptor->name) return &plugin;
    }
    return nullptr;
}

const PluginDescriptor* Registry::find(const std::string& name, PluginKind kind, std::string& why) const {
    const LoadedPlugin* plugin = find(name);
    if (plugin == nullptr) {
        std::vector<std::string> names;
        names.reserve(plugins_.size());
        for (const LoadedPlugin& loaded : plugins_) names.emplace_back(loaded.descriptor->name);
        std::sort(names.begin(), names.end());
        std::string found;
        for (const std::string& known : names) found += (found.empty() ? "" : ", ") + known;
        why = "no plugin named '" + name + "' (found: " + (found.empty() ? std::string("none") : found) + ")";
        return nullptr;
    }
    if (plugin->descriptor->kind != kind) {
        // Every kind name starts with a consonant, so "a" is always right.
        why = "plugin '" + name + "' is a " + std::string(to_string(plugin->descriptor->kind)) + " plugin (" +
              display_name(plugin->file) + "), but a " + std::string(to_string(kind)) + " is needed here";
        return nullptr;
    }
    return plugin->descriptor;
}

Result<std::shared_ptr<PluginObject>> Registry::create_object(const std::string& name, PluginKind kind,
                                                              const PluginContext& context,
                                                              const PluginConfig& config) const {
    std::string why;
    const PluginDescriptor* descriptor = find(name, kind, why);
    const LoadedPlugin* plugin = find(name);
    if (descriptor == nullptr) return fail(plugin == nullptr ? "plugin_not_found" : "plugin_wrong_kind", why);

    Error error;
    PluginObject* object = descriptor->create(context, config, error);
    if (object == nullptr) {
        if (error.code.empty()) error.code = "plugin_create_failed";
        if (error.message.empty()) error.message = "its factory returned no object";
        error.message = "plugin '" + name + "': " + error.message;
        return error;
    }
    // An injected plugin has no library; its deleter then holds null and just deletes.
    return std::shared_ptr<PluginObject>(object, LibraryKeepingDeleter{plugin->library});
}

std::vector<std::filesystem::path> Registry::default_directories() {
    std::vector<fs::path> candidates;
#if defined(_WIN32)
    constexpr char kSeparator = ';';
#else
    constexpr char kSeparator = ':';
#endif
    if (const char* env = std::getenv("SWITCHBOARD_PLUGIN_PATH"); env != nullptr) {
        std::string_view rest = env;
        while (!rest.empty()) {
            const auto end = rest.find(kSeparator);
            const std::string_view entry = rest.substr(0, end);
            if (!entry.empty()) candidates.emplace_back(std::string(entry));
            rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
        }
    }

    boost::dll::fs::error_code ec;
    const fs::path program = boost::dll::program_location(ec);
    if (!ec && !program.empty()) {
        const fs::path bin = program.parent_path();
        // The build tree and an installation share one layout: bin/switchboard beside <libdir>/switchboard/plugins.
        candidates.push_back(bin / ".." / SWITCHBOARD_RELATIVE_PLUGIN_DIR);
        candidates.push_back(bin / ".." / "lib" / "switchboard" / "plugins");
    }

    // Keep those that exist, each once: the same directory twice would refuse every plugin in it as a duplicate.
    std::vector<fs::path> directories;
    std::vector<fs::path> seen;
    for (const fs::path& candidate : candidates) {
        std::error_code exists_ec;
        if (!fs::is_directory(candidate, exists_ec)) continue;
        fs::path canonical = fs::weakly_canonical(candidate, exists_ec);
        if (exists_ec) canonical = candidate.lexically_normal();
        if (std::find(seen.begin(), seen.end(), canonical) != seen.end()) continue;
        seen.push_back(canonical);
        directories.push_back(std::move(canonical));
    }
    return directories;
}

}  // namespace switchboard::plugin
