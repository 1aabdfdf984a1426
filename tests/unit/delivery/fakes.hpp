#pragma once
// Fakes for the delivery engine's tests: connectors that complete inline, later on the io_context, never, or with
// scripted failures; a directory with reachability control; a store that notes which threads call it; a logger that
// keeps its lines; and a sink for reports that waits with a deadline.

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <switchboard/connector.hpp>
#include <switchboard/routing.hpp>
#include <switchboard/store.hpp>
#include <thread>
#include <vector>

#include "memory_store.hpp"

namespace switchboard::delivery_test {

using SteadyClock = std::chrono::steady_clock;

/// One send as the connector saw it.
struct SendRecord {
    Address to;
    std::string text;
    std::string idempotency_key;
    int attempt = 0;  // 1 for the first send of this (plan, recipient)
    SteadyClock::time_point at;
    std::uint64_t sequence = 0;  // position among this connector's starts and completions
};

/// A connector whose completion mode and outcomes are chosen by the test. Thread-safe.
class FakeConnector : public Connector {
public:
    enum class Mode {
        inline_completion,  // done() inside send()
        async_completion,   // done() later, on the io_context
        never_completes,    // done() only when the test calls release_held() (or at destruction)
    };

    /// The outcome of one attempt; the default succeeds.
    using Behaviour = std::function<Result<SentMessage>(const OutboundMessage& message, int attempt)>;

    explicit FakeConnector(Mode mode, boost::asio::io_context* io = nullptr,
                           std::chrono::microseconds delay = std::chrono::microseconds(0))
        : mode_(mode), io_(io), delay_(delay) {}

    ~FakeConnector() override {
        // What never completed fails now, as a stopping connector's sends do.
        for (auto& held : take_held()) held.done(fail_retryable("connection_closed", "the fake connector stopped"));
    }

    void set_behaviour(Behaviour behaviour) {
        std::lock_guard lock(mutex_);
        behaviour_ = std::move(behaviour);
    }
    void set_can_delete(bool can_delete) { can_delete_ = can_delete; }

    ConnectorCapabilities capabilities() const override {
        ConnectorCapabilities caps;
        caps.can_delete = can_delete_;
        return caps;
    }
    void start(ConnectorHost&) override {}
    void stop() override {}

    void send(const OutboundMessage& message, SendCallback done) override {
        char marker = 0;
        lowest_stack_.store(std::min(lowest_stack_.load(), reinterpret_cast<std::uintptr_t>(&marker)));
        Result<SentMessage> result = SentMessage{};
        {
            std::lock_guard lock(mutex_);
            const int attempt = ++attempts_[message.idempotency_key];
            sends_.push_back(SendRecord{message.to, message.text, message.idempotency_key, attempt, SteadyClock::now(),
                                        ++sequence_});
            max_in_flight_ = std::max(max_in_flight_, ++in_flight_);
            if (behaviour_) {
                result = behaviour_(message, attempt);
            } else {
                result = SentMessage{"id-" + std::to_string(sends_.size())};
            }
        }
        switch (mode_) {
            case Mode::inline_completion:
                complete(std::move(done), std::move(result), message.idempotency_key);
                break;
            case Mode::async_completion: {
                auto timer = std::make_shared<boost::asio::steady_timer>(*io_, delay_);
                timer->async_wait([this, timer, done = std::move(done), result = std::move(result),
                                   key = message.idempotency_key](const boost::system::error_code&) mutable {
                    complete(std::move(done), std::move(result), key);
                });
                break;
            }
            case Mode::never_completes: {
                std::lock_guard lock(mutex_);
                held_.push_back(Held{std::move(done), std::move(result), message.idempotency_key});
                break;
            }
        }
    }

    void remove(const Address& where, const std::string& message_id, RemoveCallback done) override {
        {
            std::lock_guard lock(mutex_);
            removed_.push_back(where.to_string() + "#" + message_id);
        }
        if (!can_delete_) {
            done(fail("unsupported", "this fake cannot delete"));
            return;
        }
        done(Result<void>());
    }

    /// Completes every held send with its scripted outcome.
    void release_held() {
        for (auto& held : take_held()) complete(std::move(held.done), std::move(held.result), held.key);
    }

    [[nodiscard]] std::vector<SendRecord> sends() const {
        std::lock_guard lock(mutex_);
        return sends_;
    }
    [[nodiscard]] std::size_t send_count() const {
        std::lock_guard lock(mutex_);
        return sends_.size();
    }
    [[nodiscard]] std::size_t held_count() const {
        std::lock_guard lock(mutex_);
        return held_.size();
    }
    [[nodiscard]] int max_in_flight() const {
        std::lock_guard lock(mutex_);
        return max_in_flight_;
    }
    [[nodiscard]] std::vector<std::string> removed() const {
        std::lock_guard lock(mutex_);
        return removed_;
    }
    /// Sequence number of each completion, by idempotency key (the last one for retried keys).
    [[nodiscard]] std::map<std::string, std::uint64_t> completions() const {
        std::lock_guard lock(mutex_);
        return completed_;
    }
    /// The lowest stack address any send() ran at (for recursion-depth checks).
    [[nodiscard]] std::uintptr_t lowest_stack() const { return lowest_stack_.load(); }

private:
    struct Held {
        SendCallback done;
        Result<SentMessage> result;
        std::string key;
    };

    std::vector<Held> take_held() {
        std::lock_guard lock(mutex_);
        std::vector<Held> held;
        held.swap(held_);
        return held;
    }

    void complete(SendCallback done, Result<SentMessage> result, const std::string& key) {
        {
            std::lock_guard lock(mutex_);
            --in_flight_;
            completed_[key] = ++sequence_;
        }
        done(std::move(result));
    }

    const Mode mode_;
    boost::asio::io_context* io_;
    const std::chrono::microseconds delay_;
    std::atomic<bool> can_delete_{false};
    std::atomic<std::uintptr_t> lowest_stack_{UINTPTR_MAX};

    mutable std::mutex mutex_;
    Behaviour behaviour_;
    std::map<std::string, int> attempts_;
    std::vector<SendRecord> sends_;
    std::vector<Held> held_;
    std::vector<std::string> removed_;
    std::map<std::string, std::uint64_t> completed_;
    std::uint64_t sequence_ = 0;
    int in_flight_ = 0;
    int max_in_flight_ = 0;
};

/// Completes inside send(), successfully.
class SinkConnector final : public FakeConnector {
public:
    SinkConnector() : FakeConnector(Mode::inline_completion) {}
};

/// Completes on the io_context after @p delay.
class AsyncConnector final : public FakeConnector {
public:
    AsyncConnector(boost::asio::io_context& io, std::chrono::microseconds delay)
        : FakeConnector(Mode::async_completion, &io, delay) {}
};

/// Fails for good (code @p code) for the addresses in @p failing, delivers to the others. Inline.
class FailingConnector final : public FakeConnector {
public:
    explicit FailingConnector(std::set<std::string> failing, std::string code = "forbidden")
        : FakeConnector(Mode::inline_completion) {
        set_failing(std::move(failing), std::move(code));
    }
    void set_failing(std::set<std::string> failing, std::string code = "forbidden") {
        set_behaviour([failing = std::move(failing), code = std::move(code), n = 0](
                          const OutboundMessage& message, int) mutable -> Result<SentMessage> {
            if (failing.count(message.to.to_string()) != 0) {
                return fail(code, "the fake refuses " + message.to.to_string());
            }
            return SentMessage{"ok-" + std::to_string(++n)};
        });
    }
};

/// Answers retryable `rate_limited` with @p retry_after_ms to the first @p failures attempts of every recipient, then
/// delivers. Inline.
class FlakyConnector final : public FakeConnector {
public:
    FlakyConnector(int failures, std::int64_t retry_after_ms) : FakeConnector(Mode::inline_completion) {
        set_behaviour([failures, retry_after_ms](const OutboundMessage& message, int attempt) -> Result<SentMessage> {
            if (attempt <= failures) {
                return fail_retryable("rate_limited", "the fake is rate limited", retry_after_ms);
            }
            return SentMessage{"late-" + message.to.target};
        });
    }
};

/// Never completes by itself (the test releases it).
class SilentConnector final : public FakeConnector {
public:
    SilentConnector() : FakeConnector(Mode::never_completes) {}
};

/// Supports remove(), and fails for good for the addresses in @p failing. Inline.
class DeletingConnector final : public FakeConnector {
public:
    explicit DeletingConnector(std::set<std::string> failing = {}) : FakeConnector(Mode::inline_completion) {
        set_can_delete(true);
        set_behaviour(
            [failing = std::move(failing), n = 0](const OutboundMessage& message, int) mutable -> Result<SentMessage> {
                if (failing.count(message.to.to_string()) != 0) return fail("forbidden", "the fake refuses");
                return SentMessage{"del-" + std::to_string(++n)};
            });
    }
};

/// A directory where everything is reachable unless the test says otherwise.
class FakeDirectory final : public Directory {
public:
    void set_unreachable(const Address& address, bool unreachable = true) {
        std::lock_guard lock(mutex_);
        if (unreachable) {
            unreachable_.insert(address.to_string());
        } else {
            unreachable_.erase(address.to_string());
        }
    }
    std::optional<DirectoryChannel> channel(const std::string&) const override { return std::nullopt; }
    std::optional<Address> user(const std::string&) const override { return std::nullopt; }
    std::shared_ptr<const DirectoryGroup> group(const std::string&) const override { return nullptr; }
    std::vector<DirectoryChannel> channels() const override { return {}; }
    bool reachable(const Address& address) const override {
        std::lock_guard lock(mutex_);
        return unreachable_.empty() || unreachable_.count(address.to_string()) == 0;
    }

private:
    mutable std::mutex mutex_;
    std::set<std::string> unreachable_;
};

/// Keeps every line.
class CapturingLogger final : public Logger {
public:
    void log(LogLevel, std::string_view text, const LogFields&) noexcept override {
        std::lock_guard lock(mutex_);
        lines_.emplace_back(text);
    }
    [[nodiscard]] std::vector<std::string> lines() const {
        std::lock_guard lock(mutex_);
        return lines_;
    }
    [[nodiscard]] std::size_t count_containing(const std::string& needle) const {
        std::lock_guard lock(mutex_);
        return static_cast<std::size_t>(std::count_if(lines_.begin(), lines_.end(), [&](const std::string& line) {
            return line.find(needle) != std::string::npos;
        }));
    }

private:
    mutable std::mutex mutex_;
    std::vector<std::string> lines_;
};

/// The memory store, noting the thread of every outbox call and the size of every outbox_update call;
/// outbox_add fails while `fail_outbox_add` is set, the next `fail_updates` outbox_update calls fail (retryable, as
/// a store that went away), and `on_update` (set before use) sees every update call first.
class ThreadNotingStore final : public Store {
public:
    std::atomic<bool> fail_outbox_add{false};
    std::atomic<int> fail_updates{0};
    std::function<void(std::span<const OutboxEntry>)> on_update;
    std::function<void()> on_add;  // sees every outbox_add call first (Store::outbox_add_plan calls it)
    [[nodiscard]] std::set<std::thread::id> threads() const {
        std::lock_guard lock(mutex_);
        return threads_;
    }
    /// Entries per outbox_update call, in call order.
    [[nodiscard]] std::vector<std::size_t> update_sizes() const {
        std::lock_guard lock(mutex_);
        return update_sizes_;
    }
    Result<bool> is_processed(const MessageKey& key) override { return inner_.is_processed(key); }
    Result<void> commit(std::span<const ProcessedMessage> batch) override { return inner_.commit(batch); }
    Result<std::optional<Cursor>> cursor(const std::string& c, const std::string& ch) override {
        return inner_.cursor(c, ch);
    }
    Result<std::vector<ChannelCursor>> cursors(const std::string& c) override { return inner_.cursors(c); }
    Result<void> put_connection_state(const std::string& c, const std::string& k, const std::string& v) override {
        return inner_.put_connection_state(c, k, v);
    }
    Result<std::optional<std::string>> connection_state(const std::string& c, const std::string& k) override {
        return inner_.connection_state(c, k);
    }
    Result<std::optional<std::string>> get_value(const std::string& s, const std::string& k) override {
        return inner_.get_value(s, k);
    }
    Result<void> put_values(std::span<const KeyValueWrite> w) override { return inner_.put_values(w); }
    Result<void> outbox_add(std::span<const OutboxEntry> e) override {
        note();
        if (on_add) on_add();
        if (fail_outbox_add) return fail_retryable("store_busy", "injected failure");
        return inner_.outbox_add(e);
    }
    Result<void> outbox_update(std::span<const OutboxEntry> e) override {
        note();
        {
            std::lock_guard lock(mutex_);
            update_sizes_.push_back(e.size());
        }
        if (on_update) on_update(e);
        if (fail_updates > 0) {
            --fail_updates;
            return fail_retryable("store_unavailable", "injected failure");
        }
        return inner_.outbox_update(e);
    }
    Result<std::vector<OutboxEntry>> outbox_pending() override { return inner_.outbox_pending(); }
    Result<std::vector<OutboxEntry>> outbox_plan(const std::string& p) override {
        note();
        return inner_.outbox_plan(p);
    }
    Result<std::vector<Message>> messages(const std::string& c, const std::string& ch, std::int64_t from,
                                          std::int64_t to, std::size_t limit) override {
        return inner_.messages(c, ch, from, to, limit);
    }
    Result<std::size_t> prune(std::int64_t before) override { return inner_.prune(before); }

private:
    void note() {
        std::lock_guard lock(mutex_);
        threads_.insert(std::this_thread::get_id());
    }
    stores::MemoryStore inner_;
    mutable std::mutex mutex_;
    std::set<std::thread::id> threads_;
    std::vector<std::size_t> update_sizes_;
};

/// Collects reports; wait() blocks until one arrives or the timeout passes.
class ReportSink {
public:
    ReportCallback callback() {
        return [state = state_](DeliveryReport report) {
            std::lock_guard lock(state->mutex);
            state->reports.push_back(std::move(report));
            state->arrived_ms.push_back(std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count());
            state->cv.notify_all();
        };
    }
    /// The first report, waiting up to @p timeout for it.
    std::optional<DeliveryReport> wait(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        std::unique_lock lock(state_->mutex);
        if (!state_->cv.wait_for(lock, timeout, [&] { return !state_->reports.empty(); })) return std::nullopt;
        return state_->reports.front();
    }
    [[nodiscard]] std::size_t calls() const {
        std::lock_guard lock(state_->mutex);
        return state_->reports.size();
    }
    /// When the first report arrived, ms since the Unix epoch.
    [[nodiscard]] std::int64_t arrived_ms() const {
        std::lock_guard lock(state_->mutex);
        return state_->arrived_ms.empty() ? 0 : state_->arrived_ms.front();
    }

private:
    struct State {
        std::mutex mutex;
        std::condition_variable cv;
        std::vector<DeliveryReport> reports;
        std::vector<std::int64_t> arrived_ms;
    };
    std::shared_ptr<State> state_ = std::make_shared<State>();
};

}  // namespace switchboard::delivery_test
