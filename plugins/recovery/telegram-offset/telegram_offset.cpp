#include "telegram_offset.hpp"

#include <nlohmann/json.hpp>

namespace switchboard::recovery {

std::optional<TelegramGap> parse_telegram_gap(const std::optional<std::string>& state) {
    if (!state || state->empty()) return std::nullopt;
    const auto parsed = nlohmann::json::parse(*state, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object() || !parsed.contains("reason") || !parsed["reason"].is_string()) {
        return TelegramGap{std::nullopt, std::nullopt, "the connector recorded a gap it could not describe: " + *state};
    }
    TelegramGap gap;
    gap.reason = parsed["reason"].get<std::string>();
    if (parsed.contains("from") && parsed["from"].is_number_integer()) gap.from = parsed["from"].get<std::int64_t>();
    if (parsed.contains("to") && parsed["to"].is_number_integer()) gap.to = parsed["to"].get<std::int64_t>();
    return gap;
}

TelegramOffset::TelegramOffset(const PluginContext& context, const PluginConfig&) : logger_(context.logger()) {}

TelegramOffset::TelegramOffset(Logger& logger) : logger_(logger) {}

void TelegramOffset::on_event(const ConnectionEvent& event, RecoveryContext& context) {
    if (event.type != ConnectionEvent::Type::connected) return;
    const auto gap = parse_telegram_gap(context.load_state("gap"));
    if (gap) {
        std::string extent;
        if (gap->from && gap->to) {
            extent = " (updates " + std::to_string(*gap->from) + " to " + std::to_string(*gap->to) + ")";
        }
        logger_.warn("telegram-offset: updates lost while the bot was away" + extent + ": " + gap->reason,
                     LogFields{context.connection(), {}, {}});
    }
    // Unconfirmed updates come again by themselves: nothing to fetch, only the outcome to report.
    for (const std::string& channel : context.channels()) {
        RecoveryReport report;
        report.channel = channel;
        if (gap) {
            report.gap = true;
            report.gap_reason = gap->reason;
        }
        context.finish(report);
    }
}

}  // namespace switchboard::recovery
