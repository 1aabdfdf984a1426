#pragma once
// The host's Logger: spdlog underneath, one event per line, as text for a terminal or as JSON.

#include <switchboard/plugin.hpp>

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
    /// A logger for @p component ("host", a connection or bot name) writing in @p format at @p level and above.
    SpdLogger(std::string component, LogFormat format, LogLevel level);
    /// A logger for another component sharing this one's sink, format and level.
    [[nodiscard]] std::unique_ptr<SpdLogger> child(std::string component) const;
    void log(LogLevel level, std::string_view text, const LogFields& fields = {}) noexcept override;
    void set_level(LogLevel level) noexcept;

private:
    SpdLogger(std::string component, LogFormat format, std::shared_ptr<spdlog::logger> sink);

    std::string component_;
    LogFormat format_;
    std::shared_ptr<spdlog::logger> sink_;
};

}  // namespace switchboard::host
