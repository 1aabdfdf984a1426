// Exports the irc-replay recovery policy.
#include "irc_replay.hpp"

#include <algorithm>

namespace {

class IrcReplayPlugin final : public switchboard::irc_replay::IrcReplayPolicy {
public:
    IrcReplayPlugin(const switchboard::PluginContext&, const switchboard::PluginConfig& config)
        : IrcReplayPolicy(settings(config)) {}

private:
    static switchboard::irc_replay::ReplaySettings settings(const switchboard::PluginConfig& config) {
        switchboard::irc_replay::ReplaySettings s;
        s.page_size = static_cast<std::uint32_t>(std::clamp<std::int64_t>(config.get_int("page_size", 500), 1, 100000));
        s.max_pages = static_cast<std::uint32_t>(std::clamp<std::int64_t>(config.get_int("max_pages", 20), 1, 100000));
        return s;
    }
};

}  // namespace

SWITCHBOARD_PLUGIN(IrcReplayPlugin, "irc-replay", "1.0.0",
                   "IRC: after a rejoin, feeds the server's replayed history (chanhistory, CHATHISTORY); reports "
                   "the gap where the server keeps none",
                   (switchboard::ConfigSchema{{
                       {"page_size", switchboard::ValueType::integer, false, "500",
                        "Messages asked for per history request (the server may cap it)."},
                       {"max_pages", switchboard::ValueType::integer, false, "20",
                        "CHATHISTORY AFTER pages per channel and recovery at most; beyond, a gap is reported."},
                   }}))
