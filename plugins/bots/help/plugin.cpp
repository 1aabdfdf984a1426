// Exports the help bot.
#include "help_bot.hpp"

namespace {

class HelpPlugin final : public switchboard::bots::HelpBot {
public:
    HelpPlugin(const switchboard::PluginContext&, const switchboard::PluginConfig& config)
        : HelpBot(config.get_string("command", "!help")) {}
};

}  // namespace

SWITCHBOARD_PLUGIN(HelpPlugin, "help", "1.0.0", "Lists every loaded bot's commands",
                   (switchboard::ConfigSchema{{
                       {"command", switchboard::ValueType::string, false, "!help", "The command that asks for help."},
                   }}))
