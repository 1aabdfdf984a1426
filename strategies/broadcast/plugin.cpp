// Exports the broadcast routing strategy.
#include "broadcast_strategy.hpp"

namespace {

using switchboard::strategies::BroadcastStrategy;

class BroadcastPlugin final : public BroadcastStrategy {
public:
    BroadcastPlugin(const switchboard::PluginContext&, const switchboard::PluginConfig& config)
        : BroadcastStrategy(batch_size_from(config)) {}
};

}  // namespace

SWITCHBOARD_PLUGIN(BroadcastPlugin, BroadcastStrategy::kName, "1.0.0",
                   "Broadcasts: every channel, every channel of a connection, or every channel with a tag",
                   BroadcastStrategy::schema())
