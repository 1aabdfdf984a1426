#pragma once
// The inbound pipeline: connector → dedup → bots → "processed + cursor" (one transaction) → outbox delivery.
//
// Each connection has a lane: a queue drained in batches on a strand of the worker pool, so one connection's
// messages reach the bots in the order the connector delivered them, and no store call runs on an I/O thread.

#include <switchboard/bot.hpp>
#include <switchboard/store.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
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

/// Receives outbox entries once the message that produced them is durable.
using OutboxHandler = std::function<void(std::vector<OutboxEntry>)>;

/// Counters for logs, status and tests.
struct PipelineStats {
    std::uint64_t received = 0;    // submitted
    std::uint64_t processed = 0;   // committed as processed
    std::uint64_t duplicates = 0;  // dropped by dedup
    std::uint64_t recovered = 0;   // processed with recovered = true
    std::uint64_t store_failures = 0;
};

class Pipeline {
public:
    /// @p connections: every connection name (one lane each). @p outbox receives replies after commit.
    Pipeline(Store& store, std::vector<BotBinding> bots, const std::vector<std::string>& connections,
             boost::asio::thread_pool& workers, Logger& logger, OutboxHandler outbox);
    ~Pipeline();
    Pipeline(const Pipeline&) = delete;
    Pipeline& operator=(const Pipeline&) = delete;

    /// Queues @p message on its connection's lane. Thread-safe, never blocks on the store.
    void submit(Message message);

    /// Runs @p task on @p connection's lane, after every message submitted before it (for connection events).
    void post(const std::string& connection, std::function<void()> task);

    /// Waits until every lane is empty and idle, or @p timeout passes; returns whether it drained.
    bool wait_idle(std::chrono::milliseconds timeout);

    /// Stops accepting messages; later submit() calls are dropped (and counted as not received).
    void close();

    [[nodiscard]] PipelineStats stats() const;

    /// Messages handled per store commit at most.
    static constexpr std::size_t kMaxBatch = 256;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace switchboard::host
