#include "admin/metrics.hpp"

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <mutex>
#include <utility>

namespace switchboard::admin {

std::string_view to_string(StoreOp op) noexcept {
    switch (op) {
        case StoreOp::is_processed: return "is_processed";
        case StoreOp::commit: return "commit";
        case StoreOp::cursor: return "cursor";
        case StoreOp::connection_state: return "connection_state";
        case StoreOp::key_value: return "key_value";
        case StoreOp::outbox_add: return "outbox_add";
        case StoreOp::outbox_update: return "outbox_update";
        case StoreOp::outbox_read: return "outbox_read";
        case StoreOp::messages: return "messages";
        case StoreOp::prune: return "prune";
    }
    return "unknown";
}

namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

double seconds(std::chrono::nanoseconds elapsed) { return std::chrono::duration<double>(elapsed).count(); }

// Sampled figures as metric families of their own, built at collect time.
class SampledFigures final : public prometheus::Collectable {
public:
    explicit SampledFigures(const Metrics::Sampler& sampler) : sampler_(sampler) {}

    std::vector<prometheus::MetricFamily> Collect() const override {
        if (!sampler_) return {};
        const Sample sample = sampler_();
        auto family = [](std::string name, std::string help, prometheus::MetricType type) {
            prometheus::MetricFamily f;
            f.name = std::move(name);
            f.help = std::move(help);
            f.type = type;
            return f;
        };
        auto limited = family("switchboard_rate_limited_total",
                              "429 (rate limited) responses the platform gave, by connection",
                              prometheus::MetricType::Counter);
        auto waited = family("switchboard_rate_limit_wait_seconds_total",
                             "Time requests spent waiting for their rate-limit grant, by connection",
                             prometheus::MetricType::Counter);
        auto waiting = family("switchboard_rate_limit_waiting",
                              "Requests waiting for their rate-limit grant now, by connection",
                              prometheus::MetricType::Gauge);
        auto queued = family("switchboard_queue_depth",
                             "Inbound messages and events waiting on the connection's pipeline lane",
                             prometheus::MetricType::Gauge);
        for (const Sample::Connection& c : sample.connections) {
            const std::vector<prometheus::ClientMetric::Label> labels{{"connection", c.name}};
            prometheus::ClientMetric m;
            m.label = labels;
            m.counter.value = static_cast<double>(c.rate_limits.limited);
            limited.metric.push_back(m);
            m.counter.value = static_cast<double>(c.rate_limits.waited_ms) / 1000.0;
            waited.metric.push_back(m);
            m.counter.value = 0;
            m.gauge.value = static_cast<double>(c.rate_limits.waiting);
            waiting.metric.push_back(m);
            m.gauge.value = static_cast<double>(c.queued);
            queued.metric.push_back(m);
        }
        auto outbox = family("switchboard_outbox_in_flight",
                             "Delivery plans in progress (their outbox entries not all final yet)",
                             prometheus::MetricType::Gauge);
        prometheus::ClientMetric m;
        m.gauge.value = static_cast<double>(sample.deliveries_in_progress);
        outbox.metric.push_back(m);
        auto parked = family("switchboard_outbox_waiting_for_connection",
                             "Recipients left pending (retries ran out, or cut by the deadline) that go out again "
                             "when their connection reports connected or resumed",
                             prometheus::MetricType::Gauge);
        m.gauge.value = static_cast<double>(sample.deliveries_waiting);
        parked.metric.push_back(m);
        return {std::move(limited), std::move(waited), std::move(waiting),
                std::move(queued),  std::move(outbox), std::move(parked)};
    }

private:
    const Metrics::Sampler& sampler_;
};

// Latency buckets in seconds: 50 µs to 10 s.
const Histogram::BucketBoundaries& latency_buckets() {
    static const Histogram::BucketBoundaries buckets{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                     0.01,    0.025,  0.05,    0.1,    0.25,  0.5,    1,
                                                     2.5,     5,      10};
    return buckets;
}

}  // namespace

struct Metrics::Impl {
    Impl()
        : registry(std::make_shared<prometheus::Registry>()),
          messages_in(prometheus::BuildCounter()
                          .Name("switchboard_messages_in_total")
                          .Help("Inbound messages handled (committed as processed), by connection and channel")
                          .Register(*registry)),
          messages_out(prometheus::BuildCounter()
                           .Name("switchboard_messages_out_total")
                           .Help("Messages delivered to a platform, by connection and channel (@user for people)")
                           .Register(*registry)),
          dedup_hits(prometheus::BuildCounter()
                         .Name("switchboard_dedup_hits_total")
                         .Help("Inbound messages dropped because they were handled already, by connection")
                         .Register(*registry)),
          recovered(prometheus::BuildCounter()
                        .Name("switchboard_recovered_messages_total")
                        .Help("Inbound messages handled that recovery fetched after a reconnect, by connection")
                        .Register(*registry)),
          connection_events(prometheus::BuildCounter()
                                .Name("switchboard_connection_events_total")
                                .Help("Connection events (connected, resumed, disconnected, finished)")
                                .Register(*registry)),
          reconnects(prometheus::BuildCounter()
                         .Name("switchboard_reconnects_total")
                         .Help("Connections lost (each is followed by a reconnect unless the host stops)")
                         .Register(*registry)),
          recovery_runs(prometheus::BuildCounter()
                            .Name("switchboard_recovery_runs_total")
                            .Help("Channels a recovery policy finished, by connection")
                            .Register(*registry)),
          recovery_gaps(prometheus::BuildCounter()
                            .Name("switchboard_recovery_gaps_total")
                            .Help("Recovery runs that reported a gap (messages possibly lost), by connection")
                            .Register(*registry)),
          deliveries(prometheus::BuildCounter()
                         .Name("switchboard_deliveries_total")
                         .Help("Delivery reports, by status")
                         .Register(*registry)),
          fanout_seconds(prometheus::BuildHistogram()
                             .Name("switchboard_fanout_seconds")
                             .Help("Time from a delivery plan's start to its report")
                             .Register(*registry)),
          store_seconds(prometheus::BuildHistogram()
                            .Name("switchboard_store_seconds")
                            .Help("Latency of store calls, by operation")
                            .Register(*registry)),
          reloads(prometheus::BuildCounter()
                      .Name("switchboard_reloads_total")
                      .Help("Config reloads (SIGHUP, POST /api/reload), by result: ok, or failed (nothing changed)")
                      .Register(*registry)),
          reload_ok(reloads.Add({{"result", "ok"}})),
          reload_failed(reloads.Add({{"result", "failed"}})),
          last_reload_success(prometheus::BuildGauge()
                                  .Name("switchboard_last_reload_success")
                                  .Help("1 if the last reload was applied, 0 if it failed; absent before the first")
                                  .Register(*registry)),
          last_reload_time(prometheus::BuildGauge()
                               .Name("switchboard_last_reload_timestamp_seconds")
                               .Help("When the last reload ended (Unix time), applied or not")
                               .Register(*registry)),
          fanout(&fanout_seconds.Add({}, latency_buckets())) {
        for (std::size_t i = 0; i < kStoreOps; ++i) {
            store_ops[i] = &store_seconds.Add({{"op", std::string(to_string(static_cast<StoreOp>(i)))}},
                                              latency_buckets());
        }
        for (const DeliveryStatus status :
             {DeliveryStatus::delivered, DeliveryStatus::partial, DeliveryStatus::group_dissolved,
              DeliveryStatus::recipient_not_found, DeliveryStatus::rejected, DeliveryStatus::retryable}) {
            by_status[static_cast<std::size_t>(status)] =
                &deliveries.Add({{"status", std::string(switchboard::to_string(status))}});
        }
    }

    // The counter of @p family for (connection, channel), made on first use. The map key joins both with a byte
    // that cannot occur in a configured connection name.
    Counter& counter(Family<Counter>& family, std::map<std::string, Counter*, std::less<>>& cache,
                     const std::string& connection, std::string_view channel) {
        std::string key;
        key.reserve(connection.size() + 1 + channel.size());
        key.append(connection).push_back('\x1f');
        key.append(channel);
        std::lock_guard lock(mutex);
        auto it = cache.find(key);
        if (it == cache.end()) {
            Counter* made = channel.empty() ? &family.Add({{"connection", connection}})
                                            : &family.Add({{"connection", connection}, {"channel", std::string(channel)}});
            it = cache.emplace(std::move(key), made).first;
        }
        return *it->second;
    }

    std::shared_ptr<prometheus::Registry> registry;
    Family<Counter>& messages_in;
    Family<Counter>& messages_out;
    Family<Counter>& dedup_hits;
    Family<Counter>& recovered;
    Family<Counter>& connection_events;
    Family<Counter>& reconnects;
    Family<Counter>& recovery_runs;
    Family<Counter>& recovery_gaps;
    Family<Counter>& deliveries;
    Family<Histogram>& fanout_seconds;
    Family<Histogram>& store_seconds;
    Family<Counter>& reloads;
    Counter& reload_ok;
    Counter& reload_failed;
    Family<Gauge>& last_reload_success;
    Family<Gauge>& last_reload_time;
    Histogram* fanout;
    std::array<Histogram*, kStoreOps> store_ops{};
    std::array<Counter*, 6> by_status{};

    std::mutex mutex;  // the caches
    std::map<std::string, Counter*, std::less<>> in_cache, out_cache, per_connection_cache;

    Sampler sampler;
    std::shared_ptr<SampledFigures> sampled;
};

Metrics::Metrics() : impl_(std::make_unique<Impl>()) {
    impl_->sampled = std::make_shared<SampledFigures>(impl_->sampler);
}

Metrics::~Metrics() = default;

void Metrics::set_sampler(Sampler sampler) { impl_->sampler = std::move(sampler); }

void Metrics::reload(bool ok) {
    (ok ? impl_->reload_ok : impl_->reload_failed).Increment();
    impl_->last_reload_success.Add({}).Set(ok ? 1 : 0);
    impl_->last_reload_time.Add({}).SetToCurrentTime();
}

void Metrics::inbound(const std::string& connection, std::span<const ProcessedMessage> committed,
                      std::size_t duplicates) {
    Impl& m = *impl_;
    std::size_t recovered = 0;
    // Messages of a batch mostly share a channel: one lookup per run of the same channel.
    std::size_t run = 0;
    const std::string* channel = nullptr;
    auto flush = [&] {
        if (run > 0) m.counter(m.messages_in, m.in_cache, connection, *channel).Increment(static_cast<double>(run));
    };
    for (const ProcessedMessage& p : committed) {
        if (p.message.recovered) ++recovered;
        if (channel == nullptr || *channel != p.message.channel) {
            flush();
            channel = &p.message.channel;
            run = 0;
        }
        ++run;
    }
    flush();
    if (duplicates > 0) {
        m.counter(m.dedup_hits, m.per_connection_cache, connection, {}).Increment(static_cast<double>(duplicates));
    }
    if (recovered > 0) {
        m.recovered.Add({{"connection", connection}}).Increment(static_cast<double>(recovered));
    }
}

void Metrics::connection_event(const std::string& connection, ConnectionEvent::Type type) {
    impl_->connection_events.Add({{"connection", connection}, {"event", std::string(to_string(type))}}).Increment();
    if (type == ConnectionEvent::Type::disconnected) impl_->reconnects.Add({{"connection", connection}}).Increment();
}

void Metrics::recovery(const std::string& connection, const RecoveryReport& report) {
    impl_->recovery_runs.Add({{"connection", connection}}).Increment();
    // Present from the first run on, so a rate over it is defined before the first gap.
    auto& gaps = impl_->recovery_gaps.Add({{"connection", connection}});
    if (report.gap) gaps.Increment();
}

void Metrics::delivery(const DeliveryReport& report, std::chrono::nanoseconds elapsed) {
    Impl& m = *impl_;
    if (auto index = static_cast<std::size_t>(report.status); index < m.by_status.size()) {
        m.by_status[index]->Increment();
    }
    m.fanout->Observe(seconds(elapsed));
    // Recipients come in runs of one connection and channel (or of people on one connection).
    std::size_t run = 0;
    const Address* last = nullptr;
    auto flush = [&] {
        if (run == 0) return;
        m.counter(m.messages_out, m.out_cache, last->connection, last->is_user ? "@user" : last->target)
            .Increment(static_cast<double>(run));
    };
    for (const RecipientOutcome& r : report.recipients) {
        if (!r.delivered) continue;
        const Address& a = r.address;
        if (last == nullptr || last->connection != a.connection || last->is_user != a.is_user ||
            (!a.is_user && last->target != a.target)) {
            flush();
            last = &a;
            run = 0;
        }
        ++run;
    }
    flush();
}

void Metrics::store_call(StoreOp op, std::chrono::nanoseconds elapsed) {
    impl_->store_ops[static_cast<std::size_t>(op)]->Observe(seconds(elapsed));
}

std::string Metrics::render() const {
    std::vector<prometheus::MetricFamily> families = impl_->registry->Collect();
    for (auto& family : impl_->sampled->Collect()) families.push_back(std::move(family));
    return prometheus::TextSerializer().Serialize(families);
}

// ---- InstrumentedStore --------------------------------------------------------------------------------------------

InstrumentedStore::InstrumentedStore(std::shared_ptr<Store> store, Metrics& metrics)
    : store_(std::move(store)), metrics_(metrics) {}

Result<bool> InstrumentedStore::is_processed(const MessageKey& key) {
    return timed(StoreOp::is_processed, [&] { return store_->is_processed(key); });
}
Result<std::vector<bool>> InstrumentedStore::are_processed(std::span<const Message> messages) {
    return timed(StoreOp::is_processed, [&] { return store_->are_processed(messages); });
}
Result<void> InstrumentedStore::commit(std::span<const ProcessedMessage> batch) {
    return timed(StoreOp::commit, [&] { return store_->commit(batch); });
}
Result<std::optional<Cursor>> InstrumentedStore::cursor(const std::string& connection, const std::string& channel) {
    return timed(StoreOp::cursor, [&] { return store_->cursor(connection, channel); });
}
Result<std::vector<ChannelCursor>> InstrumentedStore::cursors(const std::string& connection) {
    return timed(StoreOp::cursor, [&] { return store_->cursors(connection); });
}
Result<void> InstrumentedStore::put_connection_state(const std::string& connection, const std::string& key,
                                                     const std::string& value) {
    return timed(StoreOp::connection_state, [&] { return store_->put_connection_state(connection, key, value); });
}
Result<std::optional<std::string>> InstrumentedStore::connection_state(const std::string& connection,
                                                                       const std::string& key) {
    return timed(StoreOp::connection_state, [&] { return store_->connection_state(connection, key); });
}
Result<std::optional<std::string>> InstrumentedStore::get_value(const std::string& space, const std::string& key) {
    return timed(StoreOp::key_value, [&] { return store_->get_value(space, key); });
}
Result<void> InstrumentedStore::put_values(std::span<const KeyValueWrite> writes) {
    return timed(StoreOp::key_value, [&] { return store_->put_values(writes); });
}
Result<void> InstrumentedStore::outbox_add(std::span<const OutboxEntry> entries) {
    return timed(StoreOp::outbox_add, [&] { return store_->outbox_add(entries); });
}
Result<std::vector<OutboxEntry>> InstrumentedStore::outbox_add_plan(const OutboxPlanAdd& plan) {
    return timed(StoreOp::outbox_add, [&] { return store_->outbox_add_plan(plan); });
}
Result<void> InstrumentedStore::outbox_update(std::span<const OutboxEntry> entries) {
    return timed(StoreOp::outbox_update, [&] { return store_->outbox_update(entries); });
}
Result<void> InstrumentedStore::outbox_update_plans(std::span<const OutboxPlanUpdate> plans) {
    return timed(StoreOp::outbox_update, [&] { return store_->outbox_update_plans(plans); });
}
Result<std::vector<OutboxEntry>> InstrumentedStore::outbox_pending() {
    return timed(StoreOp::outbox_read, [&] { return store_->outbox_pending(); });
}
Result<std::vector<OutboxEntry>> InstrumentedStore::outbox_plan(const std::string& plan_id) {
    return timed(StoreOp::outbox_read, [&] { return store_->outbox_plan(plan_id); });
}
Result<std::vector<Message>> InstrumentedStore::messages(const std::string& connection, const std::string& channel,
                                                         std::int64_t from_ms, std::int64_t to_ms, std::size_t limit) {
    return timed(StoreOp::messages, [&] { return store_->messages(connection, channel, from_ms, to_ms, limit); });
}
Result<std::size_t> InstrumentedStore::prune(std::int64_t before_ms) {
    return timed(StoreOp::prune, [&] { return store_->prune(before_ms); });
}

}  // namespace switchboard::admin
