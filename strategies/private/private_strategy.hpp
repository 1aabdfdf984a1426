#pragma once
// The `private` routing strategy (DESIGN §3): one message to exactly one person.

#include <switchboard/routing.hpp>

namespace switchboard::strategies {

/// Plans a private message: the envelope's target is a user's logical name from the config, or a literal person
/// address `connection/@user`. The plan has that one recipient, best effort, batch size 1. An unknown user fails at
/// once with `recipient_not_found`. Reachability is not checked here: the delivery engine reports an unreachable
/// person as `unreachable`, an unknown connection as `unknown_connection`.
class PrivateStrategy : public Strategy {
public:
    /// The plugin name used in the config (`strategy: private`).
    static constexpr const char* kName = "private";

    PrivateStrategy() = default;

    [[nodiscard]] Result<DeliveryPlan> plan(const Envelope& envelope, const Directory& directory) override;
};

}  // namespace switchboard::strategies
