#pragma once
// Connection leases (DESIGN §8): with a store shared by several hosts, a host runs a connection only while it holds
// that connection's lease. The LeaseKeeper acquires the leases of the host's connections, renews them, and tells
// the host when one is gained (start the connection) or lost (stop it at once).

#include "host/logging.hpp"

#include <switchboard/store.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace switchboard::host {

struct LeaseKeeperOptions {
    /// This host's id in the leases (switchboard.cluster.host_id).
    std::string holder;
    /// A lease not renewed for this long lapses (switchboard.cluster.lease_ttl).
    std::chrono::milliseconds ttl{5000};
};

/// Keeps the leases of one host's connections, on two threads of its own (store calls block):
/// - the keeper tries to acquire every lease it does not hold (every ttl/10, at most 250 ms apart, so a lapsed lease
///   is taken within that of its lapse) and renews the ones it holds every ttl/3;
/// - the watchdog declares a lease lost as soon as it was not renewed within its time to live (less a tenth as
///   margin for clock drift) — the store is unreachable, or the process was paused — even while a store call hangs.
/// A renewal that finds the lease taken (or lapsed) loses it at once. @p acquired and @p lost are called on these
/// threads, once per change, never concurrently for one connection.
class LeaseKeeper {
public:
    using Acquired = std::function<void(const std::string& connection, const Lease& lease)>;
    using Lost = std::function<void(const std::string& connection, const std::string& why)>;

    LeaseKeeper(LeaseStore& leases, std::vector<std::string> connections, LeaseKeeperOptions options,
                Acquired acquired, Lost lost, Logger& logger);
    /// Stops as stop() does.
    ~LeaseKeeper();
    LeaseKeeper(const LeaseKeeper&) = delete;
    LeaseKeeper& operator=(const LeaseKeeper&) = delete;

    void start();

    /// Acquires no more leases (keeps renewing the held ones), and returns once no acquired callback runs: no
    /// connection starts after this. For a stop, before the connections are stopped.
    void pause();

    /// Stops both threads and gives up every lease held (so a standby takes over at once, without waiting for
    /// them to lapse). Call after the connections stopped.
    void stop();

    /// Who holds @p connection's lease, as last seen: "this host (ID, token N)", "ID (token N)", or "nobody".
    [[nodiscard]] std::string holder(const std::string& connection) const;

    /// Whether this host holds @p connection's lease now.
    [[nodiscard]] bool held(const std::string& connection) const;

private:
    struct State {
        bool held = false;
        Lease lease;                                      // held: ours; else the other holder's, as last seen
        std::chrono::steady_clock::time_point valid_until;  // held: when it lapses unless renewed
        std::chrono::steady_clock::time_point renew_at;
        bool warned = false;  // a failed store call was logged
    };

    void keep();
    void watch();
    void try_acquire(const std::string& connection);
    void try_renew(const std::string& connection);
    void lose(const std::string& connection, const std::string& why, std::unique_lock<std::mutex>& lock);

    LeaseStore& leases_;
    const std::vector<std::string> connections_;
    const LeaseKeeperOptions options_;
    const std::chrono::milliseconds tick_;
    Acquired acquired_;
    Lost lost_;
    Logger& logger_;

    mutable std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    bool paused_ = false;
    std::map<std::string, State> states_;
    std::mutex changes_;  // held while acquired_/lost_ run: one change at a time
    std::thread keeper_;
    std::thread watchdog_;
};

/// The default host id: the machine's host name.
[[nodiscard]] std::string default_host_id();

}  // namespace switchboard::host
