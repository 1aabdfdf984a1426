#pragma once
// The host: builds the running set from a validated config, runs it, and stops it in order.

#include "config/config.hpp"
#include "host/config_source.hpp"
#include "host/logging.hpp"
#include "plugin/registry.hpp"

#include <switchboard/store.hpp>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace switchboard::host {

/// One connection's saved state, behind ConnectorHost::load_state() and save_state(). Writes go to the store's
/// connection state through @p executor (the host's worker pool), one writer at a time, so they keep the order of
/// the calls; a key saved again before its value was written keeps only its latest value, which moves behind the
/// other keys waiting. load() sees values not written yet. A failed read or write is logged. The owner waits with
/// wait_written() before it destroys this object or the store.
class ConnectionState {
public:
    using Executor = std::function<void(std::function<void()>)>;

    ConnectionState(std::string connection, Store& store, Executor executor, Logger& logger);
    ConnectionState(const ConnectionState&) = delete;
    ConnectionState& operator=(const ConnectionState&) = delete;

    /// The latest value saved under @p key (written or not), or nullopt (none, or the store failed).
    [[nodiscard]] std::optional<std::string> load(const std::string& key);
    /// Queues @p value for @p key; never blocks on the store.
    void save(std::string key, std::string value);
    /// Waits until every save so far is written, or @p timeout passes; returns whether they were.
    bool wait_written(std::chrono::milliseconds timeout);

private:
    void write();

    const std::string connection_;
    Store& store_;
    const Executor executor_;
    Logger& logger_;
    std::mutex mutex_;
    std::condition_variable written_;
    std::deque<std::pair<std::string, std::string>> waiting_;     // not written yet, in the order to write them
    std::optional<std::pair<std::string, std::string>> writing_;  // set while a writer runs: what it writes now
    bool writer_ = false;                                          // a writer is posted or running
};

struct HostOptions {
    /// How long a stop waits for queued messages and in-flight sends before it gives up on them (they stay
    /// pending in the store for the next start).
    std::chrono::milliseconds drain_timeout{10000};
    /// I/O threads running the io_context (connectors).
    unsigned io_threads = 2;
    /// Pipeline workers (store and bots).
    unsigned worker_threads = 2;
    /// Where the config came from: a reload (SIGHUP, POST /api/reload) reads it again from there.
    ConfigSource source;
};

class Host {
public:
    /// @p registry holds the plugins @p config was validated with; the host keeps it (a reload replaces it).
    Host(config::Config config, std::shared_ptr<const plugin::Registry> registry, SpdLogger& logger,
         HostOptions options = {});
    ~Host();
    Host(const Host&) = delete;
    Host& operator=(const Host&) = delete;

    /// Creates the store, bots, recovery policies and connectors, starts them, and runs until SIGINT/SIGTERM,
    /// request_stop(), or until every connection has finished. Then stops connectors, drains the pipeline and
    /// deliveries, destroys every plugin object and closes the store. Returns the process exit status: 0 after a
    /// clean stop, 1 if start-up failed (the reason is logged). SIGHUP and POST /api/reload reload the config from
    /// HostOptions::source while it runs (host/reload.hpp says what may change).
    int run();

    /// Asks run() to stop. Thread-safe.
    void request_stop(const std::string& reason);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace switchboard::host
