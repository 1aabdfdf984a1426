#pragma once
// The `oncall` routing strategy: a fourth strategy written by a user against the SDK alone. It sends each message
// to ONE member of a group, taking turns, and skips whoever cannot be reached right now.

#include <switchboard/routing.hpp>

#include <cstddef>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace switchboard::examples {

/// Round-robin to one on-call member. The envelope's target names a group; each plan picks the member after the one
/// picked last time for that group, skipping members that are unreachable (Directory::reachable) or are the
/// envelope's origin, wrapping around at the end.
///
/// - Unknown group: `group_dissolved`.
/// - Group without members, or no member reachable now: `recipient_not_found`, naming who was tried.
/// - Otherwise: a plan with exactly one recipient, best effort, batch size 1 (reachability was just checked; the
///   engine still reports `unreachable` if the member drops in between).
///
/// The rotation follows the member, not the index: when the group's membership changes, the turn passes to the
/// member after the one picked last, wherever it now stands. plan() may be called from several threads: the
/// rotation is kept under a mutex, held only for one pass over the group (Directory::reachable does not block).
class OnCallStrategy : public Strategy {
public:
    /// The plugin name used in the config (`strategy: oncall`).
    static constexpr const char* kName = "oncall";

    OnCallStrategy() = default;

    [[nodiscard]] Result<DeliveryPlan> plan(const Envelope& envelope, const Directory& directory) override;

private:
    // Where a group's rotation stands: who was picked last, and at which position of the member list.
    struct Turn {
        std::size_t index = 0;
        Address address;
    };

    // The position the rotation continues from, given the last @p turn (null: none yet).
    static std::size_t next_start(const std::vector<Recipient>& members, const Turn* turn);

    std::mutex mutex_;
    std::unordered_map<std::string, Turn> turns_;  // by group name
};

}  // namespace switchboard::examples
