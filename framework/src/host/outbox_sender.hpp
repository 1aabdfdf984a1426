#pragma once
// Sends outbox entries through their connections and records each recipient's outcome in the store.
// Retryable failures are retried with backoff (the platform's retry-after when it gives one) a bounded number of
// times; the entry stays `pending` in the store meanwhile, so a restart finishes what a crash interrupted.

#include <switchboard/connector.hpp>
#include <switchboard/store.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace boost::asio {
class io_context;
class thread_pool;
}  // namespace boost::asio

namespace switchboard::host {

class OutboxSender {
public:
    OutboxSender(Store& store, boost::asio::io_context& io, boost::asio::thread_pool& workers, Logger& logger);
    ~OutboxSender();
    OutboxSender(const OutboxSender&) = delete;
    OutboxSender& operator=(const OutboxSender&) = delete;

    /// Makes @p connector the one that sends for addresses on connection @p name.
    void add_connection(const std::string& name, std::shared_ptr<Connector> connector);

    /// Sends every entry (already in the store) and records the outcomes. Thread-safe.
    void send(std::vector<OutboxEntry> entries);

    /// Waits until no send is in flight or @p timeout passes; returns whether it drained.
    bool wait_idle(std::chrono::milliseconds timeout);

    /// Forgets the connectors (after they stopped); entries still in flight stay pending in the store.
    void clear();

    /// Attempts per entry before it is marked failed.
    static constexpr int kMaxAttempts = 5;

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace switchboard::host
