#pragma once
// The echo bot: answers every plain line with the same text, and `!echo TEXT` with TEXT.

#include <switchboard/bot.hpp>

#include <string>

namespace switchboard::examples {

class EchoBot : public Bot {
public:
    /// @p prefix goes in front of every answer.
    explicit EchoBot(std::string prefix) : prefix_(std::move(prefix)) {}

    std::vector<Command> commands() const override;
    void on_message(const Message& message, BotContext& context) override;

private:
    std::string prefix_;
};

}  // namespace switchboard::examples
