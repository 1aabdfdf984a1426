// Exports the on-call strategy. Like every plugin, it includes only SDK headers (through oncall_strategy.hpp).
#include "oncall_strategy.hpp"

namespace {

class OnCallPlugin final : public switchboard::examples::OnCallStrategy {
public:
    OnCallPlugin(const switchboard::PluginContext&, const switchboard::PluginConfig&) {}
};

}  // namespace

SWITCHBOARD_PLUGIN(OnCallPlugin, switchboard::examples::OnCallStrategy::kName, "1.0.0",
                   "Round-robin to one reachable member of a group (an example strategy written with the SDK alone)",
                   switchboard::ConfigSchema{})
