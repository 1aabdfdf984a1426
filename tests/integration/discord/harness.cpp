#include "harness.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cstdlib>
#include <future>
#include <iostream>
#include <stdexcept>

namespace switchboard::discord::testing {
namespace {

namespace asio = boost::asio;

}  // namespace

Sandbox::Sandbox(std::vector<std::string> extra_args) : sandbox_(dir_.path(), std::move(extra_args)) {}

Sandbox::~Sandbox() = default;

json Sandbox::get(const std::string& path) const { return sandbox_.control("GET", path); }

json Sandbox::post(const std::string& path, const json& body) const { return sandbox_.control("POST", path, body); }

json Sandbox::sent(const std::string& channel_id) const {
    return get("/sent" + (channel_id.empty() ? std::string() : "?channel_id=" + channel_id));
}

void RecordingLogger::log(LogLevel level, std::string_view text, const LogFields&) noexcept {
    static constexpr const char* kNames[] = {"trace", "debug", "info", "warn", "error"};
    std::string line = std::string(kNames[static_cast<int>(level)]) + ": " + std::string(text);
    static const bool verbose = std::getenv("DISCORD_TEST_VERBOSE") != nullptr;  // to watch a test as it runs
    if (verbose) std::cerr << line << std::endl;
    std::lock_guard lock(mutex_);
    lines_.push_back(std::move(line));
}

bool RecordingLogger::contains(const std::string& text) const {
    std::lock_guard lock(mutex_);
    for (const auto& line : lines_) {
        if (line.find(text) != std::string::npos) return true;
    }
    return false;
}

std::string RecordingLogger::dump() const {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& line : lines_) out += line + "\n";
    return out;
}

void TestScheduler::define(const std::string& name, double rate_per_second, std::uint32_t burst) {
    std::lock_guard lock(mutex_);
    defined_[name] = {rate_per_second, burst};
}

void TestScheduler::acquire(RateRequest request, RateGrant grant) {
    {
        std::lock_guard lock(mutex_);
        requests_.emplace_back(request.route, request.priority);
    }
    grant_when_free(std::move(request), std::move(grant));
}

void TestScheduler::grant_when_free(RateRequest request, RateGrant grant) {
    const auto now = Clock::now();
    Clock::time_point until{};
    {
        std::lock_guard lock(mutex_);
        for (const std::string& key : {std::string(), request.route}) {
            if (auto it = held_.find(key); it != held_.end() && it->second > until) until = it->second;
        }
        if (until <= now) ++granted_;
    }
    if (until <= now) {
        asio::post(io_, [grant = std::move(grant)] { grant(Result<void>{}); });
        return;
    }
    auto timer = std::make_shared<asio::steady_timer>(io_, until);
    timer->async_wait([this, timer, request = std::move(request), grant = std::move(grant)](boost::system::error_code) mutable {
        grant_when_free(std::move(request), std::move(grant));
    });
}

void TestScheduler::observe(const std::string& route, const RateLimitInfo& info) {
    std::lock_guard lock(mutex_);
    ++observed_;
    ++observed_routes_[route];
    const auto now = Clock::now();
    if (info.limited) {
        ++limited_;
        held_[info.global ? std::string() : route] =
            now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(info.retry_after_s));
    } else if (info.remaining && *info.remaining == 0 && info.reset_after_s) {
        held_[route] = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*info.reset_after_s));
    }
}

RateLimitStats TestScheduler::stats() const {
    std::lock_guard lock(mutex_);
    RateLimitStats stats;
    stats.granted = granted_;
    stats.limited = limited_;
    return stats;
}

std::uint64_t TestScheduler::granted() const {
    std::lock_guard lock(mutex_);
    return granted_;
}

std::uint64_t TestScheduler::observed() const {
    std::lock_guard lock(mutex_);
    return observed_;
}

std::uint64_t TestScheduler::limited() const {
    std::lock_guard lock(mutex_);
    return limited_;
}

std::map<std::string, std::uint64_t> TestScheduler::routes_observed() const {
    std::lock_guard lock(mutex_);
    return observed_routes_;
}

std::map<std::string, std::pair<double, std::uint32_t>> TestScheduler::defined() const {
    std::lock_guard lock(mutex_);
    return defined_;
}

std::vector<RequestPriority> TestScheduler::priorities(const std::string& route_prefix) const {
    std::lock_guard lock(mutex_);
    std::vector<RequestPriority> out;
    for (const auto& [route, priority] : requests_) {
        if (route.rfind(route_prefix, 0) == 0) out.push_back(priority);
    }
    return out;
}

void RecordingHost::deliver(Message message) {
    std::lock_guard lock(mutex_);
    messages_.push_back(std::move(message));
    changed_.notify_all();
}

void RecordingHost::report(const ConnectionEvent& event) {
    std::lock_guard lock(mutex_);
    events_.push_back(event);
    changed_.notify_all();
}

std::optional<std::string> RecordingHost::load_state(const std::string& key) {
    std::lock_guard lock(mutex_);
    auto it = state_.find(key);
    if (it == state_.end()) return std::nullopt;
    return it->second;
}

Result<bool> RecordingHost::is_processed(const Message& message) {
    std::lock_guard lock(mutex_);
    for (const Message& m : messages_) {
        if (m.channel == message.channel && m.id == message.id) return true;
    }
    return false;
}

void RecordingHost::save_state(std::string key, std::string value) {
    std::lock_guard lock(mutex_);
    state_[std::move(key)] = std::move(value);
    changed_.notify_all();
}

bool RecordingHost::wait_for(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, condition);
}

bool RecordingHost::wait_for_event(ConnectionEvent::Type type, std::size_t count, std::chrono::milliseconds timeout) {
    return wait_for(
        [&] {
            std::size_t seen = 0;
            for (const auto& event : events_) seen += event.type == type ? 1 : 0;
            return seen >= count;
        },
        timeout);
}

bool RecordingHost::wait_for_messages(std::size_t count, std::chrono::milliseconds timeout) {
    return wait_for([&] { return messages_.size() >= count; }, timeout);
}

std::vector<Message> RecordingHost::messages() const {
    std::lock_guard lock(mutex_);
    return messages_;
}

std::vector<ConnectionEvent> RecordingHost::events() const {
    std::lock_guard lock(mutex_);
    return events_;
}

std::size_t RecordingHost::count(ConnectionEvent::Type type) const {
    std::lock_guard lock(mutex_);
    std::size_t seen = 0;
    for (const auto& event : events_) seen += event.type == type ? 1 : 0;
    return seen;
}

std::map<std::string, std::string> RecordingHost::state() const {
    std::lock_guard lock(mutex_);
    return state_;
}

void RecordingHost::set_state(const std::map<std::string, std::string>& state) {
    std::lock_guard lock(mutex_);
    state_ = state;
}

IoThreads::IoThreads() : guard_(asio::make_work_guard(io_)) {
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
}

IoThreads::~IoThreads() {
    guard_.reset();
    io_.stop();
    for (auto& thread : threads_) thread.join();
}

DiscordSettings sandbox_settings(const Sandbox& sandbox, std::string token) {
    DiscordSettings settings;
    settings.token = std::move(token);
    settings.api_base = sandbox.api_base();
    settings.intents = kIntentGuilds | kIntentGuildMessages | kIntentDirectMessages | kIntentMessageContent;
    settings.connect_timeout_ms = 3000;
    settings.request_timeout_ms = 5000;
    settings.reconnect_min_ms = 100;
    settings.reconnect_max_ms = 1000;
    return settings;
}

Result<SentMessage> send_once(DiscordConnector& connector, const OutboundMessage& message,
                              std::chrono::milliseconds timeout) {
    auto promise = std::make_shared<std::promise<Result<SentMessage>>>();
    auto future = promise->get_future();
    connector.send(message, [promise](Result<SentMessage> result) { promise->set_value(std::move(result)); });
    if (future.wait_for(timeout) != std::future_status::ready) return fail("test_timeout", "send did not complete");
    return future.get();
}

Result<SentMessage> send_like_engine(DiscordConnector& connector, RecordingHost& host, const OutboundMessage& message,
                                     std::chrono::milliseconds deadline) {
    const auto until = std::chrono::steady_clock::now() + deadline;
    for (;;) {
        auto granted = std::make_shared<std::promise<Result<void>>>();
        auto future = granted->get_future();
        host.rate_limits().acquire(RateRequest{send_route(message.to), {}, RequestPriority::live},
                                   [granted](Result<void> result) { granted->set_value(std::move(result)); });
        if (future.wait_until(until) != std::future_status::ready) return fail("test_timeout", "no grant in time");
        if (auto grant = future.get(); !grant) return grant.error();
        auto result = send_once(connector, message);
        if (result || !result.error().retryable || std::chrono::steady_clock::now() >= until) return result;
    }
}

Result<HistoryPage> fetch_history_once(DiscordConnector& connector, const HistoryRequest& request) {
    auto promise = std::make_shared<std::promise<Result<HistoryPage>>>();
    auto future = promise->get_future();
    connector.fetch_history(request, [promise](Result<HistoryPage> result) { promise->set_value(std::move(result)); });
    if (future.wait_for(20s) != std::future_status::ready) return fail("test_timeout", "history did not complete");
    return future.get();
}

Result<void> remove_once(DiscordConnector& connector, const Address& where, const std::string& id) {
    auto promise = std::make_shared<std::promise<Result<void>>>();
    auto future = promise->get_future();
    connector.remove(where, id, [promise](Result<void> result) { promise->set_value(std::move(result)); });
    if (future.wait_for(20s) != std::future_status::ready) return fail("test_timeout", "remove did not complete");
    return future.get();
}

}  // namespace switchboard::discord::testing
