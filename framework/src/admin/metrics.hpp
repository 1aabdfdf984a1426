#pragma once
// The host's metrics (DESIGN §7): counters, gauges and histograms on prometheus-cpp's core registry, rendered in the
// Prometheus text exposition format for the admin server's /metrics.
//
// Recording is cheap enough for hot paths: the label sets a call needs are looked up in a small map of our own and
// the metric updated with an atomic add. Figures that other parts already count (rate-limit schedulers, the
// deliveries in progress, queue depths) are not copied on every event: a sampler given by the host reads them when
// /metrics is scraped.

#include <switchboard/connector.hpp>
#include <switchboard/rate_limit.hpp>
#include <switchboard/recovery.hpp>
#include <switchboard/routing.hpp>
#include <switchboard/store.hpp>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace switchboard::admin {

/// The store calls whose latency is measured (the `op` label of switchboard_store_seconds).
enum class StoreOp : std::uint8_t {
    is_processed,
    commit,
    cursor,
    connection_state,
    key_value,
    outbox_add,
    outbox_update,
    outbox_read,
    messages,
    prune,
};
inline constexpr std::size_t kStoreOps = 10;

/// "is_processed", "commit", ...
[[nodiscard]] std::string_view to_string(StoreOp op) noexcept;

/// Figures read when /metrics is scraped.
struct Sample {
    struct Connection {
        std::string name;
        RateLimitStats rate_limits;
        std::size_t queued = 0;  // inbound messages and events waiting on its pipeline lane
    };
    std::vector<Connection> connections;
    std::size_t deliveries_in_progress = 0;  // plans not finished (their outbox entries are in flight)
    std::size_t deliveries_waiting = 0;      // recipients left pending until their connection is back
};

class Metrics {
public:
    /// Reads what is sampled at scrape time; called on the scraping thread.
    using Sampler = std::function<Sample()>;

    Metrics();
    ~Metrics();
    Metrics(const Metrics&) = delete;
    Metrics& operator=(const Metrics&) = delete;

    /// Sets what render() samples (the host's, once it runs). Not thread-safe: set it before the first scrape.
    void set_sampler(Sampler sampler);

    /// A committed batch of inbound messages (processed, with recovered ones counted apart) and how many messages
    /// of it dedup dropped, for one connection.
    void inbound(const std::string& connection, std::span<const ProcessedMessage> committed, std::size_t duplicates);

    /// A connection event: `disconnected` counts a reconnect to come; every type counts by itself too.
    void connection_event(const std::string& connection, ConnectionEvent::Type type);

    /// A recovery policy finished one channel.
    void recovery(const std::string& connection, const RecoveryReport& report);

    /// A delivery plan ended: its status, the messages it delivered (by connection and channel; people count as
    /// channel `@user`), and the time from the plan's start to its report.
    void delivery(const DeliveryReport& report, std::chrono::nanoseconds elapsed);

    /// A store call of @p op that took @p elapsed.
    void store_call(StoreOp op, std::chrono::nanoseconds elapsed);

    /// A reload ended: applied (@p ok) or refused, the running set unchanged.
    void reload(bool ok);

    /// Everything, in the text exposition format (version 0.0.4).
    [[nodiscard]] std::string render() const;

    /// The Content-Type of render()'s text.
    static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// A Store that forwards every call to another and records its latency in @p metrics. The host puts it in front
/// of the configured store.
class InstrumentedStore final : public Store {
public:
    InstrumentedStore(std::shared_ptr<Store> store, Metrics& metrics);

    Result<bool> is_processed(const MessageKey& key) override;
    Result<std::vector<bool>> are_processed(std::span<const Message> messages) override;
    Result<void> commit(std::span<const ProcessedMessage> batch) override;
    Result<std::optional<Cursor>> cursor(const std::string& connection, const std::string& channel) override;
    Result<std::vector<ChannelCursor>> cursors(const std::string& connection) override;
    Result<void> put_connection_state(const std::string& connection, const std::string& key,
                                      const std::string& value) override;
    Result<std::optional<std::string>> connection_state(const std::string& connection,
                                                        const std::string& key) override;
    Result<std::optional<std::string>> get_value(const std::string& space, const std::string& key) override;
    Result<void> put_values(std::span<const KeyValueWrite> writes) override;
    Result<void> outbox_add(std::span<const OutboxEntry> entries) override;
    Result<std::vector<OutboxEntry>> outbox_add_plan(const OutboxPlanAdd& plan) override;
    Result<void> outbox_update(std::span<const OutboxEntry> entries) override;
    Result<void> outbox_update_plans(std::span<const OutboxPlanUpdate> plans) override;
    Result<std::vector<OutboxEntry>> outbox_pending() override;
    Result<std::vector<OutboxEntry>> outbox_plan(const std::string& plan_id) override;
    Result<std::vector<Message>> messages(const std::string& connection, const std::string& channel,
                                          std::int64_t from_ms, std::int64_t to_ms, std::size_t limit) override;
    Result<std::size_t> prune(std::int64_t before_ms) override;
    /// The wrapped store's leases (not timed: they are not on a message's path).
    LeaseStore* leases() noexcept override { return store_->leases(); }
    /// The wrapped store's shared queues (not timed either).
    SharedQueues* queues() noexcept override { return store_->queues(); }

private:
    template <class F>
    auto timed(StoreOp op, F&& call) {
        const auto start = std::chrono::steady_clock::now();
        auto result = call();
        metrics_.store_call(op, std::chrono::steady_clock::now() - start);
        return result;
    }

    std::shared_ptr<Store> store_;
    Metrics& metrics_;
};

}  // namespace switchboard::admin
