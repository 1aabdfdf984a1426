// Exports the announce bot.
#include "announce_bot.hpp"

namespace {

class AnnouncePlugin final : public switchboard::bots::AnnounceBot {
public:
    AnnouncePlugin(const switchboard::PluginContext& context, const switchboard::PluginConfig& config)
        : AnnounceBot(allowed(config), context.logger()) {}

private:
    static std::set<std::string> allowed(const switchboard::PluginConfig& config) {
        const auto list = config.get_list("allowed");
        return {list.begin(), list.end()};
    }
};

}  // namespace

SWITCHBOARD_PLUGIN(AnnouncePlugin, "announce", "1.0.0", "Sends an announcement to a group and logs the report",
                   (switchboard::ConfigSchema{{
                       {"allowed", switchboard::ValueType::string_list, false, "",
                        "Author ids that may announce; empty means everyone."},
                   }}))
