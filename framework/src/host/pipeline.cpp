#include "host/pipeline.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <unordered_set>
#include <variant>

namespace switchboard::host {
namespace {

using Strand = boost::asio::strand<boost::asio::thread_pool::executor_type>;
using Item = std::variant<Message, std::function<void()>>;

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

/// Key-value writes staged by earlier messages of the batch, so a later message reads what an earlier one wrote.
using Overlay = std::map<std::pair<std::string, std::string>, std::optional<std::string>>;

/// Where a staged plan's recipients and message wait until the commit: the outbox entries of processed message
/// `message` from index `first` on, one per recipient in plan order, the last holding the plan id, text and reply_to.
/// Staging moves them there rather than copying them; give_back() returns them to the plan once the entries are
/// durable.
struct Lent {
    std::size_t message = 0;
    std::size_t first = 0;
    std::size_t count = 0;
};

/// What one message's handling stages: its durable part, and the plans and failed-plan reports to hand on after
/// the commit.
struct Staged {
    ProcessedMessage& processed;
    std::size_t index;  // of `processed` among the batch's processed messages
    std::vector<StagedDelivery>& deliveries;
    std::vector<Lent>& lent;  // one per delivery
    std::vector<std::pair<ReportCallback, DeliveryReport>>& failed;
};

/// Adds @p delivery's recipients to the message's outbox entries and the plan to what runs after commit. The entries
/// take the plan's addresses, and the last one its plan id, text and reply_to (the others copy those): give_back()
/// returns them after the commit.
void stage(Staged& staged, routing::PlannedDelivery delivery, ReportCallback done) {
    const std::int64_t created = now_ms();
    std::vector<OutboxEntry>& outbox = staged.processed.outbox;
    std::vector<Recipient>& recipients = delivery.plan.recipients;
    const Lent lent{staged.index, outbox.size(), recipients.size()};
    for (std::size_t i = 0; i < recipients.size(); ++i) {
        OutboxEntry& entry = outbox.emplace_back();
        entry.recipient = std::move(recipients[i].address);
        if (i + 1 < recipients.size()) {
            entry.plan_id = delivery.plan_id;
            entry.text = delivery.text;
            entry.reply_to = delivery.reply_to;
        } else {
            entry.plan_id = std::move(delivery.plan_id);
            entry.text = std::move(delivery.text);
            entry.reply_to = std::move(delivery.reply_to);
        }
        entry.created_ms = created;
    }
    staged.deliveries.push_back(StagedDelivery{std::move(delivery), std::move(done)});
    staged.lent.push_back(lent);
}

/// After the commit: returns to each staged plan what stage() moved into the outbox entries.
void give_back(std::vector<ProcessedMessage>& processed, std::vector<StagedDelivery>& deliveries,
               const std::vector<Lent>& lent) {
    for (std::size_t k = 0; k < deliveries.size(); ++k) {
        const Lent& where = lent[k];
        if (where.count == 0) continue;
        routing::PlannedDelivery& delivery = deliveries[k].delivery;
        std::vector<OutboxEntry>& outbox = processed[where.message].outbox;
        for (std::size_t i = 0; i < where.count; ++i) {
            delivery.plan.recipients[i].address = std::move(outbox[where.first + i].recipient);
        }
        OutboxEntry& last = outbox[where.first + where.count - 1];
        delivery.plan_id = std::move(last.plan_id);
        delivery.text = std::move(last.text);
        delivery.reply_to = std::move(last.reply_to);
    }
}

/// Plans @p envelope and stages the plan, or the report of its failure.
void stage_envelope(Staged& staged, const routing::Planner* planner, Envelope envelope, const std::string& strategy,
                    ReportCallback done) {
    if (planner == nullptr) {
        staged.failed.emplace_back(std::move(done), routing::Router::report_for(fail(
                                                        "no_strategy", "this pipeline has no router")));
        return;
    }
    auto planned = planner->plan(std::move(envelope), strategy);
    if (auto* report = std::get_if<DeliveryReport>(&planned)) {
        staged.failed.emplace_back(std::move(done), std::move(*report));
        return;
    }
    stage(staged, std::move(std::get<routing::PlannedDelivery>(planned)), std::move(done));
}

/// What a bot sees while it handles one message: everything it does is staged into that message's
/// ProcessedMessage and becomes durable with it.
class StagedBotContext final : public BotContext, public KeyValueSpace {
public:
    StagedBotContext(Staged& staged, const std::string& bot_name, Overlay& overlay, Store& store,
                     const std::vector<BotInfo>& bots, Logger& logger, const routing::Planner* planner)
        : staged_(staged), bot_name_(bot_name), overlay_(overlay), store_(store), bots_(bots), logger_(logger),
          planner_(planner) {}

    void reply(std::string text) override {
        const Message& m = staged_.processed.message;
        send_to(reply_address(m), std::move(text), m.id);
    }
    void send(const Address& to, std::string text) override { send_to(to, std::move(text), std::nullopt); }
    void route(Envelope envelope, ReportCallback done) override {
        if (envelope.idempotency_key.empty()) envelope.idempotency_key = next_key();
        stage_envelope(staged_, planner_, std::move(envelope), {}, std::move(done));
    }
    KeyValueSpace& state() override { return *this; }
    const std::vector<BotInfo>& bots() const override { return bots_; }
    Logger& logger() override { return logger_; }

    std::optional<std::string> get(const std::string& key) override {
        if (auto it = overlay_.find({bot_name_, key}); it != overlay_.end()) return it->second;
        auto value = store_.get_value(bot_name_, key);
        if (!value) throw ErrorException(value.error());
        return *value;
    }
    void put(const std::string& key, std::string value) override { write(key, std::move(value)); }
    void erase(const std::string& key) override { write(key, std::nullopt); }

private:
    void write(const std::string& key, std::optional<std::string> value) {
        overlay_[{bot_name_, key}] = value;
        staged_.processed.writes.push_back(KeyValueWrite{bot_name_, key, std::move(value)});
    }

    // A plain send is a one-recipient, best-effort plan.
    void send_to(Address to, std::string text, std::optional<std::string> reply_to) {
        routing::PlannedDelivery delivery;
        delivery.plan_id = next_key();
        delivery.plan.recipients.push_back(Recipient{to.to_string(), std::move(to)});
        delivery.plan.batch_size = 1;
        delivery.text = std::move(text);
        delivery.reply_to = std::move(reply_to);
        delivery.deadline_ms = now_ms() + routing::kDefaultDeadlineMs;
        stage(staged_, std::move(delivery), {});
    }

    // Deterministic: handling the same message again (after a crash before commit) yields the same keys, and
    // the outbox keeps the first.
    std::string next_key() { return routing::plan_key(staged_.processed.message, bot_name_, sequence_++); }

    Staged& staged_;
    const std::string& bot_name_;
    Overlay& overlay_;
    Store& store_;
    const std::vector<BotInfo>& bots_;
    Logger& logger_;
    const routing::Planner* planner_;
    std::size_t sequence_ = 0;
};

bool listens(const BotBinding& binding, const Message& message) {
    if (binding.channels.empty()) return true;
    if (binding.channels.count({message.connection, message.channel}) != 0) return true;
    // A private message has no configured channel: a bot hears it if it listens anywhere on that connection.
    if (message.kind == MessageKind::private_message) {
        return std::any_of(binding.channels.begin(), binding.channels.end(),
                           [&](const auto& channel) { return channel.first == message.connection; });
    }
    return false;
}

}  // namespace

struct Pipeline::Impl {
    // The bots and the planner a batch uses, taken as a whole when it starts; reconfigure() swaps them.
    struct Handlers {
        Handlers(std::vector<BotBinding> bots_, std::shared_ptr<const routing::Planner> planner_)
            : bots(std::move(bots_)), planner(std::move(planner_)) {
            for (const BotBinding& binding : bots) infos.push_back(BotInfo{binding.name, binding.bot->commands()});
        }
        std::vector<BotBinding> bots;
        std::vector<BotInfo> infos;
        std::shared_ptr<const routing::Planner> planner;
    };

    // A batch deduplicated and handled by the bots and routes, ready to commit. If the commit fails it is kept whole
    // and committed again as it is: the bots do not handle its messages again (nor see a later message first), and a
    // commit that went through although the store said it failed (a reply lost on the way back) changes nothing the
    // second time, after which its plans are handed on as usual (Store::commit skips what it recorded already).
    struct Handled {
        std::shared_ptr<const Handlers> handlers;  // keeps the bots that staged its callbacks (and their code) loaded
        std::string connection;
        std::vector<ProcessedMessage> processed;
        std::vector<StagedDelivery> deliveries;
        std::vector<Lent> lent;  // one per delivery
        std::vector<std::pair<ReportCallback, DeliveryReport>> failed;
        std::size_t duplicates = 0;
        std::size_t taken = 0;  // messages it took from the lane's queue (what `pending` counts)
        bool retried = false;   // a commit of it failed before
    };

    struct Lane {
        explicit Lane(boost::asio::thread_pool& pool) : strand(boost::asio::make_strand(pool)) {}
        Strand strand;
        std::deque<Item> queue;
        // hold(): channels whose live messages are parked, each with what was parked, in order.
        std::map<std::string, std::vector<Message>> held;
        // A handled batch whose commit failed: committed again, as it was handled, before anything else of the lane.
        std::optional<Handled> uncommitted;
        std::shared_ptr<boost::asio::steady_timer> retry_timer;  // armed while the lane waits to try the store again
        bool scheduled = false;
        std::chrono::milliseconds retry_delay{0};
    };

    Impl(Store& store_, std::vector<BotBinding> bots_, boost::asio::thread_pool& workers_, Logger& logger_,
         std::shared_ptr<const routing::Planner> planner_, DeliveryHandler deliver_, CommitObserver observer_)
        : store(store_), workers(workers_), logger(logger_),
          handlers(std::make_shared<const Handlers>(std::move(bots_), std::move(planner_))),
          deliver(std::move(deliver_)), observer(std::move(observer_)) {}

    // A batch still waiting to be committed again when the pipeline goes is not durable: its messages come again
    // from their platform (their cursor never moved past them), and what its bots routed is reported, not sent.
    ~Impl() {
        for (auto& [connection, l] : lanes) {
            if (!l->uncommitted) continue;
            report_unsent(*l->uncommitted, "shutting_down",
                          "the host stopped before the message that routed this was stored; nothing was sent");
        }
    }
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    Lane& lane(const std::string& connection) {
        auto& slot = lanes[connection];
        if (!slot) slot = std::make_unique<Lane>(workers);
        return *slot;
    }

    void enqueue(const std::string& connection, Item item) {
        std::lock_guard lock(mutex);
        if (closed) return;
        if (std::holds_alternative<Message>(item)) ++stats.received;
        Lane& l = lane(connection);
        l.queue.push_back(std::move(item));
        ++pending;
        schedule(l);
    }

    // Called with the mutex held.
    void schedule(Lane& l) {
        if (l.scheduled || l.queue.empty()) return;
        l.scheduled = true;
        boost::asio::post(l.strand, [this, &l] { drain(l); });
    }

    void drain(Lane& l) {
        std::optional<Handled> uncommitted;
        std::vector<Message> batch;
        std::function<void()> task;
        std::shared_ptr<const Handlers> current;
        {
            std::lock_guard lock(mutex);
            if (given_up) return;  // stopping: what is left is recovered (or reported) later
            current = handlers;
            // A batch whose commit failed goes first; a task runs alone, in its place in the order; messages go in
            // batches up to kMaxBatch.
            if (l.uncommitted) {
                uncommitted = std::move(l.uncommitted);
                l.uncommitted.reset();
            } else if (!l.queue.empty() && std::holds_alternative<std::function<void()>>(l.queue.front())) {
                task = std::move(std::get<std::function<void()>>(l.queue.front()));
                l.queue.pop_front();
            } else {
                while (!l.queue.empty() && batch.size() < kMaxBatch &&
                       std::holds_alternative<Message>(l.queue.front())) {
                    Message& message = std::get<Message>(l.queue.front());
                    if (auto held = l.held.find(message.channel); held != l.held.end() && !message.recovered) {
                        held->second.push_back(std::move(message));
                        ++stats.held;
                        --pending;
                    } else {
                        batch.push_back(std::move(message));
                    }
                    l.queue.pop_front();
                }
            }
        }
        std::size_t done = 1;
        if (uncommitted) {
            done = uncommitted->taken;
            if (!commit(l, *uncommitted)) return;
        } else if (task) {
            try {
                task();
            } catch (const std::exception& e) {
                logger.error(std::string("connection event handler failed: ") + e.what());
            }
        } else if (!batch.empty()) {
            done = batch.size();
            std::optional<Handled> handled = handle(batch, current);
            if (!handled) {
                requeue(l, std::move(batch));
                return;
            }
            if (!commit(l, *handled)) return;
        } else {
            done = 0;  // every message taken was held
        }
        std::lock_guard lock(mutex);
        l.retry_delay = std::chrono::milliseconds(0);
        pending -= done;
        l.scheduled = false;
        schedule(l);
        if (pending == 0) idle.notify_all();
    }

    // The store failed before anything was handled: put the batch back in front, in order, and try again later.
    void requeue(Lane& l, std::vector<Message> batch) {
        {
            std::lock_guard lock(mutex);
            for (auto it = batch.rbegin(); it != batch.rend(); ++it) l.queue.push_front(std::move(*it));
        }
        retry_later(l);
    }

    // Drains the lane again after a growing delay; what failed waits in front (the batch back in the queue, or the
    // handled batch in `uncommitted`).
    void retry_later(Lane& l) {
        std::lock_guard lock(mutex);
        if (given_up) return;
        l.retry_delay = std::clamp(l.retry_delay * 2, std::chrono::milliseconds(100), std::chrono::milliseconds(5000));
        l.retry_timer = std::make_shared<boost::asio::steady_timer>(l.strand, l.retry_delay);
        l.retry_timer->async_wait([this, &l, timer = l.retry_timer](const boost::system::error_code& ec) {
            if (!ec) drain(l);
        });
    }

    void give_up() {
        std::lock_guard lock(mutex);
        given_up = true;
        for (auto& [connection, l] : lanes) {
            // On the lane's strand: the timer is only touched there and under the mutex.
            if (auto timer = l->retry_timer) boost::asio::post(l->strand, [timer] { timer->cancel(); });
        }
    }

    // Dedup, bots and routes: everything up to the commit. nullopt if the store failed during dedup (nothing was
    // handled then, and @p batch is as it was). @p batch is not empty; the messages that get processed are moved
    // out of it into their ProcessedMessage.
    std::optional<Handled> handle(std::vector<Message>& batch, std::shared_ptr<const Handlers> current_handlers) {
        const Handlers& current = *current_handlers;
        const routing::Planner* planner = current.planner.get();
        // One dedup lookup for the whole batch (one transaction or round trip, whatever the store).
        const auto seen = store.are_processed(batch);
        if (!seen) {
            logger.error("store failed during dedup of " + std::to_string(batch.size()) +
                             " message(s), will retry: " + seen.error().to_string(),
                         LogFields{batch.front().connection, batch.front().channel, batch.front().id});
            note_store_failure();
            return std::nullopt;
        }
        std::optional<Handled> result(std::in_place);
        Handled& h = *result;
        h.handlers = std::move(current_handlers);
        h.connection = batch.front().connection;
        h.taken = batch.size();
        std::vector<ProcessedMessage>& processed = h.processed;
        processed.reserve(batch.size());  // Staged holds references into it: no reallocation
        std::unordered_set<std::string> seen_in_batch;
        Overlay overlay;
        std::size_t& duplicates = h.duplicates;
        for (std::size_t i = 0; i < batch.size(); ++i) {
            Message& incoming = batch[i];
            if (!seen_in_batch.insert(incoming.channel + '\n' + incoming.id).second) {
                ++duplicates;
                continue;
            }
            if ((*seen)[i]) {
                ++duplicates;
                logger.debug("duplicate dropped", LogFields{incoming.connection, incoming.channel, incoming.id});
                continue;
            }
            ProcessedMessage& p = processed.emplace_back();
            p.message = std::move(incoming);
            const Message& message = p.message;
            const LogFields where{message.connection, message.channel, message.id};
            Staged staged{p, processed.size() - 1, h.deliveries, h.lent, h.failed};
            if (message.author.is_bot) continue;  // bots never answer bots, routes never relay them: no loops
            for (const BotBinding& binding : current.bots) {
                if (!listens(binding, message)) continue;
                StagedBotContext context(staged, binding.name, overlay, store, current.infos, logger, planner);
                try {
                    binding.bot->on_message(message, context);
                } catch (const std::exception& e) {
                    logger.error("bot '" + binding.name + "' failed: " + e.what(), where);
                } catch (...) {
                    logger.error("bot '" + binding.name + "' failed with an unknown exception", where);
                }
            }
            if (planner != nullptr) relay(staged, *planner, message, where);
        }
        return result;
    }

    // Commits @p h and hands on what its bots staged. Returns false if the store failed: @p h then waits in the
    // lane's `uncommitted`, to be committed again as it is after a delay, and nothing of it was handed on.
    bool commit(Lane& l, Handled& h) {
        if (!h.processed.empty()) {
            auto committed = store.commit(h.processed);
            if (!committed && committed.error().code == "lease_lost") {
                fenced(h, committed.error());
                return true;
            }
            if (!committed) {
                logger.error("store commit of " + std::to_string(h.processed.size()) +
                                 " handled message(s) failed, will commit them again as handled: " +
                                 committed.error().to_string(),
                             LogFields{h.connection, {}, {}});
                note_store_failure();
                h.retried = true;
                {
                    std::lock_guard lock(mutex);
                    l.uncommitted = std::move(h);
                }
                retry_later(l);
                return false;
            }
        }
        std::uint64_t recovered = 0;
        for (const ProcessedMessage& p : h.processed) recovered += p.message.recovered ? 1 : 0;
        {
            std::lock_guard lock(mutex);
            stats.processed += h.processed.size();
            stats.duplicates += h.duplicates;
            stats.recovered += recovered;
        }
        if (observer) observer(h.connection, h.processed, h.duplicates);
        give_back(h.processed, h.deliveries, h.lent);
        for (auto& [done, report] : h.failed) {
            if (done) done(std::move(report));
        }
        // After a failed commit the outbox may hold these plans' entries already (that commit went through after
        // all, its reply lost): the engine reads them first, so a recipient recorded as sent is not sent again.
        if (!h.deliveries.empty()) deliver(std::move(h.deliveries), !h.retried);
        return true;
    }

    // The config's routes: relay the message to each route's target.
    void relay(Staged& staged, const routing::Planner& planner, const Message& message, const LogFields& where) {
        std::size_t index = 0;
        for (auto& routed : planner.routes_for(message)) {
            routed.envelope.idempotency_key = routing::plan_key(message, "route", index++);
            const std::string target = routed.envelope.target;
            stage_envelope(staged, &planner, std::move(routed.envelope), routed.strategy,
                           [this, target, where = std::make_shared<std::string>(std::string(where.message_id))](
                               DeliveryReport report) {
                               if (report.status == DeliveryStatus::delivered) return;
                               logger.warn("route to '" + target + "': " + std::string(to_string(report.status)) +
                                           " (" + report.error_code + ") " + report.detail,
                                           LogFields{{}, {}, *where});
                           });
        }
    }

    // Another host holds the connection's lease now (DESIGN §8): the store refused the commit, nothing of the batch
    // is durable, and it is not this host's to retry — the holder recovers those messages from the shared cursor.
    // The batch is dropped; what bots asked to send is reported retryable, never sent.
    void fenced(Handled& h, const Error& error) {
        const std::size_t count = h.processed.size();
        logger.warn("fenced: " + error.message + "; " + std::to_string(count) +
                        " message(s) left to the lease holder, which recovers them",
                    LogFields{h.connection, {}, {}});
        report_unsent(h, "lease_lost", error.message);
        std::lock_guard lock(mutex);
        stats.fenced += count;
    }

    // Nothing of @p h becomes durable here: what its bots routed is reported retryable with @p code, never sent
    // (plans that failed at once get their own reports).
    static void report_unsent(Handled& h, const char* code, const std::string& detail) {
        DeliveryReport report;
        report.status = DeliveryStatus::retryable;
        report.error_code = code;
        report.detail = detail;
        for (StagedDelivery& staged : h.deliveries) {
            if (staged.done) staged.done(report);
        }
        h.deliveries.clear();
        for (auto& [done, own] : h.failed) {
            if (done) done(std::move(own));
        }
        h.failed.clear();
    }

    void note_store_failure() {
        std::lock_guard lock(mutex);
        ++stats.store_failures;
    }

    Store& store;
    boost::asio::thread_pool& workers;
    Logger& logger;
    std::shared_ptr<const Handlers> handlers;  // guarded by mutex
    DeliveryHandler deliver;
    CommitObserver observer;

    mutable std::mutex mutex;
    std::condition_variable idle;
    std::map<std::string, std::unique_ptr<Lane>> lanes;
    std::size_t pending = 0;
    bool closed = false;
    bool given_up = false;  // give_up(): nothing more is handled or retried
    PipelineStats stats;
};

Pipeline::Pipeline(Store& store, std::vector<BotBinding> bots, const std::vector<std::string>& connections,
                   boost::asio::thread_pool& workers, Logger& logger, std::shared_ptr<const routing::Planner> planner,
                   DeliveryHandler deliver, CommitObserver observer)
    : impl_(std::make_unique<Impl>(store, std::move(bots), workers, logger, std::move(planner), std::move(deliver),
                                   std::move(observer))) {
    std::lock_guard lock(impl_->mutex);
    for (const std::string& connection : connections) impl_->lane(connection);
}

Pipeline::~Pipeline() = default;

void Pipeline::reconfigure(std::vector<BotBinding> bots, std::shared_ptr<const routing::Planner> planner) {
    auto next = std::make_shared<const Impl::Handlers>(std::move(bots), std::move(planner));
    std::shared_ptr<const Impl::Handlers> previous;  // released outside the lock: it may destroy bots
    std::lock_guard lock(impl_->mutex);
    previous = std::exchange(impl_->handlers, std::move(next));
}

void Pipeline::submit(Message message) {
    const std::string connection = message.connection;
    impl_->enqueue(connection, std::move(message));
}

void Pipeline::post(const std::string& connection, std::function<void()> task) {
    impl_->enqueue(connection, std::move(task));
}

void Pipeline::hold(const std::string& connection, const std::string& channel) {
    std::lock_guard lock(impl_->mutex);
    impl_->lane(connection).held.try_emplace(channel);
}

void Pipeline::release(const std::string& connection, const std::string& channel) {
    Impl& impl = *impl_;
    post(connection, [&impl, connection, channel] {
        std::lock_guard lock(impl.mutex);
        Impl::Lane& l = impl.lane(connection);
        auto held = l.held.find(channel);
        if (held == l.held.end()) return;
        std::vector<Message> parked = std::move(held->second);
        l.held.erase(held);
        if (impl.closed) return;
        for (Message& message : parked) l.queue.push_back(std::move(message));
        impl.pending += parked.size();
    });
}

void Pipeline::drop_holds(const std::string& connection) {
    std::lock_guard lock(impl_->mutex);
    impl_->lane(connection).held.clear();
}

bool Pipeline::wait_idle(std::chrono::milliseconds timeout) {
    std::unique_lock lock(impl_->mutex);
    return impl_->idle.wait_for(lock, timeout, [this] { return impl_->pending == 0; });
}

void Pipeline::close() {
    std::lock_guard lock(impl_->mutex);
    impl_->closed = true;
}

void Pipeline::give_up() { impl_->give_up(); }

PipelineStats Pipeline::stats() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->stats;
}

std::map<std::string, std::size_t> Pipeline::queue_depths() const {
    std::lock_guard lock(impl_->mutex);
    std::map<std::string, std::size_t> depths;
    for (const auto& [connection, lane] : impl_->lanes) depths[connection] = lane->queue.size();
    return depths;
}

}  // namespace switchboard::host
