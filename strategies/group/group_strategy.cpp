#include "group_strategy.hpp"

#include <algorithm>
#include <iterator>
#include <utility>

namespace switchboard::strategies {
namespace {

bool is_origin(const Envelope& envelope, const Address& address) {
    return envelope.origin && *envelope.origin == address;
}

}  // namespace

Result<DeliveryPlan> GroupStrategy::plan(const Envelope& envelope, const Directory& directory) {
    DeliveryPlan plan;
    plan.batch_size = batch_size_;

    const std::shared_ptr<const DirectoryGroup> group = directory.group(envelope.target);
    if (!group) {
        if (auto channel = directory.channel(envelope.target)) {
            if (!is_origin(envelope, channel->address)) {
                plan.recipients.push_back(Recipient{std::move(channel->name), std::move(channel->address)});
            }
            return plan;
        }
        return fail("group_dissolved", "group '" + envelope.target +
                                           "' does not exist (any more), and no channel has that name: check the "
                                           "target, and the groups: and channels: sections of the config (a reload "
                                           "may have removed it)");
    }

    plan.mode = group->delivery;
    plan.on_failure = group->on_failure;
    // The directory lists each address once.
    const std::vector<Recipient>& members = group->members;
    plan.recipients.reserve(members.size());
    std::copy_if(members.begin(), members.end(), std::back_inserter(plan.recipients),
                 [&](const Recipient& member) { return !is_origin(envelope, member.address); });
    return plan;
}

ConfigSchema GroupStrategy::schema() {
    return ConfigSchema{{
        {"batch_size", ValueType::integer, false, std::to_string(kDefaultBatchSize),
         "Recipients the delivery engine sends per batch (1 to " + std::to_string(kMaxBatchSize) + ")."},
    }};
}

std::vector<ConfigProblem> GroupStrategy::check_config(const PluginConfig& config) {
    const std::int64_t value = config.get_int("batch_size", kDefaultBatchSize);
    if (value < 1 || value > kMaxBatchSize) {
        return {ConfigProblem{"batch_size", "batch_size is " + std::to_string(value) + ", but must be between 1 and " +
                                                std::to_string(kMaxBatchSize)}};
    }
    return {};
}

std::uint32_t GroupStrategy::batch_size_from(const PluginConfig& config) {
    if (auto problems = check_config(config); !problems.empty()) {
        throw ErrorException(fail("bad_config", problems.front().message));
    }
    return static_cast<std::uint32_t>(config.get_int("batch_size", kDefaultBatchSize));
}

}  // namespace switchboard::strategies
