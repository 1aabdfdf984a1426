#include "oncall_strategy.hpp"

#include <string>
#include <utility>
#include <vector>

namespace switchboard::examples {
namespace {

std::string names(const std::vector<const Recipient*>& tried) {
    constexpr std::size_t kShown = 5;
    std::string text;
    for (std::size_t i = 0; i < tried.size() && i < kShown; ++i) {
        if (i != 0) text += ", ";
        text += tried[i]->name;
    }
    if (tried.size() > kShown) text += " and " + std::to_string(tried.size() - kShown) + " more";
    return text;
}

}  // namespace

// After the member picked last time, found by address; if it left the group, the member that took its position
// goes next.
std::size_t OnCallStrategy::next_start(const std::vector<Recipient>& members, const Turn* turn) {
    if (turn == nullptr) return 0;
    if (turn->index < members.size() && members[turn->index].address == turn->address) {
        return (turn->index + 1) % members.size();
    }
    for (std::size_t i = 0; i < members.size(); ++i) {
        if (members[i].address == turn->address) return (i + 1) % members.size();
    }
    return turn->index % members.size();
}

Result<DeliveryPlan> OnCallStrategy::plan(const Envelope& envelope, const Directory& directory) {
    const std::shared_ptr<const DirectoryGroup> group = directory.group(envelope.target);
    if (!group) {
        return fail("group_dissolved", "on-call group '" + envelope.target +
                                           "' does not exist (any more): check the route's target and the groups: "
                                           "section of the config");
    }
    const std::vector<Recipient>& members = group->members;
    if (members.empty()) {
        return fail("recipient_not_found",
                    "on-call group '" + envelope.target + "' has no members, so nobody is on call: add members to it");
    }

    std::vector<const Recipient*> tried;
    std::lock_guard lock(mutex_);
    const auto turn = turns_.find(envelope.target);
    const std::size_t start = next_start(members, turn == turns_.end() ? nullptr : &turn->second);
    for (std::size_t step = 0; step < members.size(); ++step) {
        const std::size_t index = (start + step) % members.size();
        const Recipient& member = members[index];
        if (envelope.origin && *envelope.origin == member.address) continue;
        if (!directory.reachable(member.address)) {
            tried.push_back(&member);
            continue;
        }
        turns_.insert_or_assign(envelope.target, Turn{index, member.address});
        DeliveryPlan plan;
        plan.recipients.push_back(member);
        plan.mode = DeliveryMode::best_effort;
        plan.batch_size = 1;
        return plan;
    }
    if (tried.empty()) {
        return fail("recipient_not_found",
                    "on-call group '" + envelope.target + "' has nobody to send to but the message's own origin");
    }
    return fail("recipient_not_found", "nobody in on-call group '" + envelope.target + "' is reachable now (tried " +
                                           names(tried) + "): check their connections, or add a reachable member");
}

}  // namespace switchboard::examples
