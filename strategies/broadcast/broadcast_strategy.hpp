#pragma once
// The `broadcast` routing strategy (DESIGN §3): one message to every channel in a scope.

#include <switchboard/routing.hpp>

#include <cstdint>
#include <vector>

namespace switchboard::strategies {

/// Plans a broadcast. The envelope's target is a scope:
/// - empty or `*`: every channel of the directory;
/// - `tag:NAME`: the channels tagged NAME in the config;
/// - anything else: a connection name, meaning that connection's channels.
///
/// The plan lists the channels in config order, each address once, without the envelope's origin; best effort.
/// A scope that matches no channel at all fails with `recipient_not_found` (it is most likely a typo); a scope
/// whose only channel is the origin plans zero recipients.
class BroadcastStrategy : public Strategy {
public:
    /// The plugin name used in the config (`strategy: broadcast`).
    static constexpr const char* kName = "broadcast";
    /// Recipients per batch when the config does not say.
    static constexpr std::int64_t kDefaultBatchSize = 100;
    /// Largest accepted `batch_size`.
    static constexpr std::int64_t kMaxBatchSize = 100'000;

    /// @p batch_size goes into every plan (1 ... kMaxBatchSize).
    explicit BroadcastStrategy(std::uint32_t batch_size = kDefaultBatchSize) : batch_size_(batch_size) {}

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
