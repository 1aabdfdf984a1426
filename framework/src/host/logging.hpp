#pragma once
// The host's Logger: spdlog underneath, one event per line, as text for a terminal or as JSON.

#include <switchboard/plugin.hpp>

#include <map>
#include <memory>
#include <optional>
#include <string>

namespace spdlog {
class logger;
}  // namespace spdlog

namespace switchboard::host {

enum class LogFormat { text, json };

/// Parses "trace", "debug", "info", "warn" or "error".
[[nodiscard]] std::optional<LogLevel> parse_log_level(const std::string& text);

/// Writes events to standard error (standard output belongs to the console connector).
class SpdLogger final : public Logger {
public:
    /// A logger for @p component ("host", a connection or bot name) writing in @p format at @p level and above,
    /// except for the components named in @p component_levels, which log at their own level.
    SpdLogger(std::string component, LogFormat format, LogLevel level,
              std::map<std::string, LogLevel> component_levels = {});
    /// A logger for another component sharing this one's sink and format, at that component's level.
    [[nodiscard]] std::unique_ptr<SpdLogger> child(std::string component) const;
    void log(LogLevel level, std::string_view text, const LogFields& fields = {}) noexcept override;
    /// This component's level.
    [[nodiscard]] LogLevel level() const noexcept { return level_; }

private:
    struct Shared {
        std::shared_ptr<spdlog::logger> sink;
        LogFormat format;
        LogLevel level;  // for components without a level of their own
        std::map<std::string, LogLevel> component_levels;
    };
    SpdLogger(std::string component, std::shared_ptr<const Shared> shared);

    std::string component_;
    std::shared_ptr<const Shared> shared_;
    LogLevel level_;
};

}  // namespace switchboard::host
