#include "echo_bot.hpp"

namespace switchboard::examples {

std::vector<Command> EchoBot::commands() const {
    return {{"!echo", "TEXT", "repeats TEXT (plain lines that are not commands are repeated too)"}};
}

void EchoBot::on_message(const Message& message, BotContext& context) {
    static constexpr std::string_view kCommand = "!echo";
    const std::string& text = message.text;
    if (text.rfind(kCommand, 0) == 0 && (text.size() == kCommand.size() || text[kCommand.size()] == ' ')) {
        const auto start = text.find_first_not_of(' ', kCommand.size());
        if (start != std::string::npos) context.reply(prefix_ + text.substr(start));
        return;
    }
    if (text.empty() || text.front() == '!') return;  // another bot's command
    context.reply(prefix_ + text);
}

}  // namespace switchboard::examples
