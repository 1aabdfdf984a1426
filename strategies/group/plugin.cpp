// Exports the group routing strategy.
#include "group_strategy.hpp"

namespace {

using switchboard::strategies::GroupStrategy;

class GroupPlugin final : public GroupStrategy {
public:
    GroupPlugin(const switchboard::PluginContext&, const switchboard::PluginConfig& config)
        : GroupStrategy(batch_size_from(config)) {}
};

}  // namespace

SWITCHBOARD_PLUGIN(GroupPlugin, GroupStrategy::kName, "1.0.0",
                   "Group messages: every member of a group once, minus the origin, atomic or best effort",
                   GroupStrategy::schema())
