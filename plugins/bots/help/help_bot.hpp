#pragma once
// The help bot: `!help` lists every loaded bot and its commands.

#include <switchboard/bot.hpp>

#include <string>

namespace switchboard::bots {

class HelpBot : public Bot {
public:
    /// Answers @p command (e.g. "!help").
    explicit HelpBot(std::string command) : command_(std::move(command)) {}

    std::vector<Command> commands() const override;
    void on_message(const Message& message, BotContext& context) override;

    /// The answer: one line per bot, then one indented line per command.
    [[nodiscard]] static std::string describe(const std::vector<BotInfo>& bots);

private:
    std::string command_;
};

}  // namespace switchboard::bots
