// Exports the Telegram connector.
#include "telegram_connector.hpp"

namespace {

class TelegramPlugin final : public switchboard::telegram::TelegramConnector {
public:
    TelegramPlugin(const switchboard::PluginContext& context, const switchboard::PluginConfig& config)
        : TelegramConnector(context, settings(config)) {}

    static std::vector<switchboard::ConfigProblem> check_config(const switchboard::PluginConfig& config) {
        return switchboard::telegram::check_settings(config);
    }

private:
    static switchboard::telegram::TelegramSettings settings(const switchboard::PluginConfig& config) {
        auto settings = switchboard::telegram::read_settings(config);
        if (!settings) throw switchboard::ErrorException(settings.error());
        return std::move(*settings);
    }
};

}  // namespace

SWITCHBOARD_PLUGIN(TelegramPlugin, "telegram", "1.0.0",
                   "Telegram Bot API: getUpdates long polling (confirmed only once handled), sendMessage split at 4096 "
                   "UTF-16 units, deleteMessage, Telegram's send limits",
                   (switchboard::telegram::settings_schema()))
