// The smallest complete bot plugin: answers `!hello` and counts how often it was asked.
#include <switchboard/bot.hpp>

#include <string>

class HelloBot final : public switchboard::Bot {
public:
    HelloBot(const switchboard::PluginContext&, const switchboard::PluginConfig& config)
        : greeting_(config.get_string("greeting")) {}

    std::vector<switchboard::Command> commands() const override {
        return {{"!hello", "", "greets you and says how often it was asked"}};
    }

    void on_message(const switchboard::Message& message, switchboard::BotContext& context) override {
        if (message.text != "!hello") return;
        const auto asked = context.state().get("asked");
        const int count = asked ? std::stoi(*asked) + 1 : 1;
        context.state().put("asked", std::to_string(count));  // durable together with the message
        context.reply(greeting_ + ", " + message.author.display_name + " (" + std::to_string(count) + ")");
    }

private:
    std::string greeting_;
};

SWITCHBOARD_PLUGIN(HelloBot, "hello", "1.0.0", "Answers !hello",
                   (switchboard::ConfigSchema{{
                       {"greeting", switchboard::ValueType::string, false, "hello", "What it says first."},
                   }}))
