#include "private_strategy.hpp"

#include <utility>

namespace switchboard::strategies {
namespace {

DeliveryPlan single(std::string name, Address&& address) {
    DeliveryPlan plan;
    plan.recipients.reserve(1);  // then emplace_back constructs in place, without the vector's growth path
    plan.recipients.emplace_back(std::move(name), std::move(address));
    plan.mode = DeliveryMode::best_effort;
    plan.batch_size = 1;
    return plan;
}

}  // namespace

Result<DeliveryPlan> PrivateStrategy::plan(const Envelope& envelope, const Directory& directory) {
    const std::string& target = envelope.target;
    if (target.empty()) {
        return fail("recipient_not_found",
                    "a private message needs a recipient, but the target is empty: name a user from the "
                    "config's users: section, or write an address connection/@user");
    }
    if (auto address = directory.user(target)) return single(target, std::move(*address));

    // Names from the config never contain '/', so a target with one is meant as a literal address.
    if (target.find('/') != std::string::npos) {
        auto address = Address::parse(target);
        if (!address) {
            return fail("recipient_not_found", "private target '" + target +
                                                   "' is neither a known user nor an address (" +
                                                   address.error().message + ")");
        }
        if (!address->is_user) {
            return fail("recipient_not_found", "private target '" + target +
                                                   "' is a channel address; a private message goes to a person: "
                                                   "write connection/@user, or send to the channel as a group message");
        }
        return single(address->to_string(), std::move(*address));
    }
    return fail("recipient_not_found", "no user named '" + target +
                                           "' in the directory: define it under users: in the config "
                                           "(name: { connection: CONNECTION, id: ID }), or address the person "
                                           "directly as connection/@user");
}

}  // namespace switchboard::strategies
