#include "host/logging.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <chrono>

namespace switchboard::host {
namespace {

spdlog::level::level_enum to_spdlog(LogLevel level) {
    switch (level) {
        case LogLevel::trace: return spdlog::level::trace;
        case LogLevel::debug: return spdlog::level::debug;
        case LogLevel::info: return spdlog::level::info;
        case LogLevel::warn: return spdlog::level::warn;
        case LogLevel::error: return spdlog::level::err;
    }
    return spdlog::level::info;
}

std::string_view level_name(LogLevel level) {
    switch (level) {
        case LogLevel::trace: return "trace";
        case LogLevel::debug: return "debug";
        case LogLevel::info: return "info";
        case LogLevel::warn: return "warn";
        case LogLevel::error: return "error";
    }
    return "info";
}

}  // namespace

std::optional<LogLevel> parse_log_level(const std::string& text) {
    for (LogLevel level : {LogLevel::trace, LogLevel::debug, LogLevel::info, LogLevel::warn, LogLevel::error}) {
        if (text == level_name(level)) return level;
    }
    return std::nullopt;
}

SpdLogger::SpdLogger(std::string component, LogFormat format, LogLevel level,
                     std::map<std::string, LogLevel> component_levels) {
    auto sink = std::make_shared<spdlog::logger>("switchboard", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    // JSON lines carry their own time and level; text lines get them from the pattern. Each SpdLogger filters by its
    // own level, so the sink passes everything.
    sink->set_pattern(format == LogFormat::json ? "%v" : "%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ %v");
    sink->set_level(spdlog::level::trace);
    sink->flush_on(spdlog::level::warn);
    shared_ = std::make_shared<const Shared>(Shared{std::move(sink), format, level, std::move(component_levels)});
    auto own = shared_->component_levels.find(component);
    level_ = own == shared_->component_levels.end() ? level : own->second;
    component_ = std::move(component);
}

SpdLogger::SpdLogger(std::string component, std::shared_ptr<const Shared> shared)
    : component_(std::move(component)), shared_(std::move(shared)) {
    auto own = shared_->component_levels.find(component_);
    level_ = own == shared_->component_levels.end() ? shared_->level : own->second;
}

std::unique_ptr<SpdLogger> SpdLogger::child(std::string component) const {
    return std::unique_ptr<SpdLogger>(new SpdLogger(std::move(component), shared_));
}

void SpdLogger::log(LogLevel level, std::string_view text, const LogFields& fields) noexcept {
    if (level < level_) return;
    const auto& sink = shared_->sink;
    try {
        if (shared_->format == LogFormat::json) {
            const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
            nlohmann::json line{{"time_ms", now}, {"level", level_name(level)}, {"component", component_},
                                {"msg", text}};
            if (!fields.connection.empty()) line["connection"] = fields.connection;
            if (!fields.channel.empty()) line["channel"] = fields.channel;
            if (!fields.message_id.empty()) line["message_id"] = fields.message_id;
            sink->log(to_spdlog(level), "{}", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
        } else {
            std::string line = "[" + component_ + "] " + std::string(text);
            if (!fields.connection.empty()) line += " connection=" + std::string(fields.connection);
            if (!fields.channel.empty()) line += " channel=" + std::string(fields.channel);
            if (!fields.message_id.empty()) line += " message_id=" + std::string(fields.message_id);
            sink->log(to_spdlog(level), "{}", line);
        }
    } catch (...) {
        // Logging must never take the process down.
    }
}

}  // namespace switchboard::host
