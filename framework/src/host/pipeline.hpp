#pragma once
// The inbound pipeline: connector → dedup → bots and routes → "processed + cursor + outbox" (one transaction) →
// the delivery engine.
//
// Each connection has a lane: a queue drained in batches on a strand of the worker pool, so one connection's
// messages reach the bots in the order the connector delivered them, and no store call runs on an I/O thread.

#include "routing/router.hpp"

#include <switchboard/bot.hpp>
#include <switchboard/store.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace boost::asio {
class thread_pool;
}  // namespace boost::asio

namespace switchboard::host {

/// A loaded bot and where it listens.
struct BotBinding {
    std::string name;
    std::shared_ptr<Bot> bot;
    /// (connection, platform channel id) pairs it hears; empty = every channel of every connection.
    std::set<std::pair<std::string, std::string>> channels;
};

/// A plan staged while a message was handled (its recipients are in the outbox with the message), and the
/// callback for its report (may be empty).
using StagedDelivery = routing::Execution;

/// Receives the staged plans once the message that produced them is durable. @p persisted: their outbox entries are
/// exactly what the commit wrote (DeliveryEngine::execute_all); false after a commit that failed first and went
/// through when tried again, since the failed one may have been recorded too (its reply lost), so the engine must
/// read what the outbox holds of them first.
using DeliveryHandler = std::function<void(std::vector<StagedDelivery>, bool persisted)>;

/// Told what each committed batch of one connection held, and how many of its messages dedup dropped (the host's
/// metrics). Called on a pipeline worker, after the commit.
using CommitObserver =
    std::function<void(const std::string& connection, std::span<const ProcessedMessage> committed, std::size_t duplicates)>;

/// Counters for logs, status and tests.
struct PipelineStats {
    std::uint64_t received = 0;    // submitted
    std::uint64_t processed = 0;   // committed as processed
    std::uint64_t duplicates = 0;  // dropped by dedup
    std::uint64_t recovered = 0;   // processed with recovered = true
    std::uint64_t held = 0;        // live messages parked while their channel recovered (released ones included)
    std::uint64_t store_failures = 0;
    std::uint64_t fenced = 0;      // dropped because another host holds their connection's lease (never committed)
};

class Pipeline {
public:
    /// @p connections: every connection name (one lane each). @p planner plans what bots route and what the
    /// config's routes relay (null: bots' route() calls report `no_strategy`). @p deliver receives the staged plans
    /// after commit; @p observer (may be empty) hears of every commit.
    Pipeline(Store& store, std::vector<BotBinding> bots, const std::vector<std::string>& connections,
             boost::asio::thread_pool& workers, Logger& logger, std::shared_ptr<const routing::Planner> planner,
             DeliveryHandler deliver, CommitObserver observer = {});
    ~Pipeline();
    Pipeline(const Pipeline&) = delete;
    Pipeline& operator=(const Pipeline&) = delete;

    /// Replaces the bots and the planner (a reload). Batches that start after this call use the new ones; a batch
    /// already running finishes with the old ones, which go (and with them, maybe, their libraries) when it ends.
    void reconfigure(std::vector<BotBinding> bots, std::shared_ptr<const routing::Planner> planner);

    /// Queues @p message on its connection's lane. Thread-safe, never blocks on the store.
    void submit(Message message);

    /// Runs @p task on @p connection's lane, after every message submitted before it (for connection events).
    void post(const std::string& connection, std::function<void()> task);

    /// Holds back live messages of @p channel on @p connection while its recovery runs: at once, messages of that
    /// channel with `recovered = false` not yet taken into a batch are parked instead of handled (called from a
    /// lane task, such as a recovery event, that is every message delivered after the event); recovered ones pass. Without this a live message would be handled before the older ones recovery
    /// still fetches, out of order, and would move the cursor past messages not yet handled.
    void hold(const std::string& connection, const std::string& channel);

    /// Ends a hold(): the parked messages go to the back of the lane, in order, after every message submitted
    /// before this call (the recovered ones); dedup drops those recovery fetched too. No-op without a hold.
    void release(const std::string& connection, const std::string& channel);

    /// Ends every hold() of @p connection and drops what was parked, as a stop would leave it: those messages were
    /// not handled and their cursor never moved past them, so the recovery of whatever connects next under that
    /// name fetches them again, in order. For a connection a reload replaces or removes.
    void drop_holds(const std::string& connection);

    /// Waits until every lane is empty and idle, or @p timeout passes; returns whether it drained. Parked messages
    /// (hold()) do not count: they are not lost when the host stops, as their cursor never moved past them.
    bool wait_idle(std::chrono::milliseconds timeout);

    /// Stops accepting messages; later submit() calls are dropped (and counted as not received).
    void close();
    /// At stop, once wait_idle() gave up: nothing more is handled, and a lane waiting to try a failed store again
    /// stops waiting (otherwise a store that keeps failing would hold the worker pool forever). What is left is not
    /// lost: those messages were not committed, so their cursor never moved past them and recovery fetches them at
    /// the next start; what bots routed while handling a batch whose commit failed is reported `shutting_down` (not
    /// sent) when the pipeline goes.
    void give_up();

    [[nodiscard]] PipelineStats stats() const;

    /// Messages and events waiting on each connection's lane now (parked ones not counted), by connection.
    [[nodiscard]] std::map<std::string, std::size_t> queue_depths() const;

    /// Messages handled per store commit at most.
    static constexpr std::size_t kMaxBatch = 256;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace switchboard::host
