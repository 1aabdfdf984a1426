#pragma once
// What the Discord connector's integration tests share: the real sandbox binary on a free port with a small HTTP
// client for its control API, a ConnectorHost that records everything, and a rate-limit scheduler that keeps the
// contract (grants, holds after a 429, learned empty buckets) in a few lines.

#include "discord_connector.hpp"
#include "discord_sandbox.hpp"
#include "test_support.hpp"

#include <switchboard/connector.hpp>
#include <switchboard/rate_limit.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace switchboard::discord::testing {

using nlohmann::json;
using namespace std::chrono_literals;

/// `switchboard-sandbox discord --port 0` as a child process, stopped when the object goes.
class Sandbox {
public:
    explicit Sandbox(std::vector<std::string> extra_args = {});
    ~Sandbox();
    Sandbox(const Sandbox&) = delete;
    Sandbox& operator=(const Sandbox&) = delete;

    [[nodiscard]] unsigned port() const { return static_cast<unsigned>(sandbox_.port()); }
    [[nodiscard]] std::string api_base() const { return sandbox_.api_base(); }
    /// GET or POST on the control API (path below /_sandbox); throws on a non-2xx answer.
    json get(const std::string& path) const;
    json post(const std::string& path, const json& body = json::object()) const;
    /// Messages the bot created (GET /_sandbox/sent).
    [[nodiscard]] json sent(const std::string& channel_id = {}) const;
    [[nodiscard]] json stats() const { return get("/stats?log=0"); }

private:
    testing_support::TempDir dir_;  // the sandbox's output files
    testing_support::DiscordSandbox sandbox_;
};

/// A logger that keeps every line.
class RecordingLogger final : public Logger {
public:
    void log(LogLevel level, std::string_view text, const LogFields& fields = {}) noexcept override;
    [[nodiscard]] bool contains(const std::string& text) const;
    [[nodiscard]] std::string dump() const;

private:
    mutable std::mutex mutex_;
    std::vector<std::string> lines_;
};

/// Grants at once unless a 429 holds the route (or, global, everything), or a learned bucket is empty.
class TestScheduler final : public RateLimitScheduler {
public:
    explicit TestScheduler(boost::asio::io_context& io) : io_(io) {}
    void define(const std::string& name, double rate_per_second, std::uint32_t burst) override;
    void acquire(RateRequest request, RateGrant grant) override;
    void observe(const std::string& route, const RateLimitInfo& info) override;
    [[nodiscard]] RateLimitStats stats() const override;

    [[nodiscard]] std::uint64_t granted() const;
    [[nodiscard]] std::uint64_t observed() const;
    [[nodiscard]] std::uint64_t limited() const;
    [[nodiscard]] std::map<std::string, std::uint64_t> routes_observed() const;
    [[nodiscard]] std::map<std::string, std::pair<double, std::uint32_t>> defined() const;
    [[nodiscard]] std::vector<RequestPriority> priorities(const std::string& route_prefix) const;

private:
    using Clock = std::chrono::steady_clock;
    void grant_when_free(RateRequest request, RateGrant grant);
    boost::asio::io_context& io_;
    mutable std::mutex mutex_;
    std::map<std::string, Clock::time_point> held_;  // route or "" (global) -> until
    std::map<std::string, std::pair<double, std::uint32_t>> defined_;
    std::map<std::string, std::uint64_t> observed_routes_;
    std::vector<std::pair<std::string, RequestPriority>> requests_;
    std::uint64_t granted_ = 0, observed_ = 0, limited_ = 0;
};

/// A ConnectorHost that records deliveries, events and saved state, and lets tests wait for them.
class RecordingHost final : public ConnectorHost {
public:
    explicit RecordingHost(boost::asio::io_context& io) : scheduler_(io) {}
    void deliver(Message message) override;
    void report(const ConnectionEvent& event) override;
    void report_members(const std::string&, std::vector<std::string>) override {}
    RateLimitScheduler& rate_limits() override { return scheduler_; }
    std::optional<std::string> load_state(const std::string& key) override;
    void save_state(std::string key, std::string value) override;
    /// What it recorded counts as handled.
    Result<bool> is_processed(const Message& message) override;

    /// Waits until @p condition (evaluated under the lock) holds; false after @p timeout.
    bool wait_for(const std::function<bool()>& condition, std::chrono::milliseconds timeout = 15s);
    bool wait_for_event(ConnectionEvent::Type type, std::size_t count = 1, std::chrono::milliseconds timeout = 15s);
    bool wait_for_messages(std::size_t count, std::chrono::milliseconds timeout = 15s);

    [[nodiscard]] std::vector<Message> messages() const;
    [[nodiscard]] std::vector<ConnectionEvent> events() const;
    [[nodiscard]] std::size_t count(ConnectionEvent::Type type) const;
    [[nodiscard]] std::map<std::string, std::string> state() const;
    /// Seeds the saved state, as an earlier run would have left it.
    void set_state(const std::map<std::string, std::string>& state);
    TestScheduler& scheduler() { return scheduler_; }

private:
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<Message> messages_;
    std::vector<ConnectionEvent> events_;
    std::map<std::string, std::string> state_;
    TestScheduler scheduler_;
};

/// An io_context run by two threads for the test's lifetime.
class IoThreads {
public:
    IoThreads();
    ~IoThreads();
    boost::asio::io_context& io() { return io_; }

private:
    boost::asio::io_context io_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
    std::vector<std::thread> threads_;
};

/// Settings for a connector against @p sandbox, with fast reconnects.
DiscordSettings sandbox_settings(const Sandbox& sandbox, std::string token = "sandbox-token");

/// Calls connector.send() and waits for its callback.
Result<SentMessage> send_once(DiscordConnector& connector, const OutboundMessage& message,
                              std::chrono::milliseconds timeout = 20s);

/// What the delivery engine does for one send: acquire the send route, send, and retry what is retryable (the
/// scheduler holds the route after a 429) until @p deadline.
Result<SentMessage> send_like_engine(DiscordConnector& connector, RecordingHost& host, const OutboundMessage& message,
                                     std::chrono::milliseconds deadline = 30s);

Result<HistoryPage> fetch_history_once(DiscordConnector& connector, const HistoryRequest& request);
Result<void> remove_once(DiscordConnector& connector, const Address& where, const std::string& id);

}  // namespace switchboard::discord::testing
