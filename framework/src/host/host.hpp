#pragma once
// The host: builds the running set from a validated config, runs it, and stops it in order.

#include "config/config.hpp"
#include "host/logging.hpp"
#include "plugin/registry.hpp"

#include <chrono>
#include <memory>
#include <string>

namespace switchboard::host {

struct HostOptions {
    /// How long a stop waits for queued messages and in-flight sends before it gives up on them (they stay
    /// pending in the store for the next start).
    std::chrono::milliseconds drain_timeout{10000};
    /// I/O threads running the io_context (connectors).
    unsigned io_threads = 2;
    /// Pipeline workers (store and bots).
    unsigned worker_threads = 2;
};

class Host {
public:
    Host(config::Config config, const plugin::Registry& registry, SpdLogger& logger, HostOptions options = {});
    ~Host();
    Host(const Host&) = delete;
    Host& operator=(const Host&) = delete;

    /// Creates the store, bots, recovery policies and connectors, starts them, and runs until SIGINT/SIGTERM,
    /// request_stop(), or until every connection has finished. Then stops connectors, drains the pipeline and
    /// deliveries, destroys every plugin object and closes the store. Returns the process exit status: 0 after a
    /// clean stop, 1 if start-up failed (the reason is logged).
    int run();

    /// Asks run() to stop. Thread-safe.
    void request_stop(const std::string& reason);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace switchboard::host
