#pragma once
// The `group` routing strategy (DESIGN §3): one message to every member of a named group.

#include <switchboard/routing.hpp>

#include <cstdint>
#include <vector>

namespace switchboard::strategies {

/// Plans a group message. The envelope's target names a group of the directory; the plan holds its members in
/// config order, each address once (the directory's snapshot lists them so), without the envelope's origin, with
/// the group's `delivery` mode and `on_failure`. A target that is no group but a channel gets a one-recipient plan
/// to that channel (routes `to: { channel: NAME }` arrive here too). Neither → `group_dissolved`.
///
/// A group with no member left (or only the origin) is planned as zero recipients, not as an error: the group
/// exists, so the engine reports the send as delivered to nobody, and the route keeps working when members come
/// back. The same holds for a channel target that is the origin itself.
///
/// plan() copies the group's immutable snapshot in one pass: O(members), one allocation for the recipients, no lock.
class GroupStrategy : public Strategy {
public:
    /// The plugin name used in the config (`strategy: group`).
    static constexpr const char* kName = "group";
    /// Recipients per batch when the config does not say.
    static constexpr std::int64_t kDefaultBatchSize = 100;
    /// Largest accepted `batch_size`.
    static constexpr std::int64_t kMaxBatchSize = 100'000;

    /// @p batch_size goes into every plan (1 ... kMaxBatchSize).
    explicit GroupStrategy(std::uint32_t batch_size = kDefaultBatchSize) : batch_size_(batch_size) {}

    [[nodiscard]] Result<DeliveryPlan> plan(const Envelope& envelope, const Directory& directory) override;

    [[nodiscard]] std::uint32_t batch_size() const noexcept { return batch_size_; }

    /// The config schema: `batch_size`.
    [[nodiscard]] static ConfigSchema schema();
    /// Range check of `batch_size` beyond its type.
    [[nodiscard]] static std::vector<ConfigProblem> check_config(const PluginConfig& config);
    /// `batch_size` from validated settings; throws ErrorException if it is out of range.
    [[nodiscard]] static std::uint32_t batch_size_from(const PluginConfig& config);

private:
    std::uint32_t batch_size_;
};

}  // namespace switchboard::strategies
