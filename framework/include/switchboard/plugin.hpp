#pragma once
/// @file plugin.hpp
/// @brief What every plugin library exports: one descriptor, made by `SWITCHBOARD_PLUGIN(...)`.
///
/// A plugin is a shared library that exports exactly one symbol, `switchboard_plugin`, through Boost.DLL's
/// `BOOST_DLL_ALIAS`. It points to a function returning the library's `PluginDescriptor`. The host reads the
/// descriptor's first two fields (ABI version, build stamp) before anything else and refuses a library whose values
/// differ from its own. A minimal bot plugin:
///
/// @code
/// #include <switchboard/bot.hpp>
/// class Hello final : public switchboard::Bot {
/// public:
///     Hello(const switchboard::PluginContext&, const switchboard::PluginConfig&) {}
///     std::vector<switchboard::Command> commands() const override { return {{"!hello", "", "says hello"}}; }
///     void on_message(const switchboard::Message& m, switchboard::BotContext& ctx) override {
///         if (m.text == "!hello") ctx.reply("hello, " + m.author.display_name);
///     }
/// };
/// SWITCHBOARD_PLUGIN(Hello, "hello", "1.0.0", "Answers !hello", switchboard::ConfigSchema{})
/// @endcode

#include <switchboard/config.hpp>
#include <switchboard/result.hpp>
#include <switchboard/version.hpp>

#include <boost/dll/alias.hpp>

#include <cstdint>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace switchboard {

/// @brief The five kinds of plugin. Where the config uses a plugin decides which kind it must be.
enum class PluginKind : std::uint32_t {
    connector = 1,  ///< Speaks one platform's protocol.
    recovery = 2,   ///< Finds what was missed after a disconnect.
    strategy = 3,   ///< Turns an outgoing envelope into a delivery plan.
    store = 4,      ///< Persistence.
    bot = 5,        ///< Bot logic: commands and handlers.
};

/// @brief "connector", "recovery", "strategy", "store" or "bot".
[[nodiscard]] inline std::string_view to_string(PluginKind kind) noexcept {
    switch (kind) {
        case PluginKind::connector: return "connector";
        case PluginKind::recovery: return "recovery";
        case PluginKind::strategy: return "strategy";
        case PluginKind::store: return "store";
        case PluginKind::bot: return "bot";
    }
    return "unknown";
}

/// @brief Severity of a log line.
enum class LogLevel { trace, debug, info, warn, error };

/// @brief Where a log line is about; empty fields are left out of the line.
struct LogFields {
    /// @brief The connection name.
    std::string_view connection;
    /// @brief The platform channel id.
    std::string_view channel;
    /// @brief The platform message id.
    std::string_view message_id;
};

/// @brief Structured logging, implemented by the host (one event per line, text or JSON).
class Logger {
public:
    virtual ~Logger() = default;
    /// @brief Writes one event. Never throws.
    virtual void log(LogLevel level, std::string_view text, const LogFields& fields = {}) noexcept = 0;
    /// @brief log(LogLevel::debug, ...).
    void debug(std::string_view text, const LogFields& fields = {}) noexcept { log(LogLevel::debug, text, fields); }
    /// @brief log(LogLevel::info, ...).
    void info(std::string_view text, const LogFields& fields = {}) noexcept { log(LogLevel::info, text, fields); }
    /// @brief log(LogLevel::warn, ...).
    void warn(std::string_view text, const LogFields& fields = {}) noexcept { log(LogLevel::warn, text, fields); }
    /// @brief log(LogLevel::error, ...).
    void error(std::string_view text, const LogFields& fields = {}) noexcept { log(LogLevel::error, text, fields); }
};

/// @brief What the host gives a plugin's constructor besides its settings.
class PluginContext {
public:
    /// @brief Made by the host (or by a test).
    PluginContext(std::string instance_name, Logger& logger, boost::asio::io_context& io)
        : instance_name_(std::move(instance_name)), logger_(&logger), io_(&io) {}

    /// @brief The configured name of this instance (the connection name, the bot's name, "store", ...).
    [[nodiscard]] const std::string& instance_name() const noexcept { return instance_name_; }
    /// @brief Where to log.
    [[nodiscard]] Logger& logger() const noexcept { return *logger_; }
    /// @brief The host's I/O context. Plugins that do network I/O include Boost.Asio themselves and run on it;
    /// it is run by a small thread pool, so use a strand per connection.
    [[nodiscard]] boost::asio::io_context& io() const noexcept { return *io_; }

private:
    std::string instance_name_;
    Logger* logger_;
    boost::asio::io_context* io_;
};

/// @brief Base of every object a plugin creates. The host holds it with a deleter that keeps the library loaded.
class PluginObject {
public:
    virtual ~PluginObject() = default;
    PluginObject() = default;
    PluginObject(const PluginObject&) = delete;
    PluginObject& operator=(const PluginObject&) = delete;
};

/// @brief A semantic problem a plugin finds in its own settings, beyond what the schema checks.
struct ConfigProblem {
    /// @brief The key at fault (the error is reported at its line and column), or empty for the whole block.
    std::string key;
    /// @brief What is wrong and how to fix it.
    std::string message;
};

/// @brief Creates the plugin's object. Never throws: on failure returns null and fills @p error.
using PluginFactory = PluginObject* (*)(const PluginContext& context, const PluginConfig& config,
                                        Error& error) noexcept;

/// @brief Returns the plugin's configuration schema (static storage).
using PluginSchemaFunction = const ConfigSchema* (*)() noexcept;

/// @brief Checks settings that already passed the schema; returns the problems found. Never throws.
using PluginCheckFunction = std::vector<ConfigProblem> (*)(const PluginConfig& config) noexcept;

/// @brief What a plugin library exports.
///
/// The first two fields are plain data and keep their place in every ABI version, so the host can read them
/// from any library and refuse it before touching the rest.
struct PluginDescriptor {
    /// @brief `SWITCHBOARD_ABI_VERSION` of the SDK the plugin was built with.
    std::uint32_t abi_version;
    /// @brief `SWITCHBOARD_BUILD_STAMP` of the plugin's build.
    const char* build_stamp;
    /// @brief Which kind of plugin this is.
    PluginKind kind;
    /// @brief Unique plugin name, used in the config (`plugin: sqlite`).
    const char* name;
    /// @brief The plugin's own version.
    const char* version;
    /// @brief One line for `switchboard plugins`.
    const char* description;
    /// @brief The configuration schema.
    PluginSchemaFunction schema;
    /// @brief Optional semantic check of validated settings (may be null).
    PluginCheckFunction check;
    /// @brief Creates an instance.
    PluginFactory create;
};

/// @brief Signature of the exported `switchboard_plugin` function.
using PluginDescribeFunction = const PluginDescriptor* () noexcept;

/// @brief Name of the symbol every plugin library exports.
inline constexpr const char* kPluginSymbol = "switchboard_plugin";

namespace detail {

template <class Plugin>
PluginObject* create_plugin(const PluginContext& context, const PluginConfig& config, Error& error) noexcept {
    try {
        return static_cast<typename Plugin::Interface*>(new Plugin(context, config));
    } catch (const ErrorException& e) {
        error = e.error();
    } catch (const std::exception& e) {
        error = Error{"plugin_create_failed", e.what()};
    } catch (...) {
        error = Error{"plugin_create_failed", "unknown exception"};
    }
    return nullptr;
}

template <class Plugin>
std::vector<ConfigProblem> check_plugin(const PluginConfig& config) noexcept {
    try {
        return Plugin::check_config(config);
    } catch (const std::exception& e) {
        return {ConfigProblem{"", std::string("check failed: ") + e.what()}};
    } catch (...) {
        return {ConfigProblem{"", "check failed"}};
    }
}

template <class Plugin>
constexpr PluginCheckFunction check_function() noexcept {
    if constexpr (requires(const PluginConfig& c) {
                      { Plugin::check_config(c) } -> std::same_as<std::vector<ConfigProblem>>;
                  }) {
        return &check_plugin<Plugin>;
    } else {
        return nullptr;
    }
}

}  // namespace detail

}  // namespace switchboard

/// @brief Exports @p CLASS as this library's plugin.
///
/// @p CLASS derives from one SDK interface (`Connector`, `RecoveryPolicy`, `Strategy`, `Store` or `Bot`), which
/// fixes its kind, and has a constructor `CLASS(const PluginContext&, const PluginConfig&)` that may throw (the
/// exception is caught at the boundary and reported). Optionally it has
/// `static std::vector<ConfigProblem> check_config(const PluginConfig&)` for checks beyond the schema.
/// @p SCHEMA is a `ConfigSchema` expression. Use the macro once per library, at namespace scope.
#define SWITCHBOARD_PLUGIN(CLASS, NAME, VERSION, DESCRIPTION, SCHEMA)                                         \
    namespace switchboard_plugin_export {                                                                     \
    static const ::switchboard::ConfigSchema* schema() noexcept {                                             \
        static const ::switchboard::ConfigSchema value = SCHEMA;                                              \
        return &value;                                                                                        \
    }                                                                                                         \
    static const ::switchboard::PluginDescriptor descriptor{                                                  \
        ::switchboard::kAbiVersion,                                                                           \
        SWITCHBOARD_BUILD_STAMP,                                                                              \
        CLASS::Interface::kKind,                                                                              \
        NAME,                                                                                                 \
        VERSION,                                                                                              \
        DESCRIPTION,                                                                                          \
        &schema,                                                                                              \
        ::switchboard::detail::check_function<CLASS>(),                                                       \
        &::switchboard::detail::create_plugin<CLASS>,                                                         \
    };                                                                                                        \
    static const ::switchboard::PluginDescriptor* describe() noexcept { return &descriptor; }                 \
    }                                                                                                         \
    BOOST_DLL_ALIAS(switchboard_plugin_export::describe, switchboard_plugin)
