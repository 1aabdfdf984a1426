#pragma once
// Fakes for recovery policy tests: a serial "lane" like the host's per-connection strand, a Discord-like connector
// that serves history pages from memory (newest-first as Discord sends them, then reordered oldest-first as the
// real connector does, with page limits, held answers and injected errors), and a RecoveryContext that records what
// the policy fed and reported and checks that it only read the store and fed from the lane.

#include "discord_backfill.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace switchboard::recovery_test {

using namespace std::chrono_literals;
constexpr auto kDeadline = 10s;

struct NullLogger final : Logger {
    void log(LogLevel, std::string_view, const LogFields&) noexcept override {}
};

/// Runs tasks one at a time, in order, on its own thread: the connection's lane.
class Lane {
public:
    Lane() : thread_([this] { loop(); }) {}
    ~Lane() { stop(); }
    Lane(const Lane&) = delete;
    Lane& operator=(const Lane&) = delete;

    void post(std::function<void()> task) {
        std::lock_guard lock(mutex_);
        if (stopped_) return;
        queue_.push_back(std::move(task));
        changed_.notify_all();
    }
    /// Waits until no task is queued or running; false if the deadline passed first.
    bool wait_idle() {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, kDeadline, [this] { return queue_.empty() && !running_; });
    }
    void stop() {
        {
            std::lock_guard lock(mutex_);
            if (stopped_) return;
            stopped_ = true;
            changed_.notify_all();
        }
        thread_.join();
    }
    [[nodiscard]] bool on_lane() const { return std::this_thread::get_id() == thread_.get_id(); }

private:
    void loop() {
        std::unique_lock lock(mutex_);
        for (;;) {
            changed_.wait(lock, [this] { return stopped_ || !queue_.empty(); });
            if (stopped_) return;
            auto task = std::move(queue_.front());
            queue_.pop_front();
            running_ = true;
            lock.unlock();
            task();
            lock.lock();
            running_ = false;
            changed_.notify_all();
        }
    }

    std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<std::function<void()>> queue_;
    bool running_ = false;
    bool stopped_ = false;
    std::thread thread_;
};

/// The "I/O threads": one io_context run by one thread; the fake connector answers there, retry timers fire there.
class IoThread {
public:
    IoThread() : guard_(boost::asio::make_work_guard(io)), thread_([this] { io.run(); }) {}
    ~IoThread() { stop(); }
    IoThread(const IoThread&) = delete;
    IoThread& operator=(const IoThread&) = delete;
    void stop() {
        if (!thread_.joinable()) return;
        guard_.reset();
        io.stop();
        thread_.join();
    }
    boost::asio::io_context io;

private:
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
    std::thread thread_;
};

/// A message of @p channel with snowflake @p id (its timestamp derived from the id).
inline Message discord_message(const std::string& channel, std::uint64_t id, const std::string& text = {}) {
    Message message;
    message.id = std::to_string(id);
    message.channel = channel;
    message.author = Author{"42", "alice", false};
    message.text = text.empty() ? "message " + message.id : text;
    message.timestamp_ms = recovery::snowflake_time_ms(id);
    return message;
}

/// A Discord-like connector serving channel history from memory.
class FakeDiscord final : public Connector {
public:
    explicit FakeDiscord(boost::asio::io_context& io) : io_(io) {}

    struct Request {
        HistoryRequest request;
        std::chrono::steady_clock::time_point at;
    };

    /// Adds @p count messages to @p channel, one per second from @p first_ms, returning their ids.
    std::vector<std::uint64_t> add_history(const std::string& channel, std::int64_t first_ms, std::size_t count) {
        std::lock_guard lock(mutex_);
        std::vector<std::uint64_t> ids;
        auto& history = histories_[channel];
        for (std::size_t i = 0; i < count; ++i) {
            const std::uint64_t id = recovery::snowflake_at(first_ms + static_cast<std::int64_t>(i) * 1000) + 7;
            history.push_back(discord_message(channel, id));
            ids.push_back(id);
        }
        std::sort(history.begin(), history.end(),
                  [](const Message& a, const Message& b) { return std::stoull(a.id) < std::stoull(b.id); });
        return ids;
    }
    /// The next requests for @p channel fail with @p error, one each.
    void inject(const std::string& channel, Error error) {
        std::lock_guard lock(mutex_);
        faults_[channel].push_back(std::move(error));
    }
    /// The next request for @p channel gets @p page, whatever it asked.
    void inject(const std::string& channel, HistoryPage page) {
        std::lock_guard lock(mutex_);
        faults_[channel].push_back(std::move(page));
    }
    /// While holding, answers wait for release().
    void hold(bool on) {
        std::lock_guard lock(mutex_);
        holding_ = on;
    }
    /// Sends every held answer (on the I/O thread); returns how many.
    std::size_t release() {
        std::vector<std::function<void()>> held;
        {
            std::lock_guard lock(mutex_);
            held.swap(held_);
        }
        for (auto& answer : held) boost::asio::post(io_, std::move(answer));
        return held.size();
    }
    /// Pages come back with their messages repeated and shuffled (what #2816 and overlapping pages look like).
    void scramble(bool on) {
        std::lock_guard lock(mutex_);
        scramble_ = on;
    }

    [[nodiscard]] std::vector<Request> requests() const {
        std::lock_guard lock(mutex_);
        return requests_;
    }
    [[nodiscard]] std::size_t held() const {
        std::lock_guard lock(mutex_);
        return held_.size();
    }
    /// Waits until @p n answers were handed to their callbacks; false at the deadline.
    bool wait_answered(std::size_t n) {
        std::unique_lock lock(mutex_);
        return answered_changed_.wait_for(lock, kDeadline, [&] { return answered_ >= n; });
    }
    [[nodiscard]] std::size_t max_in_flight() const {
        std::lock_guard lock(mutex_);
        return max_in_flight_;
    }

    ConnectorCapabilities capabilities() const override {
        ConnectorCapabilities capabilities;
        capabilities.history = true;
        return capabilities;
    }
    void start(ConnectorHost&) override {}
    void stop() override {}
    void send(const OutboundMessage&, SendCallback done) override { done(fail("unsupported", "fake")); }

    void fetch_history(const HistoryRequest& request, HistoryCallback done) override {
        std::lock_guard lock(mutex_);
        requests_.push_back(Request{request, std::chrono::steady_clock::now()});
        max_in_flight_ = std::max(max_in_flight_, ++in_flight_);
        auto answer = [this, done = std::move(done), page = serve(request)]() mutable {
            {
                std::lock_guard lock(mutex_);
                --in_flight_;
            }
            done(std::move(page));
            std::lock_guard lock(mutex_);
            ++answered_;
            answered_changed_.notify_all();
        };
        if (holding_) {
            held_.push_back(std::move(answer));
        } else {
            boost::asio::post(io_, std::move(answer));
        }
    }

private:
    // Called with the mutex held. GET /channels/{id}/messages?after=X&limit=N answers the N messages closest after
    // X, newest first; the connector reverses that to oldest first and says `complete` when fewer than N came.
    Result<HistoryPage> serve(const HistoryRequest& request) {
        if (auto& faults = faults_[request.channel]; !faults.empty()) {
            Result<HistoryPage> injected = std::move(faults.front());
            faults.pop_front();
            return injected;
        }
        const auto& history = histories_[request.channel];
        std::vector<Message> after;
        for (const Message& message : history) {
            if (!request.after_message_id || std::stoull(message.id) > std::stoull(*request.after_message_id)) {
                after.push_back(message);
            }
        }
        if (after.size() > request.limit) {
            if (request.after_message_id) {
                after.resize(request.limit);
            } else {
                after.erase(after.begin(), after.end() - request.limit);
            }
        }
        std::vector<Message> newest_first(after.rbegin(), after.rend());  // what Discord sends
        HistoryPage page;
        page.complete = newest_first.size() < request.limit;
        page.messages.assign(newest_first.rbegin(), newest_first.rend());  // what the connector hands on
        for (Message& message : page.messages) message.recovered = true;
        if (scramble_ && !page.messages.empty()) {
            page.messages.push_back(page.messages.front());
            std::reverse(page.messages.begin(), page.messages.end());
        }
        return page;
    }

    boost::asio::io_context& io_;
    mutable std::mutex mutex_;
    std::condition_variable answered_changed_;
    std::map<std::string, std::vector<Message>> histories_;
    std::map<std::string, std::deque<Result<HistoryPage>>> faults_;  // injected answers, first
    std::vector<Request> requests_;
    std::vector<std::function<void()>> held_;
    bool holding_ = false;
    bool scramble_ = false;
    std::size_t in_flight_ = 0;
    std::size_t max_in_flight_ = 0;
    std::size_t answered_ = 0;
};

/// The host's side: cursors and the dedup set of a store, the pipeline's feed (which here processes at once:
/// a fed message counts as processed), and the reports.
class FakeContext final : public RecoveryContext {
public:
    FakeContext(Connector& connector, Lane& lane, std::vector<std::string> channels)
        : connector_(connector), lane_(lane), channels_(std::move(channels)) {}

    void set_cursor(const std::string& channel, std::uint64_t id) {
        std::lock_guard lock(mutex_);
        cursors_[channel] = Cursor{std::to_string(id), recovery::snowflake_time_ms(id)};
    }
    void mark_processed(const std::string& channel, std::uint64_t id) {
        std::lock_guard lock(mutex_);
        processed_.insert({channel, std::to_string(id)});
    }

    /// Runs policy.on_event on the lane, as the host does.
    void event(RecoveryPolicy& policy, ConnectionEvent::Type type, std::string detail = {}) {
        lane_.post([this, &policy, type, detail] { policy.on_event(ConnectionEvent{type, detail}, *this); });
    }

    /// Waits until @p condition (called with the recorded state locked) holds; false at the deadline.
    bool wait(const std::function<bool()>& condition) {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, kDeadline, condition);
    }

    [[nodiscard]] std::vector<std::string> fed_ids(const std::string& channel) const {
        std::lock_guard lock(mutex_);
        std::vector<std::string> ids;
        for (const Message& message : fed_) {
            if (message.channel == channel) ids.push_back(message.id);
        }
        return ids;
    }
    [[nodiscard]] std::vector<Message> fed() const {
        std::lock_guard lock(mutex_);
        return fed_;
    }
    /// Channels held now (hold() without release() yet).
    [[nodiscard]] std::set<std::string> held() const {
        std::lock_guard lock(mutex_);
        return held_;
    }
    /// Whether a hold was released before every feed of its channel was made (must stay false).
    [[nodiscard]] bool fed_while_released() const {
        std::lock_guard lock(mutex_);
        return fed_while_released_;
    }

    [[nodiscard]] std::vector<RecoveryReport> reports() const {
        std::lock_guard lock(mutex_);
        return reports_;
    }
    [[nodiscard]] std::optional<RecoveryReport> report(const std::string& channel) const {
        std::lock_guard lock(mutex_);
        std::optional<RecoveryReport> found;
        for (const RecoveryReport& r : reports_) {
            if (r.channel == channel) found = r;
        }
        return found;
    }
    /// Unlocked accessors for use inside wait() conditions.
    [[nodiscard]] std::size_t reports_locked() const { return reports_.size(); }
    [[nodiscard]] std::size_t fed_locked() const { return fed_.size(); }
    /// True if the policy read the store, fed or reported from a thread other than the lane.
    [[nodiscard]] bool off_lane() const {
        std::lock_guard lock(mutex_);
        return off_lane_;
    }

    // RecoveryContext
    const std::string& connection() const override { return name_; }
    std::vector<std::string> channels() const override { return channels_; }
    std::optional<Cursor> cursor(const std::string& channel) override {
        std::lock_guard lock(mutex_);
        note_thread();
        auto it = cursors_.find(channel);
        if (it == cursors_.end()) return std::nullopt;
        return it->second;
    }
    Connector& connector() override { return connector_; }
    Result<bool> is_processed(const Message& message) override {
        std::lock_guard lock(mutex_);
        note_thread();
        return processed_.count({message.channel, message.id}) > 0;
    }
    void post(std::function<void()> task) override { lane_.post(std::move(task)); }
    void hold(const std::string& channel) override {
        std::lock_guard lock(mutex_);
        note_thread();
        held_.insert(channel);
    }
    void release(const std::string& channel) override {
        std::lock_guard lock(mutex_);
        note_thread();
        held_.erase(channel);
    }
    void feed(Message message) override {
        std::lock_guard lock(mutex_);
        note_thread();
        if (held_.count(message.channel) == 0) fed_while_released_ = true;
        processed_.insert({message.channel, message.id});
        fed_.push_back(std::move(message));
        changed_.notify_all();
    }
    void finish(const RecoveryReport& report) override {
        std::lock_guard lock(mutex_);
        note_thread();
        reports_.push_back(report);
        changed_.notify_all();
    }

private:
    void note_thread() {
        if (!lane_.on_lane()) off_lane_ = true;
    }

    Connector& connector_;
    Lane& lane_;
    std::string name_ = "discord-main";
    std::vector<std::string> channels_;
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::map<std::string, Cursor> cursors_;
    std::set<std::pair<std::string, std::string>> processed_;
    std::vector<Message> fed_;
    std::vector<RecoveryReport> reports_;
    std::set<std::string> held_;
    bool fed_while_released_ = false;
    bool off_lane_ = false;
};

}  // namespace switchboard::recovery_test
