#include "announce_bot.hpp"

namespace switchboard::bots {

std::vector<Command> AnnounceBot::commands() const {
    return {{"!announce", "GROUP TEXT", "sends TEXT to every member of GROUP and logs the delivery report"}};
}

void AnnounceBot::on_message(const Message& message, BotContext& context) {
    static constexpr std::string_view kCommand = "!announce ";
    if (message.text.rfind(kCommand, 0) != 0) return;
    if (!allowed_.empty() && allowed_.count(message.author.id) == 0) {
        context.reply(message.author.display_name + " may not announce");
        return;
    }
    const std::string rest = message.text.substr(kCommand.size());
    const auto space = rest.find(' ');
    if (space == std::string::npos || space == 0 || space + 1 == rest.size()) {
        context.reply("usage: !announce GROUP TEXT");
        return;
    }
    Envelope envelope;
    envelope.kind = MessageKind::group;
    envelope.target = rest.substr(0, space);
    envelope.text = "[" + message.author.display_name + "] " + rest.substr(space + 1);
    envelope.origin = reply_address(message);
    Logger& logger = logger_;
    const std::string group = envelope.target;
    context.route(std::move(envelope), [&logger, group](DeliveryReport report) {
        const std::string line = describe(group, report);
        if (report.status == DeliveryStatus::delivered) {
            logger.info(line);
        } else {
            logger.warn(line);
        }
    });
}

std::string AnnounceBot::describe(const std::string& group, const DeliveryReport& report) {
    std::size_t delivered = 0;
    std::string missed;
    for (const RecipientOutcome& outcome : report.recipients) {
        if (outcome.delivered) {
            ++delivered;
        } else {
            missed += (missed.empty() ? "" : ", ") + outcome.name + " (" + outcome.error_code + ")";
        }
    }
    std::string line = "announcement to '" + group + "': " + std::string(to_string(report.status));
    if (!report.error_code.empty()) line += " (" + report.error_code + ")";
    line += ", " + std::to_string(delivered) + " of " + std::to_string(report.recipients.size()) + " delivered";
    if (!missed.empty()) line += "; missed: " + missed;
    if (!report.detail.empty()) line += "; " + report.detail;
    return line;
}

}  // namespace switchboard::bots
