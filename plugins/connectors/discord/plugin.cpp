// Exports the Discord connector.
#include "discord_connector.hpp"

namespace {

class DiscordPlugin final : public switchboard::discord::DiscordConnector {
public:
    DiscordPlugin(const switchboard::PluginContext& context, const switchboard::PluginConfig& config)
        : DiscordConnector(context, settings(config)) {}

    static std::vector<switchboard::ConfigProblem> check_config(const switchboard::PluginConfig& config) {
        return switchboard::discord::check_settings(config);
    }

private:
    static switchboard::discord::DiscordSettings settings(const switchboard::PluginConfig& config) {
        auto settings = switchboard::discord::read_settings(config);
        if (!settings) throw switchboard::ErrorException(settings.error());
        return std::move(*settings);
    }
};

}  // namespace

SWITCHBOARD_PLUGIN(DiscordPlugin, "discord", "1.0.0",
                   "Discord: gateway v10 (resume, heartbeats, backoff) for messages, REST for sends, history, deletes",
                   (switchboard::discord::settings_schema()))
