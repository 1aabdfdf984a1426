#include "help_bot.hpp"

namespace switchboard::bots {

std::vector<Command> HelpBot::commands() const { return {{command_, "", "lists every bot and its commands"}}; }

void HelpBot::on_message(const Message& message, BotContext& context) {
    if (message.text != command_) return;
    context.reply(describe(context.bots()));
}

std::string HelpBot::describe(const std::vector<BotInfo>& bots) {
    std::string text = std::to_string(bots.size()) + (bots.size() == 1 ? " bot:" : " bots:");
    for (const BotInfo& bot : bots) {
        text += "\n" + bot.name + (bot.commands.empty() ? " (no commands)" : "");
        for (const Command& command : bot.commands) {
            text += "\n  " + command.name + (command.usage.empty() ? "" : " " + command.usage) + " - " + command.help;
        }
    }
    return text;
}

}  // namespace switchboard::bots
