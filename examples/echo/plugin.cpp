// Exports the echo bot.
#include "echo_bot.hpp"

namespace {

class EchoPlugin final : public switchboard::examples::EchoBot {
public:
    EchoPlugin(const switchboard::PluginContext&, const switchboard::PluginConfig& config)
        : EchoBot(config.get_string("prefix")) {}
};

}  // namespace

SWITCHBOARD_PLUGIN(EchoPlugin, "echo", "1.0.0", "Repeats what it hears; the smallest complete bot",
                   (switchboard::ConfigSchema{{
                       {"prefix", switchboard::ValueType::string, false, "", "Text put in front of every answer."},
                   }}))
