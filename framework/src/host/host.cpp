#include "host/host.hpp"

#include "admin/admin_server.hpp"
#include "admin/metrics.hpp"
#include "host/leases.hpp"
#include "host/pipeline.hpp"
#include "host/reload.hpp"
#include "host/work_sharing.hpp"
#include "ratelimit/scheduler.hpp"
#include "routing/delivery_engine.hpp"
#include "routing/directory.hpp"
#include "routing/router.hpp"

#include <switchboard/recovery.hpp>
#include <switchboard/version.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

namespace switchboard::host {

ConnectionState::ConnectionState(std::string connection, Store& store, Executor executor, Logger& logger)
    : connection_(std::move(connection)), store_(store), executor_(std::move(executor)), logger_(logger) {}

std::optional<std::string> ConnectionState::load(const std::string& key) {
    {
        std::lock_guard lock(mutex_);
        for (auto it = waiting_.rbegin(); it != waiting_.rend(); ++it) {
            if (it->first == key) return it->second;
        }
        if (writing_ && writing_->first == key) return writing_->second;
    }
    auto value = store_.connection_state(connection_, key);
    if (!value) {
        logger_.warn("could not read saved state '" + key + "' (" + value.error().to_string() +
                         "); the connector goes on without it",
                     LogFields{connection_, {}, {}});
        return std::nullopt;
    }
    return std::move(*value);
}

void ConnectionState::save(std::string key, std::string value) {
    std::lock_guard lock(mutex_);
    const auto stale = std::find_if(waiting_.begin(), waiting_.end(), [&](const auto& w) { return w.first == key; });
    if (stale != waiting_.end()) waiting_.erase(stale);
    waiting_.emplace_back(std::move(key), std::move(value));
    if (writer_) return;  // the running writer takes it
    writer_ = true;
    executor_([this] { write(); });
}

bool ConnectionState::wait_written(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return written_.wait_for(lock, timeout, [this] { return !writer_; });
}

void ConnectionState::write() {
    std::unique_lock lock(mutex_);
    while (!waiting_.empty()) {
        writing_ = std::move(waiting_.front());
        waiting_.pop_front();
        lock.unlock();
        auto written = store_.put_connection_state(connection_, writing_->first, writing_->second);
        if (!written) {
            logger_.warn("could not save state '" + writing_->first + "' (" + written.error().to_string() +
                             "); a restart may not resume where this run was",
                         LogFields{connection_, {}, {}});
        }
        lock.lock();
    }
    writing_.reset();
    writer_ = false;
    written_.notify_all();
}

namespace {

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

nlohmann::json report_json(const DeliveryReport& report) {
    nlohmann::json recipients = nlohmann::json::array();
    for (const RecipientOutcome& r : report.recipients) {
        nlohmann::json one{{"name", r.name}, {"address", r.address.to_string()}, {"delivered", r.delivered}};
        if (!r.error_code.empty()) one["error_code"] = r.error_code;
        if (!r.message_id.empty()) one["message_id"] = r.message_id;
        recipients.push_back(std::move(one));
    }
    nlohmann::json out{{"status", to_string(report.status)}, {"detail", report.detail}, {"recipients", recipients}};
    if (!report.error_code.empty()) out["error_code"] = report.error_code;
    if (report.retry_after_ms > 0) out["retry_after_ms"] = report.retry_after_ms;
    return out;
}

/// One configured connection while it runs: the connector's host, and its recovery policy's context.
class Connection final : public ConnectorHost, public RecoveryContext {
public:
    /// @p store_executor runs save_state() writes off the I/O threads (the host's worker pool).
    Connection(std::string name, std::string plugin, std::vector<std::string> channels, Logger& logger,
               routing::ConfigDirectory& directory, std::shared_ptr<ratelimit::Scheduler> rate_limits,
               routing::StoreExecutor store_executor, admin::Metrics& metrics)
        : name_(std::move(name)),
          plugin_(std::move(plugin)),
          channels_(std::move(channels)),
          logger_(logger),
          directory_(directory),
          rate_limits_(std::move(rate_limits)),
          store_executor_(std::move(store_executor)),
          metrics_(metrics),
          since_ms_(now_ms()) {}

    /// @p on_up runs on the connection's pipeline lane each time it reports connected or resumed, after the
    /// directory knows.
    void bind(std::shared_ptr<Connector> connector, std::shared_ptr<RecoveryPolicy> policy, Pipeline& pipeline,
              Store& store, std::function<void()> on_finished, std::function<void()> on_up) {
        connector_ = std::move(connector);
        policy_ = std::move(policy);
        pipeline_ = &pipeline;
        store_ = &store;
        on_finished_ = std::move(on_finished);
        on_up_ = std::move(on_up);
        state_.emplace(name_, store, store_executor_, logger_);
    }

    /// Work sharing: this connection's messages go to the shared queue (whichever host takes them handles them),
    /// and while another host holds the lease it counts as reachable (sends go through that host).
    void share(WorkSharing& sharing) { sharing_ = &sharing; }

    // ConnectorHost
    void deliver(Message message) override {
        message.connection = name_;
        if (sharing_ != nullptr) {
            sharing_->publish(message);
        } else {
            pipeline_->submit(std::move(message));
        }
    }

    void report(const ConnectionEvent& event) override {
        if (standing_down_) {
            // The lease was lost and the connector is being stopped: its last events change nothing here.
            logger_.info(std::string("(standing down) ") + std::string(to_string(event.type)) +
                             (event.detail.empty() ? "" : ": " + event.detail),
                         LogFields{name_, {}, {}});
            return;
        }
        metrics_.connection_event(name_, event.type);
        {
            std::lock_guard lock(status_mutex_);
            const std::int64_t now = now_ms();
            if (link_state_ != to_string(event.type)) since_ms_ = now;
            link_state_ = to_string(event.type);
            link_detail_ = event.detail;
            last_event_ms_ = now;
        }
        logger_.info(std::string(to_string(event.type)) +
                         (event.detail.empty() ? "" : ": " + event.detail),
                     LogFields{name_, {}, {}});
        // The event takes effect on the connection's lane, after every message delivered before it: replies to
        // those still see the connection as it was. The policy runs there too, off the I/O threads (it reads
        // cursors from the store).
        pipeline_->post(name_, [this, event] {
            const bool up =
                event.type == ConnectionEvent::Type::connected || event.type == ConnectionEvent::Type::resumed;
            directory_.set_connection(name_, up, connector_ptr()->capabilities());
            if (up) on_up_();
            if (policy_) policy_->on_event(event, *this);
        });
        if (event.type == ConnectionEvent::Type::finished) on_finished_();
    }

    void report_members(const std::string& channel, std::vector<std::string> user_ids) override {
        directory_.set_members(name_, channel, std::move(user_ids));
    }

    RateLimitScheduler& rate_limits() override { return *rate_limits_; }

    std::optional<std::string> load_state(const std::string& key) override { return state_->load(key); }

    void save_state(std::string key, std::string value) override { state_->save(std::move(key), std::move(value)); }

    /// Waits (up to @p timeout) until every save_state() so far is written.
    bool wait_saves(std::chrono::milliseconds timeout) { return !state_ || state_->wait_written(timeout); }

    /// This connection's scheduler (shared with the delivery engine).
    const std::shared_ptr<ratelimit::Scheduler>& scheduler() const { return rate_limits_; }

    // RecoveryContext
    const std::string& connection() const override { return name_; }
    std::vector<std::string> channels() const override { return channels_; }
    std::optional<Cursor> cursor(const std::string& channel) override {
        auto cursor = store_->cursor(name_, channel);
        if (!cursor) throw ErrorException(cursor.error());
        return *cursor;
    }
    Connector& connector() override { return *connector_ptr(); }  // kept alive by connector_ or retired_
    Result<bool> is_processed(const Message& message) override {
        return store_->is_processed(MessageKey{name_, message.channel, message.id});
    }
    void post(std::function<void()> task) override {
        // On the lane, like on_event. Dropped once release() began: a connector may complete a fetch while it is
        // destroyed there, and the pipeline is gone by then.
        if (!released_) pipeline_->post(name_, std::move(task));
    }
    void feed(Message message) override {
        message.connection = name_;
        message.recovered = true;
        if (sharing_ != nullptr) {
            sharing_->publish(message);
        } else {
            pipeline_->submit(std::move(message));
        }
    }
    void hold(const std::string& channel) override {
        set_recovery_state(channel, "recovering");
        pipeline_->hold(name_, channel);
    }
    void release(const std::string& channel) override {
        pipeline_->release(name_, channel);
        set_recovery_state(channel, "caught_up");
    }
    void finish(const RecoveryReport& report) override {
        metrics_.recovery(name_, report);
        {
            std::lock_guard lock(status_mutex_);
            ChannelRecovery& recovery = recovery_[report.channel];
            recovery.last = report;
            recovery.finished_ms = now_ms();
            if (recovery.state != "recovering") recovery.state = "caught_up";  // a policy that holds releases
        }
        const std::string text = "recovery: fetched " + std::to_string(report.fetched) + ", duplicates " +
                                 std::to_string(report.duplicates) +
                                 (report.gap ? ", gap remains: " + report.gap_reason : ", no gap");
        const LogFields where{name_, report.channel, {}};
        if (report.gap) {
            logger_.warn(text, where);
        } else {
            logger_.info(text, where);
        }
    }

    /// The current connector (another after a lost lease).
    std::shared_ptr<Connector> connector_ptr() const {
        std::lock_guard lock(connector_mutex_);
        return connector_;
    }

    /// Leases (DESIGN §8): waiting for this connection's lease, held by @p holder. With work sharing, sends to it go
    /// through the holder, so it counts as reachable.
    void stand_by(const std::string& holder) {
        set_link("standby", "waiting for the lease (held by " + holder + ")");
        if (sharing_ != nullptr) {
            const ConnectorCapabilities capabilities = connector_ptr()->capabilities();
            pipeline_->post(name_, [this, capabilities] { directory_.set_connection(name_, true, capabilities); });
        }
    }

    /// The lease was lost: stops the connector at once (replies to it become unreachable), and takes @p connector,
    /// a fresh object, to start when the lease is acquired again. The recovery policy stays: the next start reports
    /// `connected` again, and it recovers from the shared cursor. Called off the I/O threads.
    void stand_down(std::shared_ptr<Connector> connector) {
        standing_down_ = true;
        const std::shared_ptr<Connector> old = connector_ptr();
        old->stop();  // after it returns, the old connector calls nothing here
        const ConnectorCapabilities capabilities = old->capabilities();
        // Down on the lane, after the events the old connector reported (a "connected" still queued there); with
        // work sharing, reachable through the next holder.
        const bool remote = sharing_ != nullptr;
        pipeline_->post(name_, [this, capabilities, remote] { directory_.set_connection(name_, remote, capabilities); });
        set_link("standby", "lease lost; waiting to take it again");
        {
            std::lock_guard lock(connector_mutex_);
            retired_.push_back(connector_);
            connector_ = std::move(connector);
        }
        standing_down_ = false;
    }

    /// The connector plugin's name.
    const std::string& plugin() const { return plugin_; }

    /// State for /readyz: up (connected or resumed), and how long it has been in its current state.
    std::pair<std::string, std::int64_t> state() const {
        std::lock_guard lock(status_mutex_);
        return {link_state_, since_ms_};
    }

    /// This connection in /api/status (its cursors read from @p store).
    nlohmann::json status_json(Store& store, std::size_t queued, const std::string& lease_holder) const {
        nlohmann::json out;
        std::map<std::string, ChannelRecovery> recovery;
        {
            std::lock_guard lock(status_mutex_);
            out = {{"name", name_},
                   {"plugin", plugin_},
                   {"state", link_state_},
                   {"detail", link_detail_},
                   {"since_ms", since_ms_},
                   {"last_event_ms", last_event_ms_},
                   {"lease_holder", lease_holder}};
            recovery = recovery_;
        }
        out["queued"] = queued;
        const RateLimitStats limits = rate_limits_->stats();
        out["rate_limits"] = {{"granted", limits.granted}, {"delayed", limits.delayed},
                              {"waited_ms", limits.waited_ms}, {"limited", limits.limited},
                              {"waiting", limits.waiting}};
        std::map<std::string, Cursor> cursors;
        if (auto stored = store.cursors(name_)) {
            for (ChannelCursor& c : *stored) cursors.emplace(c.channel, std::move(c.cursor));
        }
        nlohmann::json channels = nlohmann::json::array();
        for (const std::string& id : channels_) {
            nlohmann::json channel{{"id", id}};
            if (auto name = directory_.channel_name(name_, id)) channel["name"] = *name;
            if (auto c = cursors.find(id); c != cursors.end()) {
                channel["cursor"] = {{"message_id", c->second.message_id}, {"timestamp_ms", c->second.timestamp_ms}};
            }
            nlohmann::json rec{{"state", "idle"}};
            if (auto r = recovery.find(id); r != recovery.end()) {
                rec["state"] = r->second.state;
                if (r->second.last) {
                    rec["fetched"] = r->second.last->fetched;
                    rec["duplicates"] = r->second.last->duplicates;
                    rec["gap"] = r->second.last->gap;
                    if (r->second.last->gap) rec["gap_reason"] = r->second.last->gap_reason;
                    rec["finished_ms"] = r->second.finished_ms;
                }
            }
            channel["recovery"] = std::move(rec);
            channels.push_back(std::move(channel));
        }
        out["channels"] = std::move(channels);
        return out;
    }

    /// Taken out by a reload, its connector stopped: recovery work that completes later is dropped, as after
    /// release(). The objects stay until the host stops (Impl::retired_connections says why).
    void retire() { released_ = true; }

    void release() {
        released_ = true;
        std::lock_guard lock(connector_mutex_);
        connector_.reset();
        policy_.reset();
        retired_.clear();
    }

private:
    struct ChannelRecovery {
        std::string state = "idle";  // recovering (held), caught_up
        std::optional<RecoveryReport> last;
        std::int64_t finished_ms = 0;
    };

    void set_link(const char* state, std::string detail) {
        std::lock_guard lock(status_mutex_);
        if (link_state_ != state) since_ms_ = now_ms();
        link_state_ = state;
        link_detail_ = std::move(detail);
        last_event_ms_ = now_ms();
    }

    void set_recovery_state(const std::string& channel, const char* state) {
        std::lock_guard lock(status_mutex_);
        recovery_[channel].state = state;
    }

    std::string name_;
    std::string plugin_;
    std::vector<std::string> channels_;
    Logger& logger_;
    routing::ConfigDirectory& directory_;
    std::shared_ptr<ratelimit::Scheduler> rate_limits_;
    routing::StoreExecutor store_executor_;
    std::optional<ConnectionState> state_;  // from bind(), when the store is known
    std::shared_ptr<Connector> connector_;
    std::shared_ptr<RecoveryPolicy> policy_;
    std::vector<std::shared_ptr<Connector>> retired_;  // stopped after a lost lease; kept until release()
    mutable std::mutex connector_mutex_;               // guards connector_ and retired_ once running
    std::atomic<bool> standing_down_{false};
    Pipeline* pipeline_ = nullptr;
    WorkSharing* sharing_ = nullptr;
    std::atomic<bool> released_{false};
    Store* store_ = nullptr;
    std::function<void()> on_finished_;
    std::function<void()> on_up_;
    admin::Metrics& metrics_;

    mutable std::mutex status_mutex_;
    std::string link_state_ = "starting";  // the last event's type
    std::string link_detail_;
    std::int64_t since_ms_ = 0;
    std::int64_t last_event_ms_ = 0;
    std::map<std::string, ChannelRecovery> recovery_;
};

}  // namespace

struct Host::Impl {
    Impl(config::Config config_, std::shared_ptr<const plugin::Registry> registry_, SpdLogger& logger_,
         HostOptions options_)
        : config(std::move(config_)), registry(std::move(registry_)), logger(logger_), options(options_) {}

    // A reload replaces config, registry, router, bots and connections on run()'s thread while admin requests read
    // them on I/O threads: a reload changes them, and those requests read them, under running_mutex.
    mutable std::mutex running_mutex;
    config::Config config;
    std::shared_ptr<const plugin::Registry> registry;
    SpdLogger& logger;
    HostOptions options;
    admin::Metrics metrics;

    std::mutex mutex;
    std::condition_variable stop_requested;
    std::optional<std::string> stop_reason;
    std::set<const Connection*> finished_connections;
    // Reloads waiting for run()'s thread: what asked (for the log) and where the outcome goes (may be empty).
    std::deque<std::pair<std::string, std::function<void(unsigned, nlohmann::json)>>> reloads;

    // Declared in creation order; run() tears them down explicitly in the documented order.
    std::vector<std::unique_ptr<SpdLogger>> loggers;
    boost::asio::io_context io;
    std::unique_ptr<boost::asio::thread_pool> workers;
    std::vector<std::thread> io_threads;
    std::shared_ptr<Store> store;
    std::vector<BotBinding> bots;
    std::vector<std::unique_ptr<Connection>> connections;
    std::unique_ptr<routing::ConfigDirectory> directory;
    std::unique_ptr<routing::DeliveryEngine> engine;
    std::shared_ptr<routing::Router> router;  // shared with the pipeline, which a reload hands a new one
    std::unique_ptr<Pipeline> pipeline;
    // With a store shared by several hosts: this host runs a connection only while it holds its lease.
    std::unique_ptr<LeaseKeeper> leases;
    // With switchboard.cluster.work_sharing: bots on every host take inbound messages from shared queues.
    std::unique_ptr<WorkSharing> sharing;
    // Connections a reload took out, their connectors stopped. Kept, with their connector and recovery objects and
    // so their libraries, until the host stops: a stopped connector may still have I/O completions queued on the
    // io_context, whose code must stay loaded until the I/O threads are gone.
    std::vector<std::unique_ptr<Connection>> retired_connections;
    // Pruning (start_pruning()): the store's dedup window, and the timer of the next prune (on io; destroyed before
    // it, declared after it).
    std::chrono::milliseconds prune_window{kDefaultDedupWindow};
    std::optional<boost::asio::steady_timer> prune_timer;
    static constexpr std::chrono::milliseconds kDefaultDedupWindow = std::chrono::hours(24 * 14);

    // Operations (DESIGN §7): metrics always (declared first: the store and pipeline record into them), the admin
    // server when configured.
    std::unique_ptr<admin::AdminServer> admin_server;
    const std::int64_t started_ms = now_ms();
    std::mutex recent_mutex;
    std::deque<nlohmann::json> recent_deliveries;  // the last kRecentDeliveries reports, oldest first
    static constexpr std::size_t kRecentDeliveries = 50;
    std::atomic<std::uint64_t> admin_sends{0};

    Logger& logger_for(const std::string& component) {
        loggers.push_back(logger.child(component));
        return *loggers.back();
    }

    void request_stop(const std::string& reason) {
        std::lock_guard lock(mutex);
        if (!stop_reason) stop_reason = reason;
        stop_requested.notify_all();
    }

    void connection_finished(const Connection* finished) {
        std::lock_guard lock(mutex);
        finished_connections.insert(finished);
        std::lock_guard running(running_mutex);
        // Connections a reload took out do not count; those it started have not finished.
        const bool all = std::all_of(connections.begin(), connections.end(),
                                     [&](const auto& c) { return finished_connections.count(c.get()) != 0; });
        if (all && !stop_reason) {
            stop_reason = "every connection has finished";
            stop_requested.notify_all();
        }
    }

    // From the running registry, or from @p from (a reload's new one).
    template <class T>
    std::shared_ptr<T> create(const config::PluginUse& use, const std::string& instance,
                              const plugin::Registry* from = nullptr) {
        PluginContext context(instance, logger_for(instance), io);
        auto object = (from != nullptr ? *from : *registry).create<T>(use.plugin, context, use.settings);
        if (!object) {
            throw ErrorException(fail(object.error().code, std::string(to_string(T::kKind)) + " '" + instance +
                                                               "' (plugin " + use.plugin +
                                                               "): " + object.error().message));
        }
        return *object;
    }

    static std::optional<std::pair<std::string, std::string>> channel_address(const std::string& name,
                                                                              const config::Config& in) {
        for (const auto& channel : in.channels) {
            if (channel.name == name) return std::make_pair(channel.connection, channel.id);
        }
        return std::nullopt;
    }

    void build() {
        // Every store call is timed for /metrics.
        store = std::make_shared<admin::InstrumentedStore>(create<Store>(config.store, "store"), metrics);
        for (const auto& bot : config.bots) bots.push_back(bind_bot(bot, create_bot(bot, *registry), config));
        std::vector<std::string> names;
        for (const auto& c : config.connections) names.push_back(c.name);
        directory = std::make_unique<routing::ConfigDirectory>(config);
        routing::EngineOptions engine_options;
        engine_options.on_report = [this](const DeliveryReport& report, std::chrono::nanoseconds elapsed) {
            metrics.delivery(report, elapsed);
            remember(report);
        };
        engine = std::make_unique<routing::DeliveryEngine>(
            *store, *directory, io,
            [this](std::function<void()> work) { boost::asio::post(*workers, std::move(work)); },
            logger_for("delivery"), engine_options);
        router = std::make_shared<routing::Router>(config, *directory, create_strategies(config, *registry),
                                                   engine.get());
        pipeline = std::make_unique<Pipeline>(
            *store, bots, names, *workers, logger_for("pipeline"), router,
            [this](std::vector<StagedDelivery> staged, bool persisted) {
                // One call for the batch: the outbox records what its replies did in shared rounds, not one write
                // per reply.
                engine->execute_all(std::move(staged), persisted);
            },
            [this](const std::string& connection, std::span<const ProcessedMessage> committed, std::size_t duplicates) {
                metrics.inbound(connection, committed, duplicates);
            });
        for (const auto& c : config.connections) {
            auto connection = make_connection(c, config, *registry);
            add_to_engine(c, connection->connector_ptr(), *connection);
            connections.push_back(std::move(connection));
        }
    }

    // Bot @p bot, created from @p from.
    std::shared_ptr<Bot> create_bot(const config::BotConfig& bot, const plugin::Registry& from) {
        if (bot.isolation != config::BotIsolation::in_process) {
            throw ErrorException(fail("unsupported", "bot '" + bot.name +
                                                         "': isolation: process is not available in this "
                                                         "version; remove the key to run it in the host"));
        }
        return create<Bot>(bot.bot, bot.name, &from);
    }

    // @p object as bot @p bot of @p in, with the addresses of the channels it listens on.
    static BotBinding bind_bot(const config::BotConfig& bot, std::shared_ptr<Bot> object, const config::Config& in) {
        BotBinding binding{bot.name, std::move(object), {}};
        for (const auto& name : bot.channels) {
            if (auto address = channel_address(name, in)) binding.channels.insert(*address);
        }
        return binding;
    }

    // Connection @p c of @p in, with its recovery policy and connector created from @p from, bound to the pipeline
    // and store; not started, and not known to the engine yet.
    std::unique_ptr<Connection> make_connection(const config::ConnectionConfig& c, const config::Config& in,
                                                const plugin::Registry& from) {
        std::vector<std::string> channel_ids;
        for (const auto& channel : in.channels) {
            if (channel.connection == c.name) channel_ids.push_back(channel.id);
        }
        Logger& connection_logger = logger_for(c.name);
        auto connection = std::make_unique<Connection>(c.name, c.connector.plugin, std::move(channel_ids),
                                                       connection_logger, *directory,
                                                       make_scheduler(c, connection_logger), store_executor(),
                                                       metrics);
        auto policy = create<RecoveryPolicy>(c.recovery, c.name + "/recovery", &from);
        auto connector = create<Connector>(c.connector, c.name, &from);
        // Back up: what plans left pending for it while it was down goes out again (DeliveryEngine::retry_parked).
        connection->bind(
            std::move(connector), std::move(policy), *pipeline, *store,
            [this, raw = connection.get()] { connection_finished(raw); },
            [this, name = c.name] { engine->retry_parked(name); });
        return connection;
    }

    static routing::ConnectionLimits connection_limits(const config::ConnectionConfig& c) {
        routing::ConnectionLimits limits;
        limits.concurrency = static_cast<std::uint32_t>(std::max<std::int64_t>(1, c.limits.get_int("concurrency", 8)));
        // Rate and burst live in the connection's scheduler ("global"), which its connector shares.
        return limits;
    }

    // Sends to connection @p c go through @p connector (its own, or, with work sharing, the holder's).
    void add_to_engine(const config::ConnectionConfig& c, std::shared_ptr<Connector> connector, Connection& connection) {
        engine->add_connection(c.name, std::move(connector), connection_limits(c), connection.scheduler());
    }

    // ---- leases (DESIGN §8) --------------------------------------------------------------------------------------

    // Connection @p name and its config (a reload may reorder the running set: read under running_mutex).
    std::pair<Connection*, std::optional<config::ConnectionConfig>> find_connection(const std::string& name) {
        std::lock_guard running(running_mutex);
        std::pair<Connection*, std::optional<config::ConnectionConfig>> found{nullptr, std::nullopt};
        for (auto& connection : connections) {
            if (connection->connection() == name) found.first = connection.get();
        }
        for (const auto& c : config.connections) {
            if (c.name == name) found.second = c;
        }
        return found;
    }

    // The lease of @p name is ours: what an earlier holder left pending for it goes out, then the connector starts
    // and its recovery policy starts from the shared cursor.
    void lease_acquired(const std::string& name) {
        auto [connection, c] = find_connection(name);
        if (connection == nullptr || !c) return;
        auto pending = store->outbox_pending();
        if (!pending) {
            logger.warn("could not read the sends left pending for '" + name + "' (" + pending.error().to_string() +
                        "); they go out at the next start");
        } else {
            std::vector<OutboxEntry> mine;
            for (OutboxEntry& entry : *pending) {
                if (entry.recipient.connection == name) mine.push_back(std::move(entry));
            }
            resume_pending(std::move(mine));
        }
        if (sharing) {
            // Sends to it go through this host's connector now, and other hosts' sends too.
            add_to_engine(*c, connection->connector_ptr(), *connection);
            sharing->serve(name, true);
        }
        connection->connector_ptr()->start(*connection);
    }

    // The lease of @p name is gone: stop its connector now, and have fresh objects ready for the next acquisition.
    void lease_lost(const std::string& name) {
        auto [connection, c] = find_connection(name);
        if (connection == nullptr || !c) return;
        try {
            if (sharing) sharing->serve(name, false);
            std::shared_ptr<const plugin::Registry> from;
            {
                std::lock_guard running(running_mutex);
                from = registry;  // a reload may replace it
            }
            auto connector = create<Connector>(c->connector, c->name, from.get());
            connection->stand_down(connector);
            add_to_engine(*c, sharing ? sharing->remote(name, connector) : std::move(connector), *connection);
        } catch (const ErrorException& e) {
            request_stop("connection '" + name + "' cannot be made again: " + e.error().message);
        }
    }

    std::string host_id() const { return config.cluster.host_id.empty() ? default_host_id() : config.cluster.host_id; }

    // Work sharing: every connection's messages go through shared queues; until this host holds a connection, its
    // engine sends through the holder.
    // Called with a store that has leases and shared queues (run() checks).
    void start_sharing() {
        SharedQueues* queues = store->queues();
        std::vector<std::string> names;
        for (const auto& c : config.connections) names.push_back(c.name);
        WorkSharingOptions options;
        options.host_id = host_id();
        options.reclaim_after = std::chrono::milliseconds(std::max<std::int64_t>(1000, config.cluster.lease_ttl_ms));
        sharing = std::make_unique<WorkSharing>(
            *queues, *store, std::move(names), options, [this](Message message) { pipeline->submit(std::move(message)); },
            [this](const OutboundMessage& message, SendCallback done) { send_for_another(message, std::move(done)); },
            logger_for("sharing"));
        for (const auto& c : config.connections) {
            Connection* connection = find_connection(c.name).first;
            connection->share(*sharing);
            add_to_engine(c, sharing->remote(c.name, connection->connector_ptr()), *connection);
        }
        sharing->start();
        logger.info("work sharing: this host's bots take messages of every connection from the shared queues");
    }

    // A send another host passed on: through this host's engine, as one more recipient of the plan whose outbox entry
    // that host committed (the key is "<plan id>|<recipient>"), so rate limits, retries and the entry's state apply.
    void send_for_another(const OutboundMessage& message, SendCallback done) {
        routing::PlannedDelivery delivery;
        const auto bar = message.idempotency_key.rfind('|');
        delivery.plan_id = bar == std::string::npos ? message.idempotency_key : message.idempotency_key.substr(0, bar);
        delivery.plan.recipients.push_back(Recipient{message.to.to_string(), message.to});
        delivery.text = message.text;
        delivery.reply_to = message.reply_to;
        delivery.deadline_ms = now_ms() + 25'000;  // before the asking host gives up (30 s)
        engine->execute(std::move(delivery), true, [done = std::move(done)](DeliveryReport report) {
            const RecipientOutcome* outcome = report.recipients.empty() ? nullptr : &report.recipients.front();
            if (report.status == DeliveryStatus::delivered && outcome != nullptr) {
                return done(SentMessage{outcome->message_id});
            }
            Error error;
            error.code = !report.error_code.empty() ? report.error_code
                         : outcome != nullptr && !outcome->error_code.empty() ? outcome->error_code
                                                                               : std::string(to_string(report.status));
            error.message = "the holder: " + report.detail;
            error.retryable = report.status == DeliveryStatus::retryable;
            error.retry_after_ms = report.retry_after_ms;
            done(std::move(error));
        });
    }

    void start_leases(LeaseStore& lease_store) {
        if (config.cluster.work_sharing) start_sharing();
        std::vector<std::string> names;
        for (const auto& connection : connections) {
            names.push_back(connection->connection());
            connection->stand_by("nobody yet");
        }
        LeaseKeeperOptions options;
        options.holder = host_id();
        options.ttl = std::chrono::milliseconds(config.cluster.lease_ttl_ms);
        logger.info("leases: this host is '" + options.holder + "'; each connection runs here only while this host "
                    "holds its lease (" + std::to_string(options.ttl.count()) + " ms, renewed every " +
                    std::to_string(options.ttl.count() / 3) + " ms)");
        leases = std::make_unique<LeaseKeeper>(
            lease_store, std::move(names), options,
            [this](const std::string& name, const Lease&) { lease_acquired(name); },
            [this](const std::string& name, const std::string&) { lease_lost(name); }, logger_for("leases"));
        leases->start();
    }

    routing::StoreExecutor store_executor() {
        return [this](std::function<void()> work) { boost::asio::post(*workers, std::move(work)); };
    }

    // The connection's scheduler: "global" from `limits:` when it sets a rate (the connector's default otherwise).
    std::shared_ptr<ratelimit::Scheduler> make_scheduler(const config::ConnectionConfig& c, Logger& connection_logger) {
        ratelimit::SchedulerOptions options;
        options.connection = c.name;
        options.invalid_budget = static_cast<std::uint32_t>(
            std::clamp<std::int64_t>(c.limits.get_int("invalid_budget", 10'000), 0, UINT32_MAX));
        options.invalid_window = std::chrono::milliseconds(
            std::max<std::int64_t>(1, c.limits.get_int("invalid_window", 10 * 60 * 1000)));
        auto scheduler = std::make_shared<ratelimit::Scheduler>(io, connection_logger, options);
        if (c.limits.has("rate")) {
            scheduler->configure_global(
                c.limits.get_number("rate", 0),
                static_cast<std::uint32_t>(std::clamp<std::int64_t>(c.limits.get_int("burst", 10), 1, UINT32_MAX)));
        }
        return scheduler;
    }

    std::map<std::string, std::shared_ptr<Strategy>> create_strategies(const config::Config& in,
                                                                       const plugin::Registry& from) {
        auto strategies = routing::create_strategies(in, from, [this](const std::string& instance) {
            return PluginContext(instance, logger_for(instance), io);
        });
        if (!strategies) throw ErrorException(strategies.error());
        return std::move(*strategies);
    }

    // What the last run left pending. Read before any connector starts: once messages flow, this run's own
    // replies are pending between their commit and their send, and would be sent twice.
    std::vector<OutboxEntry> left_pending() {
        auto pending = store->outbox_pending();
        if (!pending) throw ErrorException(pending.error());
        return std::move(*pending);
    }

    void resume_pending(std::vector<OutboxEntry> pending) {
        if (pending.empty()) return;
        logger.info("finishing " + std::to_string(pending.size()) + " send(s) left pending by the last run");
        engine->resume(std::move(pending));
    }

    // ---- operations ----------------------------------------------------------------------------------------------

    void remember(const DeliveryReport& report) {
        std::size_t delivered = 0;
        for (const RecipientOutcome& r : report.recipients) delivered += r.delivered ? 1 : 0;
        std::string target = report.recipients.empty() ? std::string() : report.recipients.front().name;
        if (report.recipients.size() > 1) target += " and " + std::to_string(report.recipients.size() - 1) + " more";
        nlohmann::json entry{{"time_ms", now_ms()},
                             {"status", to_string(report.status)},
                             {"target", std::move(target)},
                             {"recipients", report.recipients.size()},
                             {"delivered", delivered}};
        if (!report.error_code.empty()) entry["error_code"] = report.error_code;
        std::lock_guard lock(recent_mutex);
        recent_deliveries.push_back(std::move(entry));
        while (recent_deliveries.size() > kRecentDeliveries) recent_deliveries.pop_front();
    }

    // How long a connection that was up may be down (reconnecting, recovering) before /readyz says no.
    static constexpr std::int64_t kReadyGraceMs = 30'000;

    bool ready(std::vector<std::string>& reasons) {
        if (!store) {
            reasons.push_back("the store is not open");
            return false;
        }
        const std::int64_t now = now_ms();
        std::lock_guard running(running_mutex);
        for (const auto& connection : connections) {
            const auto [state, since] = connection->state();
            if (state == "connected" || state == "resumed" || state == "standby") continue;
            if (state == "finished") {
                reasons.push_back("connection '" + connection->connection() + "' has finished");
            } else if (state == "starting") {
                reasons.push_back("connection '" + connection->connection() + "' has not connected yet");
            } else if (now - since > kReadyGraceMs) {
                reasons.push_back("connection '" + connection->connection() + "' is " + state + " for " +
                                  std::to_string((now - since) / 1000) + " s");
            }
        }
        return reasons.empty();
    }

    nlohmann::json status() {
        std::lock_guard running(running_mutex);
        const std::map<std::string, std::size_t> queued = pipeline ? pipeline->queue_depths()
                                                                   : std::map<std::string, std::size_t>{};
        nlohmann::json out{{"version", kFrameworkVersion},
                           {"abi", SWITCHBOARD_ABI_VERSION},
                           {"started_ms", started_ms},
                           {"uptime_s", static_cast<double>(now_ms() - started_ms) / 1000.0},
                           {"store", config.store.plugin}};
        nlohmann::json list = nlohmann::json::array();
        for (const auto& connection : connections) {
            const auto depth = queued.find(connection->connection());
            list.push_back(connection->status_json(*store, depth == queued.end() ? 0 : depth->second,
                                                   leases ? leases->holder(connection->connection()) : "this host"));
        }
        out["connections"] = std::move(list);
        if (sharing) out["work_sharing"] = sharing->stats();
        const PipelineStats stats = pipeline ? pipeline->stats() : PipelineStats{};
        out["pipeline"] = {{"received", stats.received},     {"processed", stats.processed},
                           {"duplicates", stats.duplicates}, {"recovered", stats.recovered},
                           {"held", stats.held},             {"store_failures", stats.store_failures},
                           {"fenced", stats.fenced}};
        {
            std::lock_guard lock(recent_mutex);
            out["deliveries"] = {{"in_progress", engine ? engine->in_progress() : 0},
                                 {"waiting_for_connection", engine ? engine->parked() : 0},
                                 {"recent", nlohmann::json(recent_deliveries)}};
        }
        nlohmann::json plugins = nlohmann::json::array();
        for (const plugin::LoadedPlugin& loaded : registry->plugins()) {
            const PluginDescriptor& d = *loaded.descriptor;
            plugins.push_back({{"name", d.name},
                               {"kind", to_string(d.kind)},
                               {"version", d.version},
                               {"abi", d.abi_version},
                               {"file", loaded.file.string()}});
        }
        out["plugins"] = std::move(plugins);
        return out;
    }

    // POST /api/send: {"kind": "private"|"group"|"broadcast", "target": NAME, "text": TEXT, optional
    // "idempotency_key", "deadline_ms", "reply_to"} → the DeliveryReport.
    void admin_send(const nlohmann::json& body, std::function<void(unsigned, nlohmann::json)> reply) {
        const auto bad = [&](const std::string& message) {
            reply(400, nlohmann::json{{"error", "bad_envelope"}, {"message", message}});
        };
        const auto string_field = [&](const char* key) -> std::optional<std::string> {
            auto it = body.find(key);
            if (it == body.end() || it->is_null()) return std::string();
            if (!it->is_string()) return std::nullopt;
            return it->get<std::string>();
        };
        Envelope envelope;
        const auto kind = string_field("kind");
        const auto parsed = kind ? parse_message_kind(*kind) : std::nullopt;
        if (!parsed) return bad("'kind' must be \"private\", \"group\" or \"broadcast\"");
        envelope.kind = *parsed;
        const auto target = string_field("target");
        if (!target || (target->empty() && envelope.kind != MessageKind::broadcast)) {
            return bad("'target' must name a user (private) or a group or channel (group)");
        }
        envelope.target = *target;
        const auto text_field = string_field("text");
        if (!text_field || text_field->empty()) return bad("'text' must be a non-empty string");
        envelope.text = *text_field;
        const auto key = string_field("idempotency_key");
        if (!key) return bad("'idempotency_key' must be a string");
        envelope.idempotency_key = key->empty() ? "admin/" + std::to_string(started_ms) + "/" +
                                                      std::to_string(admin_sends.fetch_add(1) + 1)
                                                : *key;
        if (auto it = body.find("deadline_ms"); it != body.end()) {
            if (!it->is_number_integer()) return bad("'deadline_ms' must be an integer (ms since the Unix epoch)");
            envelope.deadline_ms = it->get<std::int64_t>();
        }
        const auto reply_to = string_field("reply_to");
        if (!reply_to) return bad("'reply_to' must be a string");
        if (!reply_to->empty()) envelope.reply_to = *reply_to;
        std::shared_ptr<routing::Router> current;
        {
            std::lock_guard running(running_mutex);
            current = router;
        }
        if (!current) return reply(503, nlohmann::json{{"error", "not_ready"}, {"message", "the host is starting"}});
        current->send(std::move(envelope), {},
                     [reply = std::move(reply)](DeliveryReport report) { reply(200, report_json(report)); });
    }

    void start_admin() {
        if (!config.admin) return;
        if (config.admin->token.empty()) {
            logger.warn("admin: no switchboard.admin.token: every /api/ request is refused (401)");
        }
        admin::AdminApi api;
        api.ready = [this](std::vector<std::string>& reasons) { return ready(reasons); };
        api.status = [this] { return status(); };
        api.send = [this](const nlohmann::json& body, std::function<void(unsigned, nlohmann::json)> reply) {
            admin_send(body, std::move(reply));
        };
        api.reload = [this](std::function<void(unsigned, nlohmann::json)> reply) {
            request_reload("POST /api/reload", std::move(reply));
        };
        api.metrics = &metrics;
        admin_server = std::make_unique<admin::AdminServer>(
            io, admin::AdminOptions{config.admin->listen, config.admin->token}, std::move(api), logger_for("admin"));
        auto port = admin_server->start();
        if (!port) throw ErrorException(port.error());
        const std::string& listen = config.admin->listen;
        logger.info("admin: listening on http://" + listen.substr(0, listen.rfind(':') + 1) + std::to_string(*port));
    }

    void start_sampling() {
        metrics.set_sampler([this] {
            admin::Sample sample;
            std::lock_guard running(running_mutex);
            const std::map<std::string, std::size_t> queued = pipeline ? pipeline->queue_depths()
                                                                       : std::map<std::string, std::size_t>{};
            for (const auto& connection : connections) {
                admin::Sample::Connection c;
                c.name = connection->connection();
                c.rate_limits = connection->scheduler()->stats();
                if (auto it = queued.find(c.name); it != queued.end()) c.queued = it->second;
                sample.connections.push_back(std::move(c));
            }
            sample.deliveries_in_progress = engine ? engine->in_progress() : 0;
            sample.deliveries_waiting = engine ? engine->parked() : 0;
            return sample;
        });
    }

    // ---- pruning ------------------------------------------------------------------------------------------------

    // The store forgets what is older than its dedup window (its `dedup_window` setting, 14 days when it has none):
    // processed message ids, logged messages (Store::prune). First a minute after start, then every hour, or every
    // half window when that is shorter; on the worker pool, like every store call.
    void start_pruning() {
        prune_window = std::chrono::milliseconds(
            config.store.settings.get_int("dedup_window", static_cast<std::int64_t>(kDefaultDedupWindow.count())));
        prune_timer.emplace(io);
        schedule_prune(std::min(prune_interval(), std::chrono::milliseconds(std::chrono::minutes(1))));
    }

    [[nodiscard]] std::chrono::milliseconds prune_interval() const {
        return std::clamp<std::chrono::milliseconds>(prune_window / 2, std::chrono::seconds(1), std::chrono::hours(1));
    }

    // Only one prune is ever scheduled or running, so the timer is never touched from two threads at once. At stop
    // the I/O threads end first (a due prune is dropped), then the worker pool finishes one that runs.
    void schedule_prune(std::chrono::milliseconds after) {
        prune_timer->expires_after(after);
        prune_timer->async_wait([this](const boost::system::error_code& ec) {
            if (ec) return;
            boost::asio::post(*workers, [this] {
                prune_now();
                schedule_prune(prune_interval());
            });
        });
    }

    void prune_now() {
        const auto window_text = std::to_string(prune_window.count() / 1000) + " s";
        auto removed = store->prune(now_ms() - prune_window.count());
        if (!removed) {
            logger.warn("store: could not forget what is older than the dedup window (" + window_text +
                        "): " + removed.error().to_string() + "; trying again later");
        } else if (*removed > 0) {
            logger.info("store: forgot " + std::to_string(*removed) +
                        " processed message id(s) older than the dedup window (" + window_text + ")");
        }
    }

    // ---- reload (SIGHUP, POST /api/reload; host/reload.hpp) ----------------------------------------------------

    using ReloadAnswer = std::pair<unsigned, nlohmann::json>;

    void request_reload(std::string trigger, std::function<void(unsigned, nlohmann::json)> done) {
        std::lock_guard lock(mutex);
        if (stop_reason) {
            if (done) {
                done(503, nlohmann::json{{"error", "stopping"}, {"message", "the host is stopping: " + *stop_reason}});
            }
            return;
        }
        reloads.emplace_back(std::move(trigger), std::move(done));
        stop_requested.notify_all();
    }

    void wait_for_hangup(boost::asio::signal_set& hangups) {
        hangups.async_wait([this, &hangups](const boost::system::error_code& ec, int) {
            if (ec) return;  // cancelled: the host stops
            request_reload("SIGHUP", {});
            wait_for_hangup(hangups);
        });
    }

    // At a stop: reloads still waiting are answered, not run.
    void refuse_reloads() {
        std::lock_guard lock(mutex);
        for (auto& [trigger, done] : reloads) {
            if (done) done(503, nlohmann::json{{"error", "stopping"}, {"message", "the host is stopping"}});
        }
        reloads.clear();
    }

    // A reload that failed: nothing running changed. The reason goes to the log, the metrics and the answer.
    ReloadAnswer reload_failed(unsigned status, const std::string& code, const std::string& message,
                               const std::vector<std::string>& problems = {}) {
        logger.error("reload failed (" + code + "): " + message + "; the running set is unchanged");
        for (const std::string& problem : problems) logger.error("reload: " + problem);
        metrics.reload(false);
        return {status, nlohmann::json{{"error", code}, {"message", message}, {"problems", problems}}};
    }

    // Reads the config again, validates it in full with the plugins it names (a changed plugin file loaded beside
    // the running one), creates what is new, and only then changes the running set: routes, groups and bots at
    // once; connections that changed are reconnected, those that did not keep running untouched.
    ReloadAnswer reload(const std::string& trigger, const std::filesystem::path& copies) {
        const std::string source = options.source.path.value_or("<embedded>");
        logger.info("reload (" + trigger + "): reading " + source);
        LoadedConfig next = load_config(options.source, registry.get(), copies);
        if (!next.read_error.empty()) return reload_failed(422, "invalid_config", next.read_error);
        if (!next.refusals.empty()) {
            return reload_failed(422, "plugin_refused",
                                 std::to_string(next.refusals.size()) + " plugin librar" +
                                     (next.refusals.size() == 1 ? "y was" : "ies were") + " refused",
                                 next.problems());
        }
        if (!next.config) {
            return reload_failed(422, "invalid_config",
                                 std::to_string(next.errors.size()) + " error(s) in " + next.name, next.problems());
        }
        const ReloadPlan plan = plan_reload(config, *registry, *next.config, *next.registry);
        if (!plan.refused.empty()) {
            return reload_failed(409, "cannot_change", "the new config changes what only a restart can change",
                                 plan.refused);
        }
        if (const auto refused = cluster_changes(plan, *next.config); !refused.empty()) {
            return reload_failed(409, "cannot_change", "the new config changes what only a restart can change",
                                 refused);
        }
        const auto in = [](const std::vector<std::string>& names, const std::string& name) {
            return std::find(names.begin(), names.end(), name) != names.end();
        };

        // Everything new is created before anything running changes; if one creation fails, what was made goes.
        std::map<std::string, std::shared_ptr<Bot>> new_bots;
        std::shared_ptr<routing::Router> next_router;
        std::map<std::string, std::unique_ptr<Connection>> new_connections;
        try {
            for (const auto& bot : next.config->bots) {
                if (!in(plan.bots.added, bot.name) && !in(plan.bots.changed, bot.name)) continue;
                new_bots[bot.name] = create_bot(bot, *next.registry);
            }
            next_router = std::make_shared<routing::Router>(
                *next.config, *directory, create_strategies(*next.config, *next.registry), engine.get());
            for (const auto& c : next.config->connections) {
                if (!in(plan.connections.added, c.name) && !in(plan.connections.changed, c.name)) continue;
                new_connections[c.name] = make_connection(c, *next.config, *next.registry);
            }
        } catch (const ErrorException& e) {
            return reload_failed(422, "create_failed", e.error().message + " [" + e.error().code + "]");
        } catch (const std::exception& e) {
            return reload_failed(422, "create_failed", e.what());
        }

        // From here on nothing fails. Routing first: the directory, then bots and router in one swap.
        directory->reload(*next.config);
        std::vector<BotBinding> bindings;
        for (const auto& bot : next.config->bots) {
            std::shared_ptr<Bot> object;  // a kept bot goes on as it runs
            if (auto made = new_bots.find(bot.name); made != new_bots.end()) {
                object = made->second;
            } else {
                for (const BotBinding& running : bots) {
                    if (running.name == bot.name) object = running.bot;
                }
            }
            bindings.push_back(bind_bot(bot, std::move(object), *next.config));
        }
        pipeline->reconfigure(bindings, next_router);
        {
            std::lock_guard running(running_mutex);
            router = next_router;
            bots = std::move(bindings);
        }

        // Connections: each removed or changed one hands over (to its replacement, if any); added ones start.
        for (const std::string& name : plan.connections.removed) replace_connection(name, nullptr, {});
        for (const auto& c : next.config->connections) {
            auto made = new_connections.find(c.name);
            if (made == new_connections.end()) continue;
            if (in(plan.connections.changed, c.name)) {
                replace_connection(c.name, std::move(made->second), connection_limits(c));
            } else {
                start_connection(std::move(made->second), connection_limits(c));
            }
        }
        {
            std::lock_guard running(running_mutex);
            // Connections in the new config's order.
            std::vector<std::unique_ptr<Connection>> ordered;
            for (const auto& c : next.config->connections) {
                for (auto& connection : connections) {
                    if (connection && connection->connection() == c.name) ordered.push_back(std::move(connection));
                }
            }
            connections = std::move(ordered);
            config = std::move(*next.config);
            registry = std::move(next.registry);  // the old registry goes; libraries in use stay with their objects
        }
        nlohmann::json summary = plan.to_json();
        logger.info("reload ok (" + trigger + "): " + summary.dump());
        metrics.reload(true);
        summary["result"] = "ok";
        return {200, std::move(summary)};
    }

    // With a store shared by several hosts, the connections and switchboard.cluster change only with a restart: the
    // lease keeper and work sharing are made for the connections the host started with.
    std::vector<std::string> cluster_changes(const ReloadPlan& plan, const config::Config& next) const {
        std::vector<std::string> refused;
        const config::ClusterConfig& now = config.cluster;
        if (now.host_id != next.cluster.host_id || now.lease_ttl_ms != next.cluster.lease_ttl_ms ||
            now.work_sharing != next.cluster.work_sharing) {
            refused.push_back("switchboard.cluster changed: restart the host to apply it");
        }
        if (!leases) return refused;
        for (const auto* names : {&plan.connections.added, &plan.connections.removed, &plan.connections.changed}) {
            for (const std::string& name : *names) {
                refused.push_back("connection '" + name + "' added, removed or changed: with a store shared by "
                                  "several hosts (leases) connections change only with a restart");
            }
        }
        return refused;
    }

    // reload(), with a failure it did not foresee answered (500) instead of ending the host.
    ReloadAnswer reload_guarded(const std::string& trigger) {
        // Changed plugin files are copied here to be loaded, and deleted once loaded; the directory goes after.
        const std::filesystem::path copies =
            std::filesystem::temp_directory_path() / ("switchboard-" + std::to_string(::getpid()) + "-plugins");
        struct RemoveCopies {
            const std::filesystem::path& directory;
            ~RemoveCopies() {
                std::error_code ignored;
                std::filesystem::remove_all(directory, ignored);
            }
        } remove_copies{copies};
        // Under systemd: reloading now, and ready again once it ended (applied or not).
        sd_notify(0, "RELOADING=1\nSTATUS=reloading the config");
        struct NotifyReady {
            const std::vector<std::unique_ptr<Connection>>& connections;
            ~NotifyReady() {
                sd_notify(0, ("READY=1\nSTATUS=running " + std::to_string(connections.size()) + " connection(s)").c_str());
            }
        } notify_ready{connections};
        try {
            return reload(trigger, copies);
        } catch (const ErrorException& e) {
            return reload_failed(500, "reload_failed", e.error().message + " [" + e.error().code + "]");
        } catch (const std::exception& e) {
            return reload_failed(500, "reload_failed", e.what());
        }
    }

    // Adds @p connection to the engine and the running set, and starts its connector.
    void start_connection(std::unique_ptr<Connection> connection, const routing::ConnectionLimits& limits) {
        Connection& started = *connection;
        engine->add_connection(started.connection(), started.connector_ptr(), limits, started.scheduler());
        {
            std::lock_guard running(running_mutex);
            connections.push_back(std::move(connection));
        }
        logger.info("reload: starting connection '" + started.connection() + "'");
        started.connector_ptr()->start(started);
    }

    // Takes connection @p name out of the running set and, given a @p replacement, starts that in its place.
    // Replies queued for the old connector go out through it first; then it stops, the events it reported before
    // run on its lane, and its saved state is written, so the replacement resumes from the old one's cursor and
    // saved state.
    void replace_connection(const std::string& name, std::unique_ptr<Connection> replacement,
                            const routing::ConnectionLimits& limits) {
        std::unique_ptr<Connection> old;
        {
            std::lock_guard running(running_mutex);
            for (auto& connection : connections) {
                if (connection && connection->connection() == name) old = std::move(connection);
            }
            connections.erase(std::remove(connections.begin(), connections.end(), nullptr), connections.end());
        }
        if (!old) return;
        // New sends go to the replacement now (it answers retryable until it is up, and the engine retries);
        // what the old lane holds drains through the old connector, still running.
        if (replacement) {
            engine->add_connection(name, replacement->connector_ptr(), limits, replacement->scheduler());
        } else {
            engine->add_connection(name, nullptr, limits);
        }
        if (!engine->retire(name, options.drain_timeout)) {
            logger.warn("reload: replies queued for connection '" + name +
                        "' did not go out in time; they stay pending in the store");
        }
        old->connector_ptr()->stop();
        auto lane_done = std::make_shared<std::promise<void>>();
        auto reached = lane_done->get_future();
        pipeline->post(name, [lane_done] { lane_done->set_value(); });
        reached.wait_for(options.drain_timeout);
        // A recovery the old connection had running may hold channels; the replacement's recovery starts over.
        pipeline->drop_holds(name);
        old->retire();
        old->scheduler()->shutdown();
        if (!old->wait_saves(options.drain_timeout)) {
            logger.warn("reload: the saved state of connection '" + name + "' was not written in time");
        }
        logger.info(replacement ? "reload: connection '" + name + "' stopped; its replacement starts"
                                : "reload: connection '" + name + "' removed");
        retired_connections.push_back(std::move(old));
        if (replacement) start_connection(std::move(replacement), limits);
    }

    int run() {
        auto guard = boost::asio::make_work_guard(io);
        workers = std::make_unique<boost::asio::thread_pool>(options.worker_threads);
        for (unsigned i = 0; i < options.io_threads; ++i) io_threads.emplace_back([this] { io.run(); });
        boost::asio::signal_set signals(io, SIGINT, SIGTERM);
        signals.async_wait([this](const boost::system::error_code& ec, int signal) {
            if (!ec) request_stop(signal == SIGINT ? "SIGINT" : "SIGTERM");
        });
        boost::asio::signal_set hangups(io, SIGHUP);
        wait_for_hangup(hangups);

        int status = 0;
        try {
            build();
            start_sampling();
            start_pruning();
            start_admin();
            logger.info("running: " + std::to_string(connections.size()) + " connection(s), " +
                        std::to_string(bots.size()) + " bot(s), store " + config.store.plugin);
            if (config.cluster.work_sharing && (store->leases() == nullptr || store->queues() == nullptr)) {
                throw ErrorException(fail("config_invalid", "switchboard.cluster.work_sharing needs a store shared "
                                                            "by hosts (redis); store '" + config.store.plugin +
                                                            "' has no leases or shared queues"));
            }
            if (LeaseStore* lease_store = store->leases()) {
                // Several hosts share the store: each connection starts when its lease is ours, with what was left
                // pending for it.
                start_leases(*lease_store);
            } else {
                auto pending = left_pending();
                for (auto& connection : connections) connection->connector_ptr()->start(*connection);
                // What the last run left pending goes out now; a connector still connecting answers retryable, and
                // the engine retries.
                resume_pending(std::move(pending));
            }
            // Under systemd (Type=notify): started. Without NOTIFY_SOCKET this does nothing.
            sd_notify(0, ("READY=1\nSTATUS=running " + std::to_string(connections.size()) + " connection(s)").c_str());
            std::unique_lock lock(mutex);
            // Reloads run here, one at a time, until a stop is asked for.
            while (true) {
                stop_requested.wait(lock, [this] { return stop_reason.has_value() || !reloads.empty(); });
                if (stop_reason) break;
                auto [trigger, done] = std::move(reloads.front());
                reloads.pop_front();
                lock.unlock();
                auto [code, answer] = reload_guarded(trigger);
                if (done) done(code, std::move(answer));
                lock.lock();
            }
            logger.info("stopping: " + *stop_reason);
        } catch (const ErrorException& e) {
            logger.error(e.error().message + " [" + e.error().code + "]");
            status = 1;
        } catch (const std::exception& e) {
            logger.error(std::string("start-up failed: ") + e.what());
            status = 1;
        }
        boost::system::error_code ignored;
        hangups.cancel(ignored);
        shutdown(signals);
        guard.reset();
        return status;
    }

    // Stop connectors, drain the pipeline and deliveries, destroy objects; the registry unloads after us.
    void shutdown(boost::asio::signal_set& signals) {
        sd_notify(0, "STOPPING=1\nSTATUS=stopping: draining queued messages and deliveries");
        refuse_reloads();
        if (admin_server) admin_server->stop();
        // No connection starts from now on (a lease acquired now is given up again by stop() below).
        if (leases) leases->pause();
        for (auto& connection : connections) {
            if (connection->connector_ptr()) connection->connector_ptr()->stop();
        }
        // One deadline for both: what is queued gets handled, what is in flight finishes, within drain_timeout.
        const auto deadline = std::chrono::steady_clock::now() + options.drain_timeout;
        const auto remaining = [&] {
            return std::max(std::chrono::milliseconds(0), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                              deadline - std::chrono::steady_clock::now()));
        };
        if (pipeline) {
            pipeline->close();
            if (!pipeline->wait_idle(remaining())) {
                logger.warn("stop: pipeline did not drain in time; unprocessed messages will be recovered");
                pipeline->give_up();
            }
        }
        if (engine && !engine->wait_idle(remaining())) {
            logger.warn("stop: " + std::to_string(engine->in_progress()) +
                        " delivery plan(s) still in progress after stop_timeout; what they did not send stays "
                        "pending in the store for the next start");
        }
        // Sends passed to other hosts have come back (or time out now); nothing more is taken from the queues.
        if (sharing) sharing->stop(remaining());
        if (engine) engine->clear_connections();
        // What still waits for a rate limit (a connector's requests, sends the drain gave up on) is cancelled now,
        // while the connectors are stopped but not yet destroyed; their last saved state is written before the store
        // closes.
        for (auto& connection : connections) {
            connection->scheduler()->shutdown();
            const RateLimitStats limits = connection->scheduler()->stats();
            if (limits.delayed > 0 || limits.limited > 0 || limits.invalid > 0) {
                logger.info("rate limits of '" + connection->connection() + "': " + std::to_string(limits.granted) +
                            " granted, " + std::to_string(limits.delayed) + " delayed (" +
                            std::to_string(limits.waited_ms) + " ms in all), " + std::to_string(limits.limited) +
                            " 429s (" + std::to_string(limits.global_limited) + " global), " +
                            std::to_string(limits.invalid) + " invalid");
            }
            if (!connection->wait_saves(options.drain_timeout)) {
                logger.warn("stop: the saved state of a connection was not written in time");
            }
        }
        // Drained: the leases go, so a standby takes over at once.
        if (leases) leases->stop();
        boost::system::error_code ignored;
        signals.cancel(ignored);
        io.stop();
        for (auto& thread : io_threads) thread.join();
        io_threads.clear();
        if (workers) workers->join();
        if (pipeline) {
            const PipelineStats stats = pipeline->stats();
            logger.info("stopped: " + std::to_string(stats.processed) + " processed, " +
                        std::to_string(stats.duplicates) + " duplicates, " + std::to_string(stats.recovered) +
                        " recovered");
        }
        admin_server.reset();
        metrics.set_sampler({});
        pipeline.reset();
        router.reset();
        engine.reset();
        sharing.reset();  // after the engine: its lanes held the remote connectors
        directory.reset();
        leases.reset();
        for (auto& connection : connections) connection->release();
        connections.clear();
        for (auto& connection : retired_connections) connection->release();
        retired_connections.clear();
        bots.clear();
        store.reset();  // closes the store
    }
};

Host::Host(config::Config config, std::shared_ptr<const plugin::Registry> registry, SpdLogger& logger,
           HostOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(registry), logger, options)) {}

Host::~Host() = default;

int Host::run() { return impl_->run(); }

void Host::request_stop(const std::string& reason) { impl_->request_stop(reason); }

}  // namespace switchboard::host
