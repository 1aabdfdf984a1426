// Exports the console connector: standard input and output of the host process.
#include "console_connector.hpp"

#include <unistd.h>

#include <cstdlib>
#include <iostream>

namespace {

class StdioConsole final : public switchboard::console::ConsoleConnector {
public:
    StdioConsole(const switchboard::PluginContext&, const switchboard::PluginConfig& config)
        : ConsoleConnector(settings(config), STDIN_FILENO, std::cout) {}

private:
    static switchboard::console::ConsoleSettings settings(const switchboard::PluginConfig& config) {
        switchboard::console::ConsoleSettings s;
        s.channel = config.get_string("channel", s.channel);
        const char* login = std::getenv("USER");
        s.user = config.get_string("user", login != nullptr && *login != '\0' ? login : s.user);
        if (s.user.empty()) s.user = login != nullptr && *login != '\0' ? login : "you";
        s.bot_name = config.get_string("bot_name", s.bot_name);
        s.banner = config.get_bool("banner", false) && ::isatty(STDIN_FILENO) == 1;
        return s;
    }
};

}  // namespace

SWITCHBOARD_PLUGIN(StdioConsole, "console", "1.0.0",
                   "Standard input and output as one channel; /as USER and /dm USER simulate other people",
                   (switchboard::ConfigSchema{{
                       {"channel", switchboard::ValueType::string, false, "console",
                        "The channel id the console's lines arrive on (map a logical channel to it)."},
                       {"user", switchboard::ValueType::string, false, "",
                        "Who types, until /as or /dm says otherwise; empty means $USER."},
                       {"bot_name", switchboard::ValueType::string, false, "switchboard",
                        "The name shown in front of the bots' answers."},
                       {"banner", switchboard::ValueType::boolean, false, "true",
                        "Print the console commands at start when standard input is a terminal."},
                   }}))
