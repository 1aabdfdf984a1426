#include "host/leases.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>

namespace switchboard::host {

namespace {

using SteadyClock = std::chrono::steady_clock;

std::string describe(const Lease& lease) { return lease.holder + " (token " + std::to_string(lease.token) + ")"; }

}  // namespace

std::string default_host_id() {
    std::array<char, 256> name{};
    if (gethostname(name.data(), name.size() - 1) != 0 || name[0] == '\0') return "switchboard";
    return name.data();
}

LeaseKeeper::LeaseKeeper(LeaseStore& leases, std::vector<std::string> connections, LeaseKeeperOptions options,
                         Acquired acquired, Lost lost, Logger& logger)
    : leases_(leases),
      connections_(std::move(connections)),
      options_(std::move(options)),
      tick_(std::clamp(options_.ttl / 10, std::chrono::milliseconds(20), std::chrono::milliseconds(250))),
      acquired_(std::move(acquired)),
      lost_(std::move(lost)),
      logger_(logger) {
    for (const std::string& connection : connections_) states_[connection];
}

LeaseKeeper::~LeaseKeeper() { stop(); }

void LeaseKeeper::start() {
    keeper_ = std::thread([this] { keep(); });
    watchdog_ = std::thread([this] { watch(); });
}

void LeaseKeeper::stop() {
    {
        std::lock_guard lock(mutex_);
        if (stopping_ && !keeper_.joinable()) return;
        stopping_ = true;
    }
    wake_.notify_all();
    if (keeper_.joinable()) keeper_.join();
    if (watchdog_.joinable()) watchdog_.join();
    std::vector<Lease> held;
    {
        std::lock_guard lock(mutex_);
        for (auto& [connection, state] : states_) {
            if (state.held) held.push_back(state.lease);
            state.held = false;
        }
    }
    for (const Lease& lease : held) {
        if (auto released = leases_.release(lease); !released) {
            logger_.warn("could not give up the lease (" + released.error().to_string() +
                             "); a standby takes the connection once it lapses",
                         LogFields{lease.connection, {}, {}});
        } else {
            logger_.info("lease given up", LogFields{lease.connection, {}, {}});
        }
    }
}

void LeaseKeeper::pause() {
    std::lock_guard change(changes_);
    std::lock_guard lock(mutex_);
    paused_ = true;
}

std::string LeaseKeeper::holder(const std::string& connection) const {
    std::lock_guard lock(mutex_);
    auto it = states_.find(connection);
    if (it == states_.end() || it->second.lease.token == 0) return "nobody";
    if (it->second.held) return "this host: " + describe(it->second.lease);
    return describe(it->second.lease);
}

bool LeaseKeeper::held(const std::string& connection) const {
    std::lock_guard lock(mutex_);
    auto it = states_.find(connection);
    return it != states_.end() && it->second.held;
}

void LeaseKeeper::keep() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        for (const std::string& connection : connections_) {
            const State& state = states_[connection];
            const bool held = state.held;
            const bool renew_due = held && SteadyClock::now() >= state.renew_at;
            if ((held && !renew_due) || (!held && paused_)) continue;
            lock.unlock();
            if (held) {
                try_renew(connection);
            } else {
                try_acquire(connection);
            }
            lock.lock();
            if (stopping_) return;
        }
        wake_.wait_for(lock, tick_, [this] { return stopping_; });
    }
}

void LeaseKeeper::try_acquire(const std::string& connection) {
    const auto asked = SteadyClock::now();
    auto result = leases_.acquire(connection, options_.holder, options_.ttl);
    std::lock_guard change(changes_);
    std::unique_lock lock(mutex_);
    State& state = states_[connection];
    if (stopping_ || paused_) {
        if (result && *result) {  // stop() gives it up again
            state.held = true;
            state.lease = **result;
        }
        return;
    }
    const LogFields where{connection, {}, {}};
    if (!result) {
        if (!state.warned) {
            logger_.warn("could not ask for the lease (" + result.error().to_string() + "); trying again", where);
        }
        state.warned = true;
        return;
    }
    state.warned = false;
    if (!*result) {
        // Someone else holds it: note who, for the status.
        lock.unlock();
        auto other = leases_.holder(connection);
        lock.lock();
        if (other && *other && !state.held) {
            if (state.lease.holder != (*other)->holder || state.lease.token != (*other)->token) {
                logger_.info("standing by: the lease is held by " + describe(**other), where);
            }
            state.lease = **other;
        }
        return;
    }
    state.held = true;
    state.lease = **result;
    state.valid_until = asked + options_.ttl - options_.ttl / 10;
    state.renew_at = asked + options_.ttl / 3;
    const Lease lease = state.lease;
    lock.unlock();
    logger_.info("lease acquired: " + describe(lease) + " for " + std::to_string(options_.ttl.count()) + " ms",
                 where);
    acquired_(connection, lease);
}

void LeaseKeeper::try_renew(const std::string& connection) {
    Lease lease;
    {
        std::lock_guard lock(mutex_);
        lease = states_[connection].lease;
    }
    const auto asked = SteadyClock::now();
    auto renewed = leases_.renew(lease, options_.ttl);
    std::lock_guard change(changes_);
    std::unique_lock lock(mutex_);
    State& state = states_[connection];
    if (stopping_ || !state.held || state.lease.token != lease.token) return;  // lost meanwhile
    if (!renewed) {
        if (!state.warned) {
            logger_.warn("could not renew the lease (" + renewed.error().to_string() +
                             "); trying again until it lapses",
                         LogFields{connection, {}, {}});
        }
        state.warned = true;
        state.renew_at = SteadyClock::now() + tick_;
        return;
    }
    state.warned = false;
    if (!*renewed) {
        lose(connection, "another host holds it now, or it lapsed", lock);
        return;
    }
    state.valid_until = asked + options_.ttl - options_.ttl / 10;
    state.renew_at = asked + options_.ttl / 3;
}

void LeaseKeeper::watch() {
    std::unique_lock change(changes_, std::defer_lock);
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        wake_.wait_for(lock, tick_ / 2, [this] { return stopping_; });
        if (stopping_) return;
        const auto now = SteadyClock::now();
        for (const std::string& connection : connections_) {
            const State& state = states_[connection];
            if (!state.held || now < state.valid_until) continue;
            // Take the locks in the order the keeper does, then look again.
            lock.unlock();
            change.lock();
            lock.lock();
            const State& again = states_[connection];
            if (!stopping_ && again.held && SteadyClock::now() >= again.valid_until) {
                lose(connection, "not renewed within lease_ttl (store unreachable, or this process was paused)",
                     lock);
                lock.lock();
            }
            change.unlock();
        }
    }
}

// Called with changes_ and @p lock (mutex_) held; returns with mutex_ released (changes_ still held).
void LeaseKeeper::lose(const std::string& connection, const std::string& why, std::unique_lock<std::mutex>& lock) {
    State& state = states_[connection];
    state.held = false;
    const Lease lease = state.lease;
    lock.unlock();
    logger_.error("lease lost: " + describe(lease) + ": " + why + "; stopping the connection at once",
                  LogFields{connection, {}, {}});
    lost_(connection, why);
}

}  // namespace switchboard::host
