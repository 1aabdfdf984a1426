#include "broadcast_strategy.hpp"

#include <algorithm>
#include <cstddef>
#include <string_view>
#include <unordered_set>
#include <utility>

namespace switchboard::strategies {
namespace {

struct AddressPtrHash {
    std::size_t operator()(const Address* address) const noexcept {
        return static_cast<std::size_t>(hash_address(*address));
    }
};

struct AddressPtrEqual {
    bool operator()(const Address* a, const Address* b) const noexcept { return *a == *b; }
};

constexpr std::string_view kTagPrefix = "tag:";

}  // namespace

Result<DeliveryPlan> BroadcastStrategy::plan(const Envelope& envelope, const Directory& directory) {
    const std::string_view scope = envelope.target;
    const bool everything = scope.empty() || scope == "*";
    const bool by_tag = !everything && scope.starts_with(kTagPrefix);
    const std::string_view tag = by_tag ? scope.substr(kTagPrefix.size()) : std::string_view{};

    auto in_scope = [&](const DirectoryChannel& channel) {
        if (everything) return true;
        if (by_tag) return std::find(channel.tags.begin(), channel.tags.end(), tag) != channel.tags.end();
        return channel.address.connection == scope;
    };

    std::vector<DirectoryChannel> channels = directory.channels();
    DeliveryPlan plan;
    plan.mode = DeliveryMode::best_effort;
    plan.batch_size = batch_size_;
    // Reserved up front, so the dedup set's pointers into the recipients stay valid.
    plan.recipients.reserve(channels.size());
    std::unordered_set<const Address*, AddressPtrHash, AddressPtrEqual> seen;
    seen.reserve(channels.size());
    std::size_t matched = 0;
    for (DirectoryChannel& channel : channels) {
        if (!in_scope(channel)) continue;
        ++matched;
        if (envelope.origin && *envelope.origin == channel.address) continue;
        if (seen.count(&channel.address) != 0) continue;
        plan.recipients.push_back(Recipient{std::move(channel.name), std::move(channel.address)});
        seen.insert(&plan.recipients.back().address);
    }

    if (matched == 0) {
        std::string what;
        if (channels.empty()) {
            what = "the directory has no channels at all: define some under channels: in the config";
        } else if (by_tag) {
            what = "no channel has the tag '" + std::string(tag) + "': add it to a channel's tags: in the config";
        } else {
            what = "it is neither '*', nor 'tag:NAME', nor a connection with channels in the config";
        }
        return fail("recipient_not_found", "broadcast scope '" + std::string(scope) + "' matches no channel: " + what);
    }
    return plan;
}

ConfigSchema BroadcastStrategy::schema() {
    return ConfigSchema{{
        {"batch_size", ValueType::integer, false, std::to_string(kDefaultBatchSize),
         "Channels the delivery engine sends to per batch (1 to " + std::to_string(kMaxBatchSize) + ")."},
    }};
}

std::vector<ConfigProblem> BroadcastStrategy::check_config(const PluginConfig& config) {
    const std::int64_t value = config.get_int("batch_size", kDefaultBatchSize);
    if (value < 1 || value > kMaxBatchSize) {
        return {ConfigProblem{"batch_size", "batch_size is " + std::to_string(value) + ", but must be between 1 and " +
                                                std::to_string(kMaxBatchSize)}};
    }
    return {};
}

std::uint32_t BroadcastStrategy::batch_size_from(const PluginConfig& config) {
    if (auto problems = check_config(config); !problems.empty()) {
        throw ErrorException(fail("bad_config", problems.front().message));
    }
    return static_cast<std::uint32_t>(config.get_int("batch_size", kDefaultBatchSize));
}

}  // namespace switchboard::strategies
