#include "host/host.hpp"

#include "host/pipeline.hpp"
#include "ratelimit/scheduler.hpp"
#include "routing/delivery_engine.hpp"
#include "routing/directory.hpp"
#include "routing/router.hpp"

#include <switchboard/recovery.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csignal>
#include <deque>
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

/// One configured connection while it runs: the connector's host, and its recovery policy's context.
class Connection final : public ConnectorHost, public RecoveryContext {
public:
    /// @p store_executor runs save_state() writes off the I/O threads (the host's worker pool).
    Connection(std::string name, std::vector<std::string> channels, Logger& logger,
               routing::ConfigDirectory& directory, std::shared_ptr<ratelimit::Scheduler> rate_limits,
               routing::StoreExecutor store_executor)
        : name_(std::move(name)),
          channels_(std::move(channels)),
          logger_(logger),
          directory_(directory),
          rate_limits_(std::move(rate_limits)),
          store_executor_(std::move(store_executor)) {}

    void bind(std::shared_ptr<Connector> connector, std::shared_ptr<RecoveryPolicy> policy, Pipeline& pipeline,
              Store& store, std::function<void()> on_finished) {
        connector_ = std::move(connector);
        policy_ = std::move(policy);
        pipeline_ = &pipeline;
        store_ = &store;
        on_finished_ = std::move(on_finished);
        state_.emplace(name_, store, store_executor_, logger_);
    }

    // ConnectorHost
    void deliver(Message message) override {
        message.connection = name_;
        pipeline_->submit(std::move(message));
    }

    void report(const ConnectionEvent& event) override {
        logger_.info(std::string(to_string(event.type)) +
                         (event.detail.empty() ? "" : ": " + event.detail),
                     LogFields{name_, {}, {}});
        // The event takes effect on the connection's lane, after every message delivered before it: replies to
        // those still see the connection as it was. The policy runs there too, off the I/O threads (it reads
        // cursors from the store).
        pipeline_->post(name_, [this, event] {
            const bool up =
                event.type == ConnectionEvent::Type::connected || event.type == ConnectionEvent::Type::resumed;
            directory_.set_connection(name_, up, connector_->capabilities());
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
    Connector& connector() override { return *connector_; }
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
        pipeline_->submit(std::move(message));
    }
    void hold(const std::string& channel) override { pipeline_->hold(name_, channel); }
    void release(const std::string& channel) override { pipeline_->release(name_, channel); }
    void finish(const RecoveryReport& report) override {
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

    const std::shared_ptr<Connector>& connector_ptr() const { return connector_; }
    void release() {
        released_ = true;
        connector_.reset();
        policy_.reset();
    }

private:
    std::string name_;
    std::vector<std::string> channels_;
    Logger& logger_;
    routing::ConfigDirectory& directory_;
    std::shared_ptr<ratelimit::Scheduler> rate_limits_;
    routing::StoreExecutor store_executor_;
    std::optional<ConnectionState> state_;  // from bind(), when the store is known
    std::shared_ptr<Connector> connector_;
    std::shared_ptr<RecoveryPolicy> policy_;
    Pipeline* pipeline_ = nullptr;
    std::atomic<bool> released_{false};
    Store* store_ = nullptr;
    std::function<void()> on_finished_;
};

}  // namespace

struct Host::Impl {
    Impl(config::Config config_, const plugin::Registry& registry_, SpdLogger& logger_, HostOptions options_)
        : config(std::move(config_)), registry(registry_), logger(logger_), options(options_) {}

    config::Config config;
    const plugin::Registry& registry;
    SpdLogger& logger;
    HostOptions options;

    std::mutex mutex;
    std::condition_variable stop_requested;
    std::optional<std::string> stop_reason;
    std::size_t finished_connections = 0;

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
    std::unique_ptr<routing::Router> router;
    std::unique_ptr<Pipeline> pipeline;

    Logger& logger_for(const std::string& component) {
        loggers.push_back(logger.child(component));
        return *loggers.back();
    }

    void request_stop(const std::string& reason) {
        std::lock_guard lock(mutex);
        if (!stop_reason) stop_reason = reason;
        stop_requested.notify_all();
    }

    void connection_finished() {
        std::lock_guard lock(mutex);
        if (++finished_connections == connections.size() && !stop_reason) {
            stop_reason = "every connection has finished";
            stop_requested.notify_all();
        }
    }

    template <class T>
    std::shared_ptr<T> create(const config::PluginUse& use, const std::string& instance) {
        PluginContext context(instance, logger_for(instance), io);
        auto object = registry.create<T>(use.plugin, context, use.settings);
        if (!object) {
            throw ErrorException(fail(object.error().code, std::string(to_string(T::kKind)) + " '" + instance +
                                                               "' (plugin " + use.plugin +
                                                               "): " + object.error().message));
        }
        return *object;
    }

    std::optional<std::pair<std::string, std::string>> channel_address(const std::string& name) const {
        for (const auto& channel : config.channels) {
            if (channel.name == name) return std::make_pair(channel.connection, channel.id);
        }
        return std::nullopt;
    }

    void build() {
        store = create<Store>(config.store, "store");
        for (const auto& bot : config.bots) {
            if (bot.isolation != config::BotIsolation::in_process) {
                throw ErrorException(fail("unsupported", "bot '" + bot.name +
                                                             "': isolation: process is not available in this "
                                                             "version; remove the key to run it in the host"));
            }
            BotBinding binding{bot.name, create<Bot>(bot.bot, bot.name), {}};
            for (const auto& name : bot.channels) {
                if (auto address = channel_address(name)) binding.channels.insert(*address);
            }
            bots.push_back(std::move(binding));
        }
        std::vector<std::string> names;
        for (const auto& c : config.connections) names.push_back(c.name);
        directory = std::make_unique<routing::ConfigDirectory>(config);
        engine = std::make_unique<routing::DeliveryEngine>(
            *store, *directory, io,
            [this](std::function<void()> work) { boost::asio::post(*workers, std::move(work)); },
            logger_for("delivery"));
        router = std::make_unique<routing::Router>(config, *directory, create_strategies(), engine.get());
        pipeline = std::make_unique<Pipeline>(*store, bots, names, *workers, logger_for("pipeline"), router.get(),
                                              [this](std::vector<StagedDelivery> staged) {
                                                  // One call for the batch: the outbox records what its replies
                                                  // did in shared rounds, not one write per reply.
                                                  engine->execute_all(std::move(staged), true);
                                              });
        for (const auto& c : config.connections) {
            std::vector<std::string> channel_ids;
            for (const auto& channel : config.channels) {
                if (channel.connection == c.name) channel_ids.push_back(channel.id);
            }
            Logger& connection_logger = logger_for(c.name);
            auto connection = std::make_unique<Connection>(c.name, std::move(channel_ids), connection_logger,
                                                           *directory, make_scheduler(c, connection_logger),
                                                           store_executor());
            auto policy = create<RecoveryPolicy>(c.recovery, c.name + "/recovery");
            auto connector = create<Connector>(c.connector, c.name);
            routing::ConnectionLimits limits;
            limits.concurrency = static_cast<std::uint32_t>(std::max<std::int64_t>(1, c.limits.get_int("concurrency", 8)));
            // Rate and burst live in the connection's scheduler ("global"), which its connector shares.
            engine->add_connection(c.name, connector, limits, connection->scheduler());
            connection->bind(std::move(connector), std::move(policy), *pipeline, *store,
                             [this] { connection_finished(); });
            connections.push_back(std::move(connection));
        }
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

    std::map<std::string, std::shared_ptr<Strategy>> create_strategies() {
        auto strategies = routing::create_strategies(config, registry, [this](const std::string& instance) {
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

    int run() {
        auto guard = boost::asio::make_work_guard(io);
        workers = std::make_unique<boost::asio::thread_pool>(options.worker_threads);
        for (unsigned i = 0; i < options.io_threads; ++i) io_threads.emplace_back([this] { io.run(); });
        boost::asio::signal_set signals(io, SIGINT, SIGTERM);
        signals.async_wait([this](const boost::system::error_code& ec, int signal) {
            if (!ec) request_stop(signal == SIGINT ? "SIGINT" : "SIGTERM");
        });

        int status = 0;
        try {
            build();
            logger.info("running: " + std::to_string(connections.size()) + " connection(s), " +
                        std::to_string(bots.size()) + " bot(s), store " + config.store.plugin);
            auto pending = left_pending();
            for (auto& connection : connections) connection->connector_ptr()->start(*connection);
            // What the last run left pending goes out now; a connector still connecting answers retryable, and the
            // engine retries.
            resume_pending(std::move(pending));
            std::unique_lock lock(mutex);
            stop_requested.wait(lock, [this] { return stop_reason.has_value(); });
            logger.info("stopping: " + *stop_reason);
        } catch (const ErrorException& e) {
            logger.error(e.error().message + " [" + e.error().code + "]");
            status = 1;
        } catch (const std::exception& e) {
            logger.error(std::string("start-up failed: ") + e.what());
            status = 1;
        }
        shutdown(signals);
        guard.reset();
        return status;
    }

    // Stop connectors, drain the pipeline and deliveries, destroy objects; the registry unloads after us.
    void shutdown(boost::asio::signal_set& signals) {
        for (auto& connection : connections) {
            if (connection->connector_ptr()) connection->connector_ptr()->stop();
        }
        if (pipeline) {
            pipeline->close();
            if (!pipeline->wait_idle(options.drain_timeout)) {
                logger.warn("stop: pipeline did not drain in time; unprocessed messages will be recovered");
            }
        }
        if (engine && !engine->wait_idle(options.drain_timeout)) {
            logger.warn("stop: deliveries still in progress; they stay pending in the store for the next start");
        }
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
        pipeline.reset();
        router.reset();
        engine.reset();
        directory.reset();
        for (auto& connection : connections) connection->release();
        connections.clear();
        bots.clear();
        store.reset();  // closes the store
    }
};

Host::Host(config::Config config, const plugin::Registry& registry, SpdLogger& logger, HostOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), registry, logger, options)) {}

Host::~Host() = default;

int Host::run() { return impl_->run(); }

void Host::request_stop(const std::string& reason) { impl_->request_stop(reason); }

}  // namespace switchboard::host
