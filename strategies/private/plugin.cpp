// Exports the private routing strategy.
#include "private_strategy.hpp"

namespace {

class PrivatePlugin final : public switchboard::strategies::PrivateStrategy {
public:
    PrivatePlugin(const switchboard::PluginContext&, const switchboard::PluginConfig&) {}
};

}  // namespace

SWITCHBOARD_PLUGIN(PrivatePlugin, switchboard::strategies::PrivateStrategy::kName, "1.0.0",
                   "Private messages: exactly one person, by user name or connection/@user",
                   switchboard::ConfigSchema{})
