#include "routing/delivery_engine.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/container/small_vector.hpp>
#include <boost/smart_ptr/intrusive_ptr.hpp>
#include <condition_variable>
#include <deque>
#include <exception>
#include <iterator>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <span>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>

#include "ratelimit/scheduler.hpp"

// How the engine works
//
// A plan keeps the message (plan id, text, reply_to) once, one RecipientOutcome per recipient (which becomes the
// report: the final report moves that vector out whole), and a compact Slot per recipient with the engine's state.
//
// Recipients go out in batches: batch k+1 is released only when every recipient of batch k has a final outcome, so
// at most one batch per plan is queued or in flight. A released recipient is queued on its connection's lane. A lane
// sends while it has a free slot under its concurrency limit, each send once the connection's rate-limit scheduler
// grants its route (send_route(address), live): at once when the scheduler can (try_acquire), otherwise the send
// waits for its grant holding its slot, and the grant puts it on the lane's `granted` queue, which the draining
// thread sends first. A recipient cut (deadline, atomic failure) while it waits is not sent; its unused grant is
// reported back to the scheduler with an empty observe(). Retries that are not due yet wait in a heap, and one
// steady_timer per lane wakes it for them. Nothing sleeps.
//
// Completions may come inline (inside Connector::send) or later on any thread. A lane is drained by one thread at a
// time (`pumping`); a completion that arrives while its lane is being drained only flags it (`repump`) and returns,
// so an inline connector is served by a loop, never by recursion. A send completed inline is handed back to
// dispatch() (t_inline_send) and recorded there, its lane slot freed by the draining thread when it takes the lane's
// lock again.
//
// Store calls run on the StoreExecutor: the initial outbox write (Store::outbox_add_plan, which also tells which
// recipients an earlier run of the plan reached; skipped when the entries were persisted with their inbound
// message), group-commit flushes of completed recipients (at most one per plan at a time; what completes while it
// runs joins it, so a slow store gets larger rounds while a crash re-sends at most what was in flight), and the final
// flush, after which the report is delivered, so the outbox already says what the report says. Only a
// deadline report goes out at once, before its flush. Flushes due while a thread drains a lane or starts a batch of
// plans wait in that thread's write scope and go out together (see "write scopes" below): a round is one
// outbox_update_plans call for every plan in it.
//
// Who may touch what: fields fixed before a plan is shared are read freely. A recipient's RecipientOutcome and Slot
// are written under the plan's lock, and only while the recipient is not final (or, for compensation, once no store
// task runs); store tasks read only final recipients, so they need no lock.
//
// Locks: a lane's mutex may be held while taking a plan's mutex (claiming a queued recipient), never the reverse.
// Work decided under a plan's lock (enqueue, retry, flush, report) is collected in `Actions` and run after unlocking.
// Callbacks handed to connectors and to the executor carry a raw Plan* plus an index (they fit std::function's small
// buffer, so no allocation per send); each of them owns one reference of the plan's intrusive count.

namespace switchboard::routing {

namespace engine_detail {

namespace asio = boost::asio;
using SteadyClock = std::chrono::steady_clock;

// Stable codes the engine produces itself (see DeliveryReport in routing.hpp).
constexpr const char* kUnreachable = "unreachable";
constexpr const char* kUnknownConnection = "unknown_connection";
constexpr const char* kAtomicUnreachable = "atomic_unreachable";
constexpr const char* kDeadlineExceeded = "deadline_exceeded";
constexpr const char* kCompensated = "compensated";
constexpr const char* kSendFailed = "send_failed";
// Not sent because another recipient of the same atomic plan failed for good.
constexpr const char* kAborted = "aborted";
// Not sent because the engine's connections were cleared (shutdown); the outbox entry stays pending.
constexpr const char* kShuttingDown = "shutting_down";

// Recipients left pending that the engine keeps for retry_parked() at most; beyond, they wait in the outbox for the
// next start (a connection down for long under heavy traffic must not grow the engine without bound).
constexpr std::size_t kMaxParked = 100'000;
// The longest delay between two sweeps of what is parked for a connection that never said it was back.
constexpr std::chrono::milliseconds kMaxParkedRetry{10 * 60 * 1000};

// Outbox writes reuse per-thread scratch vectors, never shrunk, so building them allocates nothing once warm: a
// plan's initial write (Store::outbox_add_plan) and each round of updates (Store::outbox_update_plans) pass the
// message once and a pointer per recipient. Up to kScratchRecipients recipients (well under a MB per thread); bigger
// ones build a vector of their own.
constexpr std::size_t kScratchRecipients = 16'384;

// The first @p n elements of @p scratch, which grows when it must and never shrinks (resize() would take its
// out-of-line growth path on every call). The caller sets every field of each element it uses.
template <class T>
std::span<T> first_of(std::vector<T>& scratch, std::size_t n) {
    if (scratch.size() < n) scratch.resize(n);
    return std::span<T>(scratch.data(), n);
}

struct Plan;
class Core;

// Guards a few pointer writes per plan (Core::running_), where a mutex would cost more than the work; the one long
// holder, resume() walking the list, is rare.
class SpinLock {
public:
    void lock() noexcept {
        while (flag_.test_and_set(std::memory_order_acquire)) std::this_thread::yield();
    }
    void unlock() noexcept { flag_.clear(std::memory_order_release); }

private:
    std::atomic_flag flag_ = ATOMIC_FLAG_INIT;
};

enum class Op : std::uint8_t { send, remove };

struct LaneItem {
    Plan* plan;
    std::uint32_t index;
    Op op;
};

struct DelayedItem {
    SteadyClock::time_point due;
    LaneItem item;
};

// Min-heap order for DelayedItem.
inline bool later_due(const DelayedItem& a, const DelayedItem& b) noexcept { return a.due > b.due; }

// A send the scheduler granted after a wait, with its route: a plan that reported has given its addresses away.
struct GrantedItem {
    LaneItem item;
    std::string route;
};

// One connection: its connector, its limits, its rate-limit scheduler and its queues.
struct Lane {
    Lane(std::string name_, std::shared_ptr<Connector> connector_, const ConnectionLimits& limits,
         std::shared_ptr<ratelimit::Scheduler> rate_limits_, bool owns_rate_limits_, asio::io_context& io)
        : name(std::move(name_)),
          connector(std::move(connector_)),
          can_delete(connector->capabilities().can_delete),
          concurrency(limits.concurrency == 0 ? std::numeric_limits<std::uint32_t>::max() : limits.concurrency),
          rate_limits(std::move(rate_limits_)),
          owns_rate_limits(owns_rate_limits_),
          timer(io) {
        request.priority = RequestPriority::live;
    }

    const std::string name;
    std::shared_ptr<Connector> connector;  // let go when the lane is closed and nobody is sending through it
    const bool can_delete;
    const std::uint32_t concurrency;
    const std::shared_ptr<ratelimit::Scheduler> rate_limits;  // the connection's, shared with its connector
    const bool owns_rate_limits;                              // made by the engine: shut down with the lane

    std::mutex mutex;
    std::deque<LaneItem> queue;
    std::deque<GrantedItem> granted;  // sends the scheduler granted after a wait; each holds a slot (in_flight)
    std::vector<DelayedItem> delayed;  // retries not due yet, a min-heap by due time
    std::uint32_t in_flight = 0;  // sends and deletions at the connector, and sends waiting for their grant
    bool pumping = false;  // a thread is draining the queue
    bool repump = false;   // something changed while it was: look again
    bool closed = false;   // clear_connections(): nothing more is sent here
    asio::steady_timer timer;
    bool timer_armed = false;
    SteadyClock::time_point timer_due{};
    std::uint64_t timer_generation = 0;
    OutboundMessage scratch;         // filled by the draining thread only; reused, so no allocation per send once warm
    std::uint64_t scratch_plan = 0;  // serial of the plan whose text, reply_to and key prefix it holds
    std::size_t scratch_prefix = 0;  // length of "plan_id|connection/" (or "/@") in scratch.idempotency_key
    RateRequest request;             // the draining thread's scratch for the route of a send
};

enum class SlotState : std::uint8_t {
    idle,           // not released (yet)
    queued,         // waiting in its lane
    in_flight,      // handed to the connector
    retry_wait,     // waiting in its lane's delay heap
    remove_queued,  // compensation: its deletion waits in its lane
    removing,       // compensation: deletion handed to the connector
    done,           // final
};

enum class Outcome : std::uint8_t {
    none,       // not final
    delivered,  // sent in this run, or found `sent` in the outbox
    failed,     // for good: unreachable, unknown connection, aborted, or a connector's permanent error
    retryable,  // not sent yet; the outbox entry stays pending
    withdrawn,  // sent, then deleted to compensate
    cut,        // not sent: the deadline came first; the outbox entry stays pending
};

struct Slot {
    Lane* lane = nullptr;              // null: no connector for its connection
    std::int64_t retry_after_ms = 0;   // for a retryable outcome
    std::uint32_t attempts = 0;        // in this run
    std::int32_t stored_attempts = 0;  // the outbox entry's count, over every run
    SlotState state = SlotState::idle;
    Outcome outcome = Outcome::none;
    OutboxState entry_state = OutboxState::pending;
    bool sendable = false;  // set when sending starts, then fixed
};

using IndexList = boost::container::small_vector<std::uint32_t, 2>;

struct Plan {
    explicit Plan(std::shared_ptr<Core> engine_) noexcept : engine(std::move(engine_)) {}

    std::atomic<std::uint32_t> refs{1};  // the first one is the plan's own, given up when it becomes idle
    const std::shared_ptr<Core> engine;
    Plan* running_prev = nullptr;  // the engine's list of plans not idle yet (Core::running_), under its spin lock
    Plan* running_next = nullptr;

    // Set before the plan is shared, then read-only.
    std::uint64_t serial = 0;  // unique per engine, unlike the address of a plan
    std::string plan_id;
    std::string text;
    std::optional<std::string> reply_to;
    std::int64_t created_ms = 0;
    SteadyClock::time_point started;  // for EngineOptions::on_report (set only when there is one)
    std::int64_t deadline_ms = 0;
    std::uint32_t batch_size = 0;
    DeliveryMode mode = DeliveryMode::best_effort;
    OnFailure on_failure = OnFailure::keep;

    std::mutex mutex;
    ReportCallback done;
    DeliveryReport report;               // built once (report_locked()), then only read by the thread that built it
    std::vector<std::uint32_t> removes;  // compensation: the deletions finalize_locked() decided, written once
    std::vector<RecipientOutcome> out;  // the report's recipients, in plan order
    boost::container::small_vector<Slot, 1> slots;
    IndexList dirty;                // final recipients whose outbox entries the store has not seen yet
    IndexList final_dirty;          // what the final flush writes
    std::size_t next_batch = 0;     // first slot not released yet
    std::size_t unresolved = 0;     // recipients of the current batch (or deletions) not final
    std::uint32_t in_flight = 0;    // sends and deletions at connectors
    std::uint32_t store_tasks = 0;  // store work posted and not finished
    IndexList flushing;             // what the running group flush writes
    bool flush_pending = false;     // a group flush is posted or running
    std::string atomic_failure_code;
    bool in_setup = false;
    bool stopped = false;          // nothing more is released (deadline, atomic failure, shutdown)
    bool atomic_rejected = false;  // atomic group with an unreachable member
    bool atomic_failed = false;    // atomic plan with a permanent failure after sending started
    bool compensation_started = false;
    bool finishing = false;          // the final flush is under way
    bool waiting_for_tasks = false;  // the final flush is done; finalize when the other store tasks are
    bool deadline_hit = false;
    bool unrecorded = false;                 // the outbox refused its entries: nothing of it may be sent later
    bool late_expected = false;              // reported with sends in flight: see expect_late_locked()
    bool reported = false;                   // the report was built (done() is called right after, once)
    std::atomic<bool> reported_flag{false};  // `reported`, readable without the lock
    bool idle = false;                       // no work left; counted out of the engine's active plans
    std::optional<asio::steady_timer> deadline_timer;
};

// The memory of finished plans is kept for the next ones: each thread keeps up to kPooledPlans of them. A steady flow
// of plans then allocates no Plan; above all, a batch of them (execute_all) does not free a hundred kilobytes of
// neighbouring chunks at once, which makes glibc merge them and sort every small free chunk it holds again
// (malloc_consolidate), slowing the allocations that follow.
constexpr std::size_t kPooledPlans = 512;

// Trivially destructible, so a plan released while the thread's other thread_locals are being destroyed still finds
// it; PlanMemoryCloser frees what it holds when the thread ends, after which plans are freed at once.
struct PlanMemory {
    std::array<void*, kPooledPlans> free{};
    std::size_t count = 0;
    bool closed = false;
};

inline thread_local PlanMemory t_plan_memory;

struct PlanMemoryCloser {
    ~PlanMemoryCloser() {
        for (std::size_t i = 0; i < t_plan_memory.count; ++i) ::operator delete(t_plan_memory.free[i]);
        t_plan_memory.count = 0;
        t_plan_memory.closed = true;
    }
};

inline thread_local PlanMemoryCloser t_plan_memory_closer;

inline Plan* new_plan(std::shared_ptr<Core> engine) {
    PlanMemory& pool = t_plan_memory;
    void* memory = pool.count > 0 ? pool.free[--pool.count] : ::operator new(sizeof(Plan));
    return new (memory) Plan(std::move(engine));  // does not throw: every member starts empty
}

inline void free_plan(Plan* plan) noexcept {
    plan->~Plan();
    PlanMemory& pool = t_plan_memory;
    if (pool.closed || pool.count == kPooledPlans) {
        ::operator delete(plan);
        return;
    }
    static_cast<void>(&t_plan_memory_closer);  // constructed on this thread's first use, to free the pool at its end
    pool.free[pool.count++] = plan;
}

inline void intrusive_ptr_add_ref(Plan* plan) noexcept { plan->refs.fetch_add(1, std::memory_order_relaxed); }
inline void intrusive_ptr_release(Plan* plan) noexcept {
    if (plan->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        free_plan(plan);
    }
}

// What a step decided under a plan's lock, carried out after unlocking. Trivially destructible: what it would carry
// that owns memory (the report, the deletions) waits in the plan.
struct Actions {
    std::size_t release_begin = 0;  // slot range to queue
    std::size_t release_end = 0;
    std::uint32_t retry_index = 0;
    std::int64_t retry_delay_ms = 0;
    bool retry = false;
    bool report = false;   // Plan::report is built: hand it to Plan::done
    bool removes = false;  // queue Plan::removes
    bool setup = false;
    bool group_flush = false;
    bool final_flush = false;
    bool become_idle = false;
};
static_assert(std::is_trivially_destructible_v<Actions>);

// ---- write scopes -----------------------------------------------------------------------------------------------
//
// A store write (group or final flush) normally goes to the store executor as soon as it is due. While a thread
// drains a lane, or starts a batch of plans (execute_all, resume), it holds a write scope instead: the writes due on
// that thread are held there and written together — one Store::outbox_update_plans call for every plan concerned — once
// the scope has seen `limit` completions (the lane's concurrency limit, or kRoundLimit for a batch) or closes. So
// a send that completes inline is recorded after at most `limit` sends, as many as an asynchronous connector may
// have in flight, and a batch of one-recipient replies costs one store transaction rather than one each. A thread
// holds at most one scope (the outermost one wins).

enum class WriteKind : std::uint8_t { group, final };

struct DeferredWrite {
    Plan* plan;
    WriteKind kind;
};

// Completions per write round at most, whatever a scope asks for.
constexpr std::size_t kRoundLimit = 256;

struct WriteScope {
    Core* core = nullptr;
    std::size_t limit = 1;
    std::size_t completions = 0;
    boost::container::small_vector<DeferredWrite, 8> writes;
};

inline thread_local WriteScope* t_write_scope = nullptr;

// The send this thread has in Connector::send right now, so that a connector completing it inline hands the result
// back to dispatch() (see there).
struct InlineSend {
    Plan* plan;
    std::uint32_t index;
    std::optional<Result<SentMessage>> result;
};

inline thread_local InlineSend* t_inline_send = nullptr;

// Hears the report of a plan resume_all() started, after it was logged.
using ReportHook = std::function<void(const DeliveryReport&)>;

// Recipients of one plan still pending, with the plan's message once: what resume() and retry_parked() send again.
struct PendingPlan {
    struct Recipient {
        Address address;
        std::int32_t attempts = 0;  // the outbox entry's count
    };
    std::string plan_id;
    std::string text;
    std::optional<std::string> reply_to;
    std::vector<Recipient> recipients;
};

class Core : public std::enable_shared_from_this<Core> {
public:
    Core(Store& store, const Directory& directory, asio::io_context& io, StoreExecutor store_executor, Logger& logger,
         EngineOptions options, Clock clock)
        : store_(store),
          directory_(directory),
          io_(io),
          store_executor_(std::move(store_executor)),
          logger_(logger),
          options_(options),
          clock_(clock ? std::move(clock) : Clock([] {
              return std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                  .count();
          })),
          parked_timer_(io),
          unrecorded_timer_(io) {
        if (options_.max_attempts == 0) options_.max_attempts = 1;
        if (options_.parked_retry <= std::chrono::milliseconds::zero()) options_.parked_retry = kMaxParkedRetry;
        parked_delay_ = options_.parked_retry;
    }

    Core(const Core&) = delete;
    Core& operator=(const Core&) = delete;
    ~Core() = default;

    void add_connection(const std::string& name, std::shared_ptr<Connector> connector, ConnectionLimits limits,
                        std::shared_ptr<ratelimit::Scheduler> rate_limits) {
        std::unique_ptr<Lane> lane;
        if (connector) {
            const bool owned = !rate_limits;
            if (owned) {
                ratelimit::SchedulerOptions options;
                options.connection = name;
                rate_limits = std::make_shared<ratelimit::Scheduler>(io_, logger_, options);
                if (limits.rate_per_second > 0) rate_limits->configure_global(limits.rate_per_second, limits.burst);
            }
            lane = std::make_unique<Lane>(name, std::move(connector), limits, std::move(rate_limits), owned, io_);
        }
        std::lock_guard lock(lanes_mutex_);
        auto it = std::find_if(lanes_.begin(), lanes_.end(), [&](const auto& l) { return l.first == name; });
        if (!lane) {
            if (it != lanes_.end()) lanes_.erase(it);
            return;
        }
        // A replaced lane keeps draining what it holds with its old connector.
        if (it != lanes_.end()) {
            it->second = lane.get();
        } else {
            lanes_.emplace_back(name, lane.get());
        }
        all_lanes_.push_back(std::move(lane));
    }

    void clear_connections() {
        std::vector<Lane*> lanes;
        {
            std::lock_guard lock(lanes_mutex_);
            for (const auto& entry : lanes_) lanes.push_back(entry.second);
            lanes_.clear();
        }
        close_lanes(lanes);
    }

    bool retire(const std::string& name, std::chrono::milliseconds timeout) {
        std::vector<Lane*> retired;
        {
            std::lock_guard lock(lanes_mutex_);
            const auto current =
                std::find_if(lanes_.begin(), lanes_.end(), [&](const auto& l) { return l.first == name; });
            for (const auto& lane : all_lanes_) {
                if (lane->name == name && (current == lanes_.end() || current->second != lane.get())) {
                    retired.push_back(lane.get());
                }
            }
        }
        const auto empty = [](Lane& lane) {
            std::lock_guard lock(lane.mutex);
            return lane.closed || (lane.queue.empty() && lane.granted.empty() && lane.delayed.empty() &&
                                   lane.in_flight == 0 && !lane.pumping);
        };
        // Lanes signal nobody when they empty; a reload waits rarely and briefly, so it looks every few ms.
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        bool drained = false;
        while (!(drained = std::all_of(retired.begin(), retired.end(), [&](Lane* lane) { return empty(*lane); })) &&
               std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        close_lanes(retired);
        return drained;
    }

    // At destruction: closes every lane ever made, so no lane timer keeps the engine alive, and tries once more to
    // record what the store refused.
    void shutdown() {
        std::vector<Lane*> lanes;
        {
            std::lock_guard lock(lanes_mutex_);
            lanes_.clear();
            for (const auto& lane : all_lanes_) lanes.push_back(lane.get());
        }
        close_lanes(lanes);
        {
            std::lock_guard lock(parked_mutex_);
            parked_closed_ = true;
            parked_timer_.cancel();
        }
        {
            std::lock_guard lock(unrecorded_mutex_);
            unrecorded_closed_ = true;
            unrecorded_timer_.cancel();
        }
        record_again();
    }

    // By reference: the caller's copy is taken apart here, not moved through every layer.
    void execute(PlannedDelivery& delivery, bool persisted, ReportCallback& done) {
        const boost::intrusive_ptr<Plan> plan = launch(delivery, persisted, done);
        arm_deadline(*plan);
    }

    void execute_all(std::vector<Execution> executions, bool persisted) {
        std::vector<boost::intrusive_ptr<Plan>> plans;
        plans.reserve(executions.size());
        {
            WriteScopeGuard writes(*this, kRoundLimit);
            for (Execution& execution : executions) {
                plans.push_back(launch(execution.delivery, persisted, execution.done));
            }
        }
        // After the scope wrote what it held: plans that finished meanwhile need no timer.
        for (const auto& plan : plans) arm_deadline(*plan);
    }

    // A new plan of this engine, counted in progress, with the message moved in from @p plan_id, @p text and
    // @p reply_to; it takes over what an earlier run of the same id left parked.
    boost::intrusive_ptr<Plan> make_plan(std::string& plan_id, std::string& text, std::optional<std::string>& reply_to,
                                         std::int64_t now) {
        boost::intrusive_ptr<Plan> plan(new_plan(shared_from_this()));
        active_.fetch_add(1, std::memory_order_relaxed);
        Plan& p = *plan;
        p.serial = next_serial_.fetch_add(1, std::memory_order_relaxed) + 1;
        p.plan_id = std::move(plan_id);
        {
            std::lock_guard lock(running_lock_);
            p.running_next = running_;
            if (running_ != nullptr) running_->running_prev = &p;
            running_ = &p;
        }
        unpark(p.plan_id);
        p.text = std::move(text);
        p.reply_to = std::move(reply_to);
        p.created_ms = now;
        if (options_.on_report) p.started = SteadyClock::now();  // only the observer hears the elapsed time
        return plan;
    }

    // Starts a plan, moving what it keeps out of @p delivery and @p done; the caller arms its deadline.
    boost::intrusive_ptr<Plan> launch(PlannedDelivery& delivery, bool persisted, ReportCallback& done) {
        // The clock is read here only when something needs it now: a deadline of the envelope's own to check, or
        // entries written already (persisted). Otherwise setup() reads it once, just before the outbox write, for
        // the entries' time and the default deadline (which arm_deadline() sets instead if it comes first): a clock
        // read costs ~25 ns on a VM, a twentieth of a private message.
        const bool clock_now = delivery.deadline_ms != 0 || persisted;
        const std::int64_t now = clock_now ? clock_() : 0;
        boost::intrusive_ptr<Plan> plan = make_plan(delivery.plan_id, delivery.text, delivery.reply_to, now);
        Plan& p = *plan;
        p.deadline_ms = delivery.deadline_ms != 0 ? delivery.deadline_ms : clock_now ? now + kDefaultDeadlineMs : 0;
        p.batch_size = batch_size(delivery.plan.batch_size);
        p.mode = delivery.plan.mode;
        p.on_failure = delivery.plan.on_failure;
        p.done = std::move(done);

        std::vector<Recipient>& recipients = delivery.plan.recipients;
        const std::size_t n = recipients.size();
        p.out.reserve(n);  // each outcome is then made in place from its recipient
        p.slots.resize(n);
        {
            std::lock_guard lock(lanes_mutex_);
            const std::string* last_connection = nullptr;  // consecutive recipients mostly share a connection
            Lane* last_lane = nullptr;
            for (std::size_t i = 0; i < n; ++i) {
                RecipientOutcome& out =
                    p.out.emplace_back(std::move(recipients[i].name), std::move(recipients[i].address));
                if (last_connection == nullptr || *last_connection != out.address.connection) {
                    last_lane = find_lane_locked(out.address.connection);
                    last_connection = &out.address.connection;
                }
                p.slots[i].lane = last_lane;
            }
        }
        // The recipients were moved out: their vector goes now, not after the plan (with an inline store and
        // connector that is after the last send), so a large fan-out reuses its memory instead of touching more.
        std::vector<Recipient>().swap(recipients);
        start(p, persisted, true, now);
        return plan;
    }

    void resume(std::vector<OutboxEntry> pending) {
        {
            // A plan of this engine still running (a lease taken back while it retried) finishes its own entries,
            // and parks what it leaves pending: resumed too, they would go out twice.
            std::set<std::string_view> running;
            std::lock_guard lock(running_lock_);
            for (const Plan* p = running_; p != nullptr; p = p->running_next) running.insert(p->plan_id);
            if (!running.empty()) {
                std::erase_if(pending, [&](const OutboxEntry& entry) { return running.contains(entry.plan_id); });
            }
        }
        if (unrecorded_count_.load(std::memory_order_relaxed) > 0) {
            // Final here, and written again until the store takes it (record_later()): not sent again.
            std::lock_guard lock(unrecorded_mutex_);
            std::erase_if(pending, [&](const OutboxEntry& entry) {
                return unrecorded_.contains(unrecorded_key(entry.plan_id, entry.recipient));
            });
        }
        resume_all(by_plan(pending));
    }

    // The connection is back: what waits for it goes out now, and the sweep starts again from its first delay.
    void retry_parked(const std::string& connection) {
        {
            std::lock_guard lock(parked_mutex_);
            parked_delay_ = options_.parked_retry;
        }
        resume_parked(connection, true);
    }

    // Sends again what plans left parked for @p connection, if it has a connector: it is @p back, or the plan a sweep
    // tried first (probe_parked()) got through.
    void resume_parked(const std::string& connection, bool back) {
        if (!has_lane(connection)) return;
        Taken taken = take_parked(connection, false);
        if (taken.plans.empty()) return;
        logger_.info(back ? "delivery: '" + connection + "' is back; sending again " + std::to_string(taken.count) +
                                " recipient(s) that plans left pending while it was not"
                          : sending_again(connection, taken.count),
                     LogFields{connection, {}, {}});
        resume_all(std::move(taken.plans));
    }

    // The log line of a sweep's resend: @p count recipients on @p connection, which never said it was back.
    static std::string sending_again(const std::string& connection, std::size_t count) {
        return "delivery: sending again " + std::to_string(count) + " recipient(s) on '" + connection +
               "' that plans left pending (it did not drop, so it never said it was back)";
    }

    // A sweep: sends again what one plan left parked for @p connection, and the rest once that plan's report is not
    // retryable. So a platform that keeps answering "try later" sees one plan's recipients per sweep, not everything
    // that waits for it (up to kMaxParked recipients, each with max_attempts attempts). Successive sweeps try the
    // plans in turn, so one whose recipient keeps failing does not hold back the others.
    void probe_parked(const std::string& connection) {
        if (!has_lane(connection)) return;
        Taken taken = take_parked(connection, true);
        if (taken.plans.empty()) return;
        logger_.info(sending_again(connection, taken.count) +
                         (taken.left > 0 ? "; the other " + std::to_string(taken.left) +
                                               " waiting there follow once these are no longer retryable"
                                         : std::string()),
                     LogFields{connection, {}, {}});
        ReportHook then;
        if (taken.left > 0) {
            then = [self = shared_from_this(), connection](const DeliveryReport& report) {
                if (report.status == DeliveryStatus::retryable) return;  // parked again: the next sweep tries again
                asio::post(self->io_, [self, connection] { self->resume_parked(connection, false); });
            };
        }
        resume_all(std::move(taken.plans), then);
    }

    [[nodiscard]] bool has_lane(const std::string& connection) {
        // Without a connector for it (cleared at shutdown, removed by a reload) what waits for it waits for the next
        // start: resumed now, it would end unknown_connection, for good.
        std::lock_guard lock(lanes_mutex_);
        return find_lane_locked(connection) != nullptr;
    }

    struct Taken {
        std::vector<PendingPlan> plans;  // each plan's message once, with its recipients on the connection
        std::size_t count = 0;           // recipients in `plans`
        std::size_t left = 0;            // recipients on the connection still parked
    };

    // Takes out of the parked plans the recipients on @p connection: of every plan, or, for @p one_plan, of the first
    // plan that has some after the one the last probe of the connection took (in plan id order, wrapping around).
    Taken take_parked(const std::string& connection, bool one_plan) {
        Taken taken;
        const auto on_connection_of = [&](const PendingPlan::Recipient& recipient) {
            return recipient.address.connection == connection;
        };
        std::lock_guard lock(parked_mutex_);
        const std::string* only = nullptr;  // the plan to take from, for one_plan
        if (one_plan) {
            const auto has_some = [&](const auto& parked) {
                return std::any_of(parked.second.recipients.begin(), parked.second.recipients.end(), on_connection_of);
            };
            std::string& last = last_probe_[connection];
            auto next = std::find_if(parked_.upper_bound(last), parked_.end(), has_some);
            if (next == parked_.end()) next = std::find_if(parked_.begin(), parked_.end(), has_some);
            if (next == parked_.end()) return taken;
            last = next->first;
            only = &last;
        }
        for (auto it = parked_.begin(); it != parked_.end();) {
            PendingPlan& left = it->second;
            if (only != nullptr && it->first != *only) {  // not taken: only counted, left as it is
                taken.left += static_cast<std::size_t>(
                    std::count_if(left.recipients.begin(), left.recipients.end(), on_connection_of));
                ++it;
                continue;
            }
            const auto mine =
                std::stable_partition(left.recipients.begin(), left.recipients.end(),
                                      [&](const auto& recipient) { return !on_connection_of(recipient); });
            const auto on_connection = static_cast<std::size_t>(left.recipients.end() - mine);
            if (on_connection == 0) {
                ++it;
                continue;
            }
            taken.count += on_connection;
            if (on_connection == left.recipients.size()) {
                taken.plans.push_back(std::move(left));
                it = parked_.erase(it);
                continue;
            }
            PendingPlan& plan = taken.plans.emplace_back();  // the others stay parked for their connections
            plan.plan_id = left.plan_id;
            plan.text = left.text;
            plan.reply_to = left.reply_to;
            plan.recipients.assign(std::make_move_iterator(mine), std::make_move_iterator(left.recipients.end()));
            left.recipients.erase(mine, left.recipients.end());
            ++it;
        }
        parked_entries_ -= taken.count;
        count_parked_ids();
        return taken;
    }

    [[nodiscard]] std::size_t parked() const {
        std::lock_guard lock(parked_mutex_);
        return parked_entries_;
    }

    // @p pending grouped into plans, one per (plan id, text, reply_to): entries of one plan normally share the
    // message. The addresses move out of @p pending.
    static std::vector<PendingPlan> by_plan(std::vector<OutboxEntry>& pending) {
        std::map<std::tuple<std::string_view, std::string_view, std::optional<std::string_view>>, std::size_t> index;
        std::vector<PendingPlan> plans;
        for (OutboxEntry& entry : pending) {
            std::optional<std::string_view> reply;
            if (entry.reply_to) reply = *entry.reply_to;
            auto [it, inserted] = index.try_emplace({entry.plan_id, entry.text, reply}, plans.size());
            if (inserted) {
                PendingPlan& plan = plans.emplace_back();
                plan.plan_id = entry.plan_id;  // copies: the index's keys look into the entries
                plan.text = entry.text;
                plan.reply_to = entry.reply_to;
            }
            plans[it->second].recipients.push_back(PendingPlan::Recipient{std::move(entry.recipient), entry.attempts});
        }
        return plans;
    }

    // Sends each of @p plans' recipients once, as best-effort plans due in 30 s whose reports are logged (and then
    // handed to @p then, if given), their outbox writes grouped.
    void resume_all(std::vector<PendingPlan> plans, const ReportHook& then = {}) {
        std::vector<boost::intrusive_ptr<Plan>> started;
        started.reserve(plans.size());
        {
            WriteScopeGuard writes(*this, kRoundLimit);
            for (PendingPlan& plan : plans) started.push_back(resume_plan(plan, then));
        }
        for (const auto& plan : started) arm_deadline(*plan);
    }

    boost::intrusive_ptr<Plan> resume_plan(PendingPlan& pending, const ReportHook& then) {
        const std::int64_t now = clock_();
        boost::intrusive_ptr<Plan> plan = make_plan(pending.plan_id, pending.text, pending.reply_to, now);
        Plan& p = *plan;
        p.deadline_ms = now + kDefaultDeadlineMs;
        p.batch_size = batch_size(0);
        p.done = [&logger = logger_, plan_id = p.plan_id, then](DeliveryReport report) {
            log_resumed(logger, plan_id, report);
            if (then) then(report);
        };
        const std::size_t n = pending.recipients.size();
        p.out.reserve(n);
        p.slots.resize(n);
        {
            std::lock_guard lock(lanes_mutex_);
            for (std::size_t i = 0; i < n; ++i) {
                PendingPlan::Recipient& recipient = pending.recipients[i];
                std::string name = recipient.address.to_string();
                p.out.emplace_back(std::move(name), std::move(recipient.address));
                p.slots[i].stored_attempts = recipient.attempts;
                p.slots[i].lane = find_lane_locked(p.out[i].address.connection);
            }
        }
        // No reachability check: at start-up the connections are still connecting. A connector that is not ready
        // answers retryable, and the engine retries.
        start(p, true, false, now);
        return plan;
    }

    bool wait_idle(std::chrono::milliseconds timeout) {
        std::unique_lock lock(idle_mutex_);
        // A plan going idle takes idle_mutex_ to notify only while someone waits.
        waiters_.fetch_add(1);
        const bool idle = idle_cv_.wait_for(lock, timeout, [this] { return active_.load() == 0; });
        waiters_.fetch_sub(1);
        return idle;
    }

    [[nodiscard]] std::size_t in_progress() const { return active_.load(std::memory_order_relaxed); }

    // ---- entry points of callbacks (public so that the lambdas handed out can reach them) ----------------------

    void on_deadline(Plan& p) {
        Actions actions;
        {
            std::lock_guard lock(p.mutex);
            deadline_locked(p, actions);
        }
        run(p, actions);
    }

    // The scheduler's answer for a send that waited for its grant (on the scheduler's strand).
    void on_granted(Plan& p, std::uint32_t index, std::string& route, Result<void> granted) {
        Lane& lane = *p.slots[index].lane;  // fixed at setup
        const LaneItem item{&p, index, Op::send};
        std::unique_lock lock(lane.mutex);
        if (granted && !lane.closed) {
            lane.granted.push_back(GrantedItem{item, std::move(route)});
            pump(lane, std::move(lock));  // or the thread draining the lane sends it
            return;
        }
        --lane.in_flight;
        lock.unlock();
        if (granted) lane.rate_limits->observe(route, RateLimitInfo{});  // closed meanwhile: unused
        on_dropped(p, item);  // cancelled (shutdown) or closed: stays pending; releases the queue's reference
    }

    void on_sent(Plan& p, std::uint32_t index, Result<SentMessage>&& result) {
        Lane& lane = *p.slots[index].lane;  // fixed at setup
        const bool pump_lane = release_lane_slot(lane);
        complete_send(p, index, result);
        if (pump_lane) pump(lane);
        intrusive_ptr_release(&p);  // the send's reference, kept until the lane (which the plan keeps alive) is pumped
    }

    void on_removed(Plan& p, std::uint32_t index, Result<void> result) {
        Lane& lane = *p.slots[index].lane;
        const bool pump_lane = release_lane_slot(lane);
        if (!result) {
            // Address and message id are not written while the deletion is out.
            logger_.warn("delivery: could not delete the message sent to " + p.out[index].address.to_string() +
                             " while compensating plan '" + p.plan_id + "': " + result.error().to_string(),
                         LogFields{lane.name, p.out[index].address.target, p.out[index].message_id});
        }
        Actions actions;
        {
            std::lock_guard lock(p.mutex);
            Slot& slot = p.slots[index];
            --p.in_flight;
            slot.state = SlotState::done;
            if (result) {
                slot.outcome = Outcome::withdrawn;
                slot.entry_state = OutboxState::withdrawn;
                p.out[index].delivered = false;
                p.out[index].error_code = kCompensated;
                p.dirty.push_back(index);
            }
            if (p.reported) {
                request_flush_locked(p, actions);
                check_idle_locked(p, actions);
            } else {
                --p.unresolved;
                advance_locked(p, actions);
                request_flush_locked(p, actions);
            }
        }
        run(p, actions);
        note_completion();
        if (pump_lane) pump(lane);
        intrusive_ptr_release(&p);
    }

    void setup(Plan& p) {
        // A plan launch() did not time starts its clock here: created_ms is read by this thread only, the deadline
        // is set under the plan's lock below (unless arm_deadline() set it first).
        std::int64_t started = 0;
        if (p.created_ms == 0) started = p.created_ms = clock_();
        // Adds the plan's entries, and learns which recipients an earlier run of it (a retried envelope) reached.
        auto existing = write_new_entries(p);
        Actions actions;
        {
            std::lock_guard lock(p.mutex);
            if (existing && !existing->empty()) apply_existing_locked(p, *existing);
            --p.store_tasks;
            p.in_setup = false;
            if (!existing) {
                const Error& error = existing.error();
                logger_.error("delivery: could not write the outbox entries of plan '" + p.plan_id +
                              "': " + error.to_string() + "; nothing was sent, the report says retryable");
                p.unrecorded = true;
                if (!p.reported) {
                    for (std::size_t i = 0; i < p.slots.size(); ++i) {
                        Slot& slot = p.slots[i];
                        if (slot.state == SlotState::done) continue;
                        slot.state = SlotState::done;
                        slot.outcome = Outcome::retryable;
                        slot.retry_after_ms = options_.initial_backoff.count();
                        p.out[i].error_code = error.code.empty() ? "store_failed" : error.code;
                    }
                    p.stopped = true;
                    report_locked(p, actions);
                }
            } else if (!p.reported) {
                // A deadline of the plan's own is checked again after the write; the default one is 30 s from its
                // start, so the read before the write serves.
                const std::int64_t now = started != 0 ? started : clock_();
                if (p.deadline_ms == 0) p.deadline_ms = now + kDefaultDeadlineMs;
                start_sending_locked(p, actions, now);
                request_flush_locked(p, actions);
            }
            check_idle_locked(p, actions);
        }
        run(p, actions);
    }

    // Group commit: one round writes what is dirty in every plan of @p writes with one store call, then whatever
    // became dirty in those plans meanwhile, until nothing is left. Completions that arrive while a round runs join
    // the next, so a slow store sees fewer, larger rounds.
    void write_rounds(std::vector<DeferredWrite> writes) {
        std::vector<DeferredWrite> again;
        while (!writes.empty()) {
            write_round(writes);
            again.clear();
            for (const DeferredWrite& write : writes) {
                if (write.kind == WriteKind::group && !group_write_done(*write.plan)) again.push_back(write);
            }
            writes.swap(again);
        }
    }

    // As write_rounds() for one plan, without a vector.
    void write_rounds(Plan& p, WriteKind kind) {
        const DeferredWrite write{&p, kind};
        do {
            write_round(std::span(&write, 1));
        } while (kind == WriteKind::group && !group_write_done(p));
    }

    // Opens a write scope on this thread unless one is open: while it is, the outbox writes of what completes on
    // this thread are held and written in rounds of up to @p limit completions.
    class WriteScopeGuard {
    public:
        WriteScopeGuard(Core& core, std::size_t limit) {
            if (t_write_scope != nullptr) return;
            scope_.emplace();
            scope_->core = &core;
            scope_->limit = std::clamp<std::size_t>(limit, 1, kRoundLimit);
            t_write_scope = &*scope_;
        }
        ~WriteScopeGuard() {
            if (!scope_) return;
            t_write_scope = nullptr;
            scope_->core->flush_scope(*scope_);
        }
        WriteScopeGuard(const WriteScopeGuard&) = delete;
        WriteScopeGuard& operator=(const WriteScopeGuard&) = delete;

    private:
        std::optional<WriteScope> scope_;
    };

private:
    [[nodiscard]] std::uint32_t batch_size(std::uint32_t requested) const noexcept {
        if (requested != 0) return requested;
        if (options_.default_batch_size != 0) return options_.default_batch_size;
        return std::numeric_limits<std::uint32_t>::max();
    }

    Lane* find_lane_locked(const std::string& connection) const noexcept {
        // A handful of connections: a linear scan beats hashing the name.
        for (const auto& [name, lane] : lanes_) {
            if (name == connection) return lane;
        }
        return nullptr;
    }

    // ---- starting a plan ----------------------------------------------------------------------------------------

    void start(Plan& p, bool persisted, bool check_reachable, std::int64_t now) {
        // The plan is not shared yet: no lock needed to look at its recipients or to decide its first step.
        bool any_unreachable = false;
        for (std::size_t i = 0; i < p.slots.size(); ++i) {
            const char* code = nullptr;
            if (p.slots[i].lane == nullptr) {
                code = kUnknownConnection;
            } else if (check_reachable && !directory_.reachable(p.out[i].address)) {
                code = kUnreachable;
            }
            if (code != nullptr) {
                p.out[i].error_code = code;
                p.slots[i].state = SlotState::done;
                p.slots[i].outcome = Outcome::failed;
                p.slots[i].entry_state = OutboxState::failed;
                any_unreachable = true;
            }
        }

        // Still nobody else's (the deadline timer is armed later, store work is posted by run() below): the *_locked
        // steps run without taking the plan's lock.
        Actions actions;
        if (any_unreachable && p.mode == DeliveryMode::atomic) {
            // Nothing is written or sent. Entries persisted with the inbound message are marked failed, so a
            // restart does not send them.
            p.atomic_rejected = true;
            p.stopped = true;
            for (std::uint32_t i = 0; i < p.slots.size(); ++i) {
                Slot& slot = p.slots[i];
                if (slot.state != SlotState::done) {
                    p.out[i].error_code = kAtomicUnreachable;
                    slot.state = SlotState::done;
                    slot.outcome = Outcome::failed;
                    slot.entry_state = OutboxState::failed;
                }
                if (persisted) p.dirty.push_back(i);
            }
            finish_locked(p, actions);
        } else {
            if (persisted && any_unreachable) {
                for (std::uint32_t i = 0; i < p.slots.size(); ++i) {
                    if (p.slots[i].state == SlotState::done) p.dirty.push_back(i);
                }
            }
            if (p.deadline_ms != 0 && p.deadline_ms <= now) {  // 0: counted from setup()
                deadline_locked(p, actions);
            } else if (persisted) {
                start_sending_locked(p, actions, now);
                request_flush_locked(p, actions);  // the unreachable ones, unless the plan finished already
            } else if (p.slots.empty()) {
                finish_locked(p, actions);
            } else {
                p.in_setup = true;
                ++p.store_tasks;
                intrusive_ptr_add_ref(&p);
                actions.setup = true;
            }
        }
        run(p, actions);
    }

    void apply_existing_locked(Plan& p, const std::vector<OutboxEntry>& existing) {
        std::unordered_map<std::string, std::uint32_t> index;
        const bool use_index = p.out.size() > 16;
        if (use_index) {
            index.reserve(p.out.size());
            for (std::uint32_t i = 0; i < p.out.size(); ++i) index.emplace(p.out[i].address.to_string(), i);
        }
        for (const OutboxEntry& old : existing) {
            std::uint32_t i = 0;
            if (use_index) {
                auto it = index.find(old.recipient.to_string());
                if (it == index.end()) continue;
                i = it->second;
            } else {
                while (i < p.out.size() && !(p.out[i].address == old.recipient)) ++i;
                if (i == p.out.size()) continue;
            }
            Slot& slot = p.slots[i];
            slot.stored_attempts = old.attempts;
            if (old.state == OutboxState::sent) {
                // A retried envelope: this recipient has it already.
                RecipientOutcome& out = p.out[i];
                out.delivered = true;
                out.message_id = old.sent_message_id;
                out.error_code.clear();
                slot.state = SlotState::done;
                slot.outcome = Outcome::delivered;
                slot.entry_state = OutboxState::sent;
            } else if (slot.state == SlotState::done) {
                // Found unreachable now; outbox_add_plan keeps the old entry, so it needs an update.
                p.dirty.push_back(i);
            }
        }
    }

    // Adds the plan's entries to the outbox (the store keeps entries that exist) and returns those that existed.
    // Nothing is sent yet, so each recipient is `pending`, or `failed` if it was found unreachable.
    Result<std::vector<OutboxEntry>> write_new_entries(Plan& p) {
        thread_local std::vector<OutboxRecipient> scratch;
        std::vector<OutboxRecipient> large;
        const std::size_t n = p.out.size();
        const std::span<OutboxRecipient> recipients = first_of(n <= kScratchRecipients ? scratch : large, n);
        for (std::size_t i = 0; i < n; ++i) {
            OutboxRecipient& recipient = recipients[i];
            recipient.address = &p.out[i].address;
            recipient.state = p.slots[i].entry_state;
            recipient.error = recipient.state == OutboxState::failed ? std::string_view(p.out[i].error_code)
                                                                     : std::string_view();
        }
        OutboxPlanAdd add;
        add.plan_id = p.plan_id;
        add.text = p.text;
        if (p.reply_to) add.reply_to = *p.reply_to;
        add.created_ms = p.created_ms;
        add.recipients = recipients;
        return store_.outbox_add_plan(add);
    }

    void start_sending_locked(Plan& p, Actions& actions, std::int64_t now) {
        bool any = false;
        for (Slot& slot : p.slots) {
            slot.sendable = slot.state == SlotState::idle;
            any = any || slot.sendable;
        }
        if (!any) {
            finish_locked(p, actions);
            return;
        }
        release_batch_locked(p, actions, now);
    }

    void release_batch_locked(Plan& p, Actions& actions, std::int64_t now) {
        if (now >= p.deadline_ms) {
            deadline_locked(p, actions);
            return;
        }
        const std::size_t n = p.slots.size();
        const std::size_t begin = p.next_batch;
        std::size_t i = begin;
        std::size_t count = 0;
        while (i < n && count < p.batch_size) {
            Slot& slot = p.slots[i++];
            if (!slot.sendable) continue;
            slot.state = SlotState::queued;
            ++count;
        }
        p.next_batch = i;
        if (count == 0) {
            finish_locked(p, actions);
            return;
        }
        p.unresolved = count;
        p.refs.fetch_add(static_cast<std::uint32_t>(count), std::memory_order_relaxed);
        actions.release_begin = begin;
        actions.release_end = i;
    }

    // ---- progress -----------------------------------------------------------------------------------------------

    // After a recipient of the current batch (or a deletion) became final.
    void advance_locked(Plan& p, Actions& actions) {
        if (p.reported || p.unresolved > 0) return;
        if (!p.stopped && !p.compensation_started && p.next_batch < p.slots.size()) {
            release_batch_locked(p, actions, clock_());
            return;
        }
        finish_locked(p, actions);
    }

    // Every recipient not sent yet ends now with @p code: for good (written failed) or retryable (stays pending).
    void abandon_locked(Plan& p, const char* code, bool permanent) {
        p.stopped = true;
        for (std::uint32_t i = 0; i < p.slots.size(); ++i) {
            Slot& slot = p.slots[i];
            if (slot.state != SlotState::idle && slot.state != SlotState::queued &&
                slot.state != SlotState::retry_wait) {
                continue;
            }
            if (slot.state != SlotState::idle) --p.unresolved;
            slot.state = SlotState::done;
            p.out[i].error_code = code;
            if (permanent) {
                slot.outcome = Outcome::failed;
                slot.entry_state = OutboxState::failed;
                p.dirty.push_back(i);
            } else {
                slot.outcome = Outcome::retryable;
            }
        }
        p.next_batch = p.slots.size();
    }

    void finish_locked(Plan& p, Actions& actions) {
        if (p.finishing) return;
        p.finishing = true;
        p.final_dirty.swap(p.dirty);
        if (!p.final_dirty.empty()) {
            ++p.store_tasks;
            intrusive_ptr_add_ref(&p);
            actions.final_flush = true;
        } else if (p.store_tasks > 0) {
            p.waiting_for_tasks = true;
        } else {
            finalize_locked(p, actions);
        }
    }

    // Everything is final and written: compensate if an atomic plan failed, else report.
    void finalize_locked(Plan& p, Actions& actions) {
        p.finishing = false;
        if (!p.reported && p.atomic_failed && p.on_failure == OnFailure::compensate && !p.compensation_started) {
            p.compensation_started = true;
            for (std::uint32_t i = 0; i < p.slots.size(); ++i) {
                const Slot& slot = p.slots[i];
                if (slot.outcome == Outcome::delivered && slot.lane != nullptr && slot.lane->can_delete &&
                    !p.out[i].message_id.empty()) {
                    p.removes.push_back(i);
                }
            }
            if (!p.removes.empty()) {
                for (const std::uint32_t i : p.removes) p.slots[i].state = SlotState::remove_queued;
                p.unresolved = p.removes.size();
                p.refs.fetch_add(static_cast<std::uint32_t>(p.removes.size()), std::memory_order_relaxed);
                actions.removes = true;
                return;
            }
        }
        if (!p.reported) report_locked(p, actions);
        check_idle_locked(p, actions);
    }

    // Posts a group flush unless one is pending (it will pick up what is dirty now) or the final flush took over.
    void request_flush_locked(Plan& p, Actions& actions) {
        if (p.dirty.empty() || p.flush_pending || p.finishing) return;
        p.flush_pending = true;
        ++p.store_tasks;
        intrusive_ptr_add_ref(&p);
        actions.group_flush = true;
    }

    void check_idle_locked(Plan& p, Actions& actions) {
        if (!p.idle && p.reported && p.in_flight == 0 && p.store_tasks == 0 && !p.finishing && !p.in_setup) {
            p.idle = true;
            actions.become_idle = true;
        }
    }

    // ---- the deadline -------------------------------------------------------------------------------------------

    // Armed only when a plan is still unfinished once execute() is done with it: a plan that completes inline (an
    // inline connector and store) never costs a timer.
    void arm_deadline(Plan& p) {
        if (p.reported_flag.load(std::memory_order_acquire)) return;  // the common case of an inline plan
        std::lock_guard lock(p.mutex);
        if (p.reported) return;
        const std::int64_t now = clock_();
        if (p.deadline_ms == 0) p.deadline_ms = now + kDefaultDeadlineMs;  // setup() has not started the plan yet
        const std::int64_t remaining = std::max<std::int64_t>(p.deadline_ms - now, 0);
        p.deadline_timer.emplace(io_);
        p.deadline_timer->expires_after(std::chrono::milliseconds(remaining));
        p.deadline_timer->async_wait([plan = boost::intrusive_ptr<Plan>(&p)](const boost::system::error_code& ec) {
            if (!ec) plan->engine->on_deadline(*plan);
        });
    }

    // The report goes out now. What is not sent is cancelled (its lane drops it unsent: claim() fails) and stays
    // pending in the outbox; what is in flight is recorded when it completes, without changing the report.
    void deadline_locked(Plan& p, Actions& actions) {
        if (p.reported) return;
        p.stopped = true;
        for (Slot& slot : p.slots) {
            switch (slot.state) {
                case SlotState::idle:
                case SlotState::queued:
                case SlotState::retry_wait:
                    slot.state = SlotState::done;
                    slot.outcome = Outcome::cut;
                    p.deadline_hit = true;
                    break;
                case SlotState::in_flight:
                    p.deadline_hit = true;
                    break;
                case SlotState::remove_queued:
                    slot.state = SlotState::done;  // not deleted: it stays delivered
                    break;
                case SlotState::removing:
                case SlotState::done:
                    break;
            }
        }
        p.next_batch = p.slots.size();
        request_flush_locked(p, actions);
        report_locked(p, actions);
        check_idle_locked(p, actions);
    }

    // ---- completions --------------------------------------------------------------------------------------------

    bool claim(const LaneItem& item) {
        Plan& p = *item.plan;
        std::lock_guard lock(p.mutex);
        Slot& slot = p.slots[item.index];
        if (item.op == Op::send) {
            if (slot.state != SlotState::queued && slot.state != SlotState::retry_wait) return false;
            slot.state = SlotState::in_flight;
            ++slot.attempts;
            ++slot.stored_attempts;
        } else {
            if (slot.state != SlotState::remove_queued) return false;
            slot.state = SlotState::removing;
        }
        ++p.in_flight;
        return true;
    }

    // A send or deletion finished: frees its lane slot. Returns whether the caller must drain the lane.
    static bool release_lane_slot(Lane& lane) {
        std::lock_guard lock(lane.mutex);
        --lane.in_flight;
        if (lane.pumping) {
            lane.repump = true;
            return false;
        }
        return !lane.queue.empty();
    }

    [[nodiscard]] std::int64_t backoff_ms(std::uint32_t attempts) const noexcept {
        const std::uint32_t shift = std::min<std::uint32_t>(attempts > 0 ? attempts - 1 : 0, 20);
        return options_.initial_backoff.count() << shift;
    }

    void complete_send_locked(Plan& p, std::uint32_t index, Result<SentMessage>& result, Actions& actions) {
        Slot& slot = p.slots[index];
        RecipientOutcome& out = p.out[index];
        --p.in_flight;
        slot.state = SlotState::done;
        if (result) {
            out.delivered = true;
            out.message_id = std::move(result->message_id);
            out.error_code.clear();
            slot.outcome = Outcome::delivered;
            slot.entry_state = OutboxState::sent;
        } else {
            const Error& error = result.error();
            out.error_code = error.code.empty() ? kSendFailed : error.code;
            if (error.retryable) {
                const std::int64_t delay = std::max(error.retry_after_ms, backoff_ms(slot.attempts));
                slot.retry_after_ms = delay;
                if (!p.stopped && slot.attempts < options_.max_attempts && clock_() + delay < p.deadline_ms) {
                    slot.state = SlotState::retry_wait;
                    intrusive_ptr_add_ref(&p);  // the lane's delay heap holds it
                    actions.retry = true;
                    actions.retry_index = index;
                    actions.retry_delay_ms = delay;
                    return;
                }
                slot.outcome = Outcome::retryable;  // the entry stays pending
            } else {
                slot.outcome = Outcome::failed;
                slot.entry_state = OutboxState::failed;
            }
        }
        p.dirty.push_back(index);
        if (p.reported) {
            // In flight when the deadline report went out: recorded, the report stands. Still retryable, it waits for
            // its connection like the recipients the report left pending.
            if (slot.outcome == Outcome::retryable && p.late_expected) park_late_locked(p, index);
            request_flush_locked(p, actions);
            check_idle_locked(p, actions);
            return;
        }
        --p.unresolved;
        if (slot.outcome == Outcome::failed && p.mode == DeliveryMode::atomic && !p.stopped) {
            p.atomic_failed = true;
            p.atomic_failure_code = out.error_code;
            abandon_locked(p, kAborted, true);
        }
        advance_locked(p, actions);  // the plan's last completion goes with the final flush
        request_flush_locked(p, actions);
    }

    void on_dropped(Plan& p, const LaneItem& item) {
        Actions actions;
        {
            std::lock_guard lock(p.mutex);
            Slot& slot = p.slots[item.index];
            if (item.op == Op::send && (slot.state == SlotState::queued || slot.state == SlotState::retry_wait)) {
                abandon_locked(p, kShuttingDown, false);
                advance_locked(p, actions);
            } else if (item.op == Op::remove && slot.state == SlotState::remove_queued) {
                slot.state = SlotState::done;
                --p.unresolved;
                advance_locked(p, actions);
            }
        }
        run(p, actions);
        intrusive_ptr_release(&p);
    }

    // ---- reports ------------------------------------------------------------------------------------------------

    void report_locked(Plan& p, Actions& actions) {
        // The common case: nothing to keep. A plan whose entries the outbox refused has nothing to resend from.
        if (!p.unrecorded && std::any_of(p.slots.begin(), p.slots.end(), left_pending)) park_locked(p);
        if (p.in_flight > 0 && !p.unrecorded) expect_late_locked(p);
        p.reported = true;
        p.reported_flag.store(true, std::memory_order_release);
        if (p.deadline_timer) p.deadline_timer->cancel();
        // With nothing in flight and no store task reading the recipients, the outcomes can be moved out whole.
        const bool move = p.in_flight == 0 && p.store_tasks == 0 && !p.finishing;
        build_report(p, move, p.report);
        actions.report = true;
    }

    // Whether a recipient's outbox entry stays pending, for retry_parked() or a sweep to send again.
    static bool left_pending(const Slot& slot) {
        return slot.outcome == Outcome::retryable || slot.outcome == Outcome::cut;
    }

    // Keeps what the report of @p p leaves pending (the caller found some) — recipients still retryable when their
    // attempts ran out, or cut by the deadline before they were sent — for retry_parked() and the sweep. Those in
    // flight at the deadline are kept if their late result is retryable (park_late_locked()). Lock order: a plan's
    // lock, then parked_mutex_.
    void park_locked(const Plan& p) {
        PendingPlan left;  // the message once, however many recipients wait
        left.plan_id = p.plan_id;
        left.text = p.text;
        left.reply_to = p.reply_to;
        const std::string* code = nullptr;  // the first one's, for the log
        for (std::size_t i = 0; i < p.slots.size(); ++i) {
            if (!left_pending(p.slots[i])) continue;
            left.recipients.push_back(PendingPlan::Recipient{p.out[i].address, p.slots[i].stored_attempts});
            if (code == nullptr) code = &p.out[i].error_code;
        }
        std::lock_guard lock(parked_mutex_);
        if (!room_to_park_locked(p, left.recipients.size())) return;
        logger_.info("delivery: " + std::to_string(left.recipients.size()) + " recipient(s) of plan '" + p.plan_id +
                         "' left pending (" + *code + "); they go out again when their connection is back",
                     LogFields{left.recipients.front().address.connection, {}, {}});
        PendingPlan& parked = parked_[p.plan_id];  // a later run of a plan replaces what an earlier left
        parked_entries_ = parked_entries_ - parked.recipients.size() + left.recipients.size();
        parked = std::move(left);
        count_parked_ids();
        arm_parked_sweep_locked();
    }

    // Whether @p adding more recipients of @p p may wait for their connection (at most kMaxParked wait); if not,
    // says that they stay pending in the outbox. The caller holds parked_mutex_.
    bool room_to_park_locked(const Plan& p, std::size_t adding) {
        if (parked_entries_ + adding <= kMaxParked) return true;
        logger_.warn("delivery: " + std::to_string(adding) + " recipient(s) of plan '" + p.plan_id +
                     "' stay pending in the outbox until the next start (" + std::to_string(parked_entries_) +
                     " already wait for their connection)");
        return false;
    }

    // @p p reports with sends still in flight: their late results, if retryable, are parked as its report's own
    // pending recipients are — unless a newer run of the same plan id starts first (unpark() forgets the expectation),
    // which then decides for them. The expectation ends when @p p goes idle (forget_late()).
    void expect_late_locked(Plan& p) {
        p.late_expected = true;
        std::lock_guard lock(parked_mutex_);
        late_[p.plan_id] = p.serial;
        count_parked_ids();
    }

    // Recipient @p index of @p p, in flight when its deadline report went out, came back retryable.
    void park_late_locked(const Plan& p, std::uint32_t index) {
        const RecipientOutcome& out = p.out[index];
        std::lock_guard lock(parked_mutex_);
        const auto expected = late_.find(p.plan_id);
        if (expected == late_.end() || expected->second != p.serial) return;  // a newer run took the id over
        if (!room_to_park_locked(p, 1)) return;
        PendingPlan& parked = parked_[p.plan_id];
        if (parked.recipients.empty()) {
            parked.plan_id = p.plan_id;
            parked.text = p.text;
            parked.reply_to = p.reply_to;
        }
        parked.recipients.push_back(PendingPlan::Recipient{out.address, p.slots[index].stored_attempts});
        ++parked_entries_;
        count_parked_ids();
        arm_parked_sweep_locked();
        logger_.info("delivery: " + out.address.to_string() + ", in flight when plan '" + p.plan_id +
                         "' reached its deadline, came back " + out.error_code +
                         "; it goes out again when its connection is back",
                     LogFields{out.address.connection, {}, {}});
    }

    // @p p went idle: no late result of it is coming any more.
    void forget_late(const Plan& p) {
        std::lock_guard lock(parked_mutex_);
        const auto expected = late_.find(p.plan_id);
        if (expected != late_.end() && expected->second == p.serial) late_.erase(expected);
        count_parked_ids();
    }

    // A plan runs (again) under @p plan_id: it takes over what an earlier run left parked, and what that run still
    // has in flight is no longer parked when it comes back.
    void unpark(const std::string& plan_id) {
        if (parked_ids_.load(std::memory_order_relaxed) == 0) return;  // the common case: one atomic load
        std::lock_guard lock(parked_mutex_);
        if (const auto it = parked_.find(plan_id); it != parked_.end()) {
            parked_entries_ -= it->second.recipients.size();
            parked_.erase(it);
        }
        if (const auto it = late_.find(plan_id); it != late_.end()) late_.erase(it);
        count_parked_ids();
    }

    // parked_ids_ from the maps; the caller holds parked_mutex_.
    void count_parked_ids() { parked_ids_.store(parked_.size() + late_.size(), std::memory_order_relaxed); }

    // A connection that never drops never says it is back: a platform answering retryable for longer than a plan's
    // deadline, or a store away that long, would leave what was parked for it waiting for the next start. A sweep
    // sends it again anyway (sweep_parked()), EngineOptions::parked_retry after something was parked, then at
    // doubling delays (up to kMaxParkedRetry) while something stays parked; retry_parked() starts the delays again.
    // The caller holds parked_mutex_.
    void arm_parked_sweep_locked() {
        if (parked_armed_ || parked_closed_ || parked_.empty()) return;
        parked_armed_ = true;
        parked_timer_.expires_after(parked_delay_);
        parked_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
            if (!ec) self->sweep_parked();  // else shutdown() cancelled it
        });
    }

    // Probes each connection on which the directory finds one of the waiting recipients reachable (at most
    // kSweepProbes looked at; one that is down says when it is back, and would only answer "not connected" now): one
    // plan's recipients go out again, the rest once that plan is no longer retryable (probe_parked()).
    void sweep_parked() {
        constexpr std::size_t kSweepProbes = 16;
        std::vector<std::pair<std::string, std::vector<Address>>> probes;  // connection -> recipients to look at
        {
            std::lock_guard lock(parked_mutex_);
            parked_armed_ = false;
            parked_delay_ = std::min(parked_delay_ * 2, kMaxParkedRetry);
            for (const auto& [plan_id, plan] : parked_) {
                for (const PendingPlan::Recipient& recipient : plan.recipients) {
                    const std::string& connection = recipient.address.connection;
                    auto it = std::find_if(probes.begin(), probes.end(),
                                           [&](const auto& probe) { return probe.first == connection; });
                    if (it == probes.end()) it = probes.insert(probes.end(), {connection, {}});
                    if (it->second.size() < kSweepProbes) it->second.push_back(recipient.address);
                }
            }
        }
        for (const auto& [connection, addresses] : probes) {
            if (std::any_of(addresses.begin(), addresses.end(),
                            [&](const Address& address) { return directory_.reachable(address); })) {
                probe_parked(connection);
            }
        }
        // What is still parked (a connection without a connector) waits for the next sweep; what comes back parked
        // from these runs arms it again when it is parked.
        std::lock_guard lock(parked_mutex_);
        arm_parked_sweep_locked();
    }

    // Builds @p p's report into @p report (empty when called).
    void build_report(Plan& p, bool move, DeliveryReport& report) const {
        std::size_t delivered = 0, withdrawn = 0, failed = 0, unreachable = 0, retryable = 0;
        std::size_t first_failure = SIZE_MAX, first_retryable = SIZE_MAX;
        std::int64_t retry_after = 0;
        for (std::size_t i = 0; i < p.slots.size(); ++i) {
            const Slot& slot = p.slots[i];
            switch (slot.outcome) {
                case Outcome::delivered:
                    ++delivered;
                    break;
                case Outcome::withdrawn:
                    ++withdrawn;
                    break;
                case Outcome::failed:
                    ++failed;
                    if (p.out[i].error_code == kUnreachable || p.out[i].error_code == kUnknownConnection) {
                        ++unreachable;
                    }
                    if (first_failure == SIZE_MAX && p.out[i].error_code != kAborted) first_failure = i;
                    break;
                case Outcome::retryable:
                case Outcome::cut:
                case Outcome::none:  // in flight when the deadline passed
                    ++retryable;
                    if (first_retryable == SIZE_MAX && slot.outcome == Outcome::retryable) first_retryable = i;
                    retry_after = std::max(retry_after, slot.retry_after_ms);
                    break;
            }
        }
        const std::size_t total = p.slots.size();
        const auto first_failure_code = [&]() -> std::string {
            return first_failure == SIZE_MAX ? std::string(kSendFailed) : p.out[first_failure].error_code;
        };

        auto& detail = report.detail;
        const auto count = [](std::size_t n) { return std::to_string(n); };
        if (p.atomic_rejected) {
            report.status = DeliveryStatus::rejected;
            report.error_code = kAtomicUnreachable;
            detail = "atomic group not sent: " + count(unreachable) + " of " + count(total) +
                     " member(s) unreachable; nothing was sent";
        } else if (p.atomic_failed) {
            const std::string& cause = p.atomic_failure_code;
            if (delivered == 0) {
                report.status = DeliveryStatus::rejected;
                report.error_code = withdrawn > 0 ? std::string(kCompensated) : cause;
                detail = "atomic delivery failed (" + cause + "); " +
                         (withdrawn > 0 ? count(withdrawn) + " sent message(s) deleted again"
                                        : std::string("nothing was delivered"));
            } else {
                report.status = DeliveryStatus::partial;
                report.error_code = cause;
                detail = "atomic delivery failed (" + cause + ") after " + count(delivered) + " of " + count(total) +
                         " recipient(s) got it" +
                         (p.on_failure == OnFailure::compensate ? "; not every one could be deleted again" : "");
            }
        } else if (retryable > 0) {
            report.status = DeliveryStatus::retryable;
            report.error_code = p.deadline_hit || first_retryable == SIZE_MAX ? std::string(kDeadlineExceeded)
                                                                              : p.out[first_retryable].error_code;
            report.retry_after_ms = std::max<std::int64_t>(retry_after, options_.initial_backoff.count());
            detail = count(retryable) + " of " + count(total) + " recipient(s) not delivered yet (" +
                     report.error_code + "); retry after " + std::to_string(report.retry_after_ms) + " ms";
        } else if (failed == 0) {
            report.status = DeliveryStatus::delivered;
            detail = total == 1 ? "delivered" : "delivered to " + count(total) + " recipients";
        } else {
            report.status = delivered > 0 ? DeliveryStatus::partial : DeliveryStatus::rejected;
            report.error_code = first_failure_code();
            detail = "delivered to " + count(delivered) + " of " + count(total) + " recipient(s); " + count(failed) +
                     " failed (first: " + report.error_code + ")";
        }

        if (move) {
            report.recipients = std::move(p.out);
        } else {
            report.recipients = p.out;
        }
        // Recipients cut by the deadline (unsent, or in flight) are reported as such; their own record is left for
        // the late completion.
        for (std::size_t i = 0; i < report.recipients.size(); ++i) {
            const Outcome outcome = p.slots[i].outcome;
            if (outcome != Outcome::cut && outcome != Outcome::none) continue;
            RecipientOutcome& out = report.recipients[i];
            out.delivered = false;
            out.message_id.clear();
            out.error_code = kDeadlineExceeded;
        }
    }

    static void log_resumed(Logger& logger, const std::string& plan_id, const DeliveryReport& report) {
        std::size_t delivered = 0;
        for (const auto& r : report.recipients) delivered += r.delivered ? 1 : 0;
        std::string line = "delivery: finished plan '" + plan_id +
                           "' left pending earlier: " + std::string(to_string(report.status)) + " (" +
                           std::to_string(delivered) + " of " + std::to_string(report.recipients.size()) + " delivered";
        if (!report.error_code.empty()) line += ", " + report.error_code;
        line += ")";
        if (report.status == DeliveryStatus::delivered) {
            logger.info(line);
        } else {
            logger.warn(line);
        }
    }

    // ---- carrying out decisions ---------------------------------------------------------------------------------

    // Hands the report this thread built to the observer, then to the plan's callback (nobody else touches either
    // once the plan reported); the callback goes with it.
    void deliver_report(Plan& p) {
        if (options_.on_report) {
            try {
                options_.on_report(p.report, SteadyClock::now() - p.started);
            } catch (const std::exception& e) {
                logger_.error(std::string("delivery: the report observer threw: ") + e.what());
            }
        }
        const ReportCallback done = std::move(p.done);
        if (!done) return;
        try {
            done(std::move(p.report));
        } catch (const std::exception& e) {
            logger_.error("delivery: the report callback of plan '" + p.plan_id + "' threw: " + e.what());
        } catch (...) {
            logger_.error("delivery: the report callback of plan '" + p.plan_id + "' threw");
        }
    }

    // The caller holds a reference of @p p.
    void run(Plan& p, Actions& actions) {
        if (actions.report) deliver_report(p);
        if (actions.setup) {
            on_store([plan = &p] {
                plan->engine->setup(*plan);
                intrusive_ptr_release(plan);
            });
        }
        if (actions.retry) schedule_retry(p, actions.retry_index, actions.retry_delay_ms);
        if (actions.release_end > actions.release_begin) enqueue_range(p, actions.release_begin, actions.release_end);
        if (actions.removes) enqueue_removes(p, p.removes);
        if (actions.group_flush) schedule_write(p, WriteKind::group);
        if (actions.final_flush) schedule_write(p, WriteKind::final);
        if (actions.become_idle) {
            if (p.late_expected) forget_late(p);
            {
                std::lock_guard lock(running_lock_);
                (p.running_prev != nullptr ? p.running_prev->running_next : running_) = p.running_next;
                if (p.running_next != nullptr) p.running_next->running_prev = p.running_prev;
            }
            // seq_cst on both sides (here and in wait_idle): either the waiter sees the count at zero, or this
            // sees the waiter.
            if (active_.fetch_sub(1) == 1 && waiters_.load() > 0) {
                std::lock_guard lock(idle_mutex_);
                idle_cv_.notify_all();
            }
            intrusive_ptr_release(&p);  // the plan's own reference
        }
    }

    // Runs @p work through the store executor, or here when there is none (store calls inline).
    template <class Work>
    void on_store(Work&& work) {
        if (store_executor_) {
            store_executor_(std::forward<Work>(work));
        } else {
            work();
        }
    }

    // ---- outbox writes ------------------------------------------------------------------------------------------

    // Runs @p p's write now (through the store executor), or holds it in this thread's write scope. The write owns
    // one reference of the plan and one of its store tasks.
    void schedule_write(Plan& p, WriteKind kind) {
        if (WriteScope* scope = t_write_scope; scope != nullptr && scope->core == this) {
            scope->writes.push_back(DeferredWrite{&p, kind});
            return;
        }
        on_store([plan = &p, kind] { plan->engine->write_rounds(*plan, kind); });
    }

    // A send or deletion completed: in a write scope, the round is written once the scope holds its limit.
    void note_completion() {
        if (WriteScope* scope = t_write_scope;
            scope != nullptr && scope->core == this && ++scope->completions >= scope->limit) {
            flush_scope(*scope);
        }
    }

    void flush_scope(WriteScope& scope) {
        scope.completions = 0;
        if (scope.writes.empty()) return;
        if (scope.writes.size() == 1) {
            const DeferredWrite write = scope.writes.front();
            scope.writes.clear();
            on_store([write] { write.plan->engine->write_rounds(*write.plan, write.kind); });
            return;
        }
        std::vector<DeferredWrite> writes(scope.writes.begin(), scope.writes.end());
        scope.writes.clear();
        on_store([writes = std::move(writes)]() mutable {
            Core& core = *writes.front().plan->engine;
            core.write_rounds(std::move(writes));
        });
    }

    // Writes the state of the final recipients of every plan of @p writes with one store call
    // (Store::outbox_update_plans), then lets each plan go on. A group write takes what is dirty now; a
    // final write takes final_dirty, which nobody touches while the plan is finishing.
    void write_round(std::span<const DeferredWrite> writes) {
        std::size_t count = 0;
        for (const DeferredWrite& write : writes) {
            Plan& p = *write.plan;
            if (write.kind == WriteKind::group) {
                std::lock_guard lock(p.mutex);
                p.flushing.swap(p.dirty);  // `flushing` is only touched by this task
                count += p.flushing.size();
            } else {
                count += p.final_dirty.size();
            }
        }
        if (count > 0) {
            thread_local std::vector<OutboxRecipientUpdate> scratch;
            thread_local std::vector<OutboxPlanUpdate> plans;
            std::vector<OutboxRecipientUpdate> large;
            const std::span<OutboxRecipientUpdate> updates =
                first_of(count <= kScratchRecipients ? scratch : large, count);
            plans.clear();
            std::size_t k = 0;
            for (const DeferredWrite& write : writes) {
                Plan& p = *write.plan;
                const IndexList& indexes = write.kind == WriteKind::group ? p.flushing : p.final_dirty;
                if (indexes.empty()) continue;
                const std::size_t first = k;
                for (const std::uint32_t i : indexes) fill_update(p, i, updates[k++]);
                plans.push_back(OutboxPlanUpdate{p.plan_id, std::span(updates.data() + first, k - first)});
            }
            if (auto updated = store_.outbox_update_plans(plans); !updated) {
                const std::string& first = writes.front().plan->plan_id;
                const bool again = updated.error().retryable;
                logger_.error("delivery: could not record the outbox state of " + std::to_string(count) +
                              " recipient(s) of " +
                              (writes.size() == 1 ? "plan '" + first + "'"
                                                  : std::to_string(writes.size()) + " plans (first: '" + first + "')") +
                              " (" + updated.error().to_string() + "); " +
                              (again ? "writing it again once the store answers" : "a restart may send them again"));
                if (again) record_later(plans);
            } else if (unrecorded_count_.load(std::memory_order_relaxed) > 0) {
                forget_unrecorded(plans);  // newer than what waits for them there
            }
        }
        for (const DeferredWrite& write : writes) {
            if (write.kind == WriteKind::final) final_write_done(*write.plan);
        }
    }

    // ---- states the store refused -------------------------------------------------------------------------------
    //
    // A write round the store failed (a redis outage, a busy sqlite file) leaves entries pending in the outbox whose
    // recipients this engine knows final — most of them sent. They are kept here and written again, with backoff
    // (100 ms doubling to 5 s), until the store takes them, so that neither resume() (a lease taken back after the
    // outage) nor the next start sends them again. At most kMaxParked are kept (beyond, the next start may send
    // them again, as it would after a crash).

    void record_later(std::span<const OutboxPlanUpdate> plans) {
        std::size_t dropped = 0;
        std::lock_guard lock(unrecorded_mutex_);
        for (const OutboxPlanUpdate& plan : plans) {
            for (const OutboxRecipientUpdate& update : plan.recipients) {
                UnrecordedKey key = unrecorded_key(plan.plan_id, *update.address);
                if (unrecorded_.size() >= kMaxParked && !unrecorded_.contains(key)) {
                    ++dropped;
                    continue;
                }
                unrecorded_.insert_or_assign(
                    std::move(key),
                    Unrecorded{*update.address, update.state, update.attempts, std::string(update.sent_message_id),
                               std::string(update.error), ++unrecorded_version_});
            }
        }
        unrecorded_count_.store(unrecorded_.size(), std::memory_order_relaxed);
        if (dropped > 0) {
            logger_.error("delivery: " + std::to_string(dropped) +
                          " recipient state(s) the store refused are not kept for writing again (" +
                          std::to_string(kMaxParked) + " wait already); the next start may send them again");
        }
        arm_unrecorded_locked();
    }

    // What a later round wrote is newer than what waits here for the same recipients.
    void forget_unrecorded(std::span<const OutboxPlanUpdate> plans) {
        std::lock_guard lock(unrecorded_mutex_);
        for (const OutboxPlanUpdate& plan : plans) {
            for (const OutboxRecipientUpdate& update : plan.recipients) {
                unrecorded_.erase(unrecorded_key(plan.plan_id, *update.address));
            }
        }
        unrecorded_count_.store(unrecorded_.size(), std::memory_order_relaxed);
    }

    void arm_unrecorded_locked() {
        if (unrecorded_armed_ || unrecorded_closed_ || unrecorded_.empty()) return;
        unrecorded_armed_ = true;
        unrecorded_delay_ =
            std::clamp(unrecorded_delay_ * 2, std::chrono::milliseconds(100), std::chrono::milliseconds(5000));
        unrecorded_timer_.expires_after(unrecorded_delay_);
        unrecorded_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
            if (ec) return;  // shutdown() cancelled it, and writes once more itself
            self->on_store([self] { self->record_again(); });
        });
    }

    // Writes what waits in one store call. What waits stays where resume() sees it until the store took it; on a
    // failure the store may get over, it waits for the next try.
    void record_again() {
        std::vector<std::pair<UnrecordedKey, Unrecorded>> snapshot;
        {
            std::lock_guard lock(unrecorded_mutex_);
            unrecorded_armed_ = false;
            snapshot.assign(unrecorded_.begin(), unrecorded_.end());  // ordered by plan id
        }
        if (snapshot.empty()) return;
        std::vector<OutboxRecipientUpdate> updates;
        std::vector<OutboxPlanUpdate> plans;
        updates.reserve(snapshot.size());
        for (const auto& [key, state] : snapshot) {  // `updates` does not move: it has room for every one
            if (plans.empty() || plans.back().plan_id != key.first) {
                plans.push_back(OutboxPlanUpdate{key.first, std::span(updates.data() + updates.size(), 0)});
            }
            updates.push_back(
                OutboxRecipientUpdate{&state.address, state.state, state.attempts, state.sent_message_id, state.error});
            std::span<const OutboxRecipientUpdate>& recipients = plans.back().recipients;
            recipients = std::span(recipients.data(), recipients.size() + 1);
        }
        const auto recorded = store_.outbox_update_plans(plans);
        std::lock_guard lock(unrecorded_mutex_);
        const bool again = !recorded && recorded.error().retryable && !unrecorded_closed_;
        if (!again) {
            // Taken (or never to be): what was written goes, unless a newer state replaced it meanwhile.
            for (const auto& [key, state] : snapshot) {
                if (auto it = unrecorded_.find(key); it != unrecorded_.end() && it->second.version == state.version) {
                    unrecorded_.erase(it);
                }
            }
        }
        if (recorded) {
            unrecorded_delay_ = std::chrono::milliseconds(0);
            logger_.info("delivery: recorded the outbox state of " + std::to_string(snapshot.size()) +
                         " recipient(s) the store had refused");
        } else if (!again) {
            logger_.error("delivery: could not record the outbox state of " + std::to_string(snapshot.size()) +
                          " recipient(s) the store had refused (" + recorded.error().to_string() +
                          "); the next start may send them again");
        }
        unrecorded_count_.store(unrecorded_.size(), std::memory_order_relaxed);
        arm_unrecorded_locked();
    }

    // The recorded state of final recipient @p i.
    static void fill_update(const Plan& p, std::uint32_t i, OutboxRecipientUpdate& update) {
        const Slot& slot = p.slots[i];
        const RecipientOutcome& out = p.out[i];
        update.address = &out.address;
        update.state = slot.entry_state;
        update.attempts = slot.stored_attempts;
        update.sent_message_id = out.message_id;
        const bool with_error = slot.entry_state == OutboxState::pending || slot.entry_state == OutboxState::failed;
        update.error = with_error ? std::string_view(out.error_code) : std::string_view();
    }

    // After a group write: false if more became dirty meanwhile (the write goes on, keeping its reference and
    // store task), else the write is over.
    bool group_write_done(Plan& p) {
        Actions actions;
        std::unique_lock lock(p.mutex);
        p.flushing.clear();
        if (!p.dirty.empty()) return false;
        p.flush_pending = false;
        --p.store_tasks;
        if (p.waiting_for_tasks && p.store_tasks == 0) {
            p.waiting_for_tasks = false;
            finalize_locked(p, actions);
        }
        check_idle_locked(p, actions);
        lock.unlock();
        run(p, actions);
        intrusive_ptr_release(&p);
        return true;
    }

    void final_write_done(Plan& p) {
        Actions actions;
        {
            std::lock_guard lock(p.mutex);
            p.final_dirty.clear();
            --p.store_tasks;
            if (p.store_tasks == 0) {
                finalize_locked(p, actions);
            } else {
                p.waiting_for_tasks = true;
            }
            check_idle_locked(p, actions);
        }
        run(p, actions);
        intrusive_ptr_release(&p);
    }

    // ---- lanes --------------------------------------------------------------------------------------------------

    void enqueue_range(Plan& p, std::size_t begin, std::size_t end) {
        // `sendable` and `lane` are fixed once sending started: no plan lock needed to read them.
        std::size_t i = begin;
        while (i < end) {
            if (!p.slots[i].sendable) {
                ++i;
                continue;
            }
            Lane* lane = p.slots[i].lane;
            std::size_t j = i;
            std::unique_lock lock(lane->mutex);
            const bool closed = lane->closed;
            for (; j < end && (!p.slots[j].sendable || p.slots[j].lane == lane); ++j) {
                if (p.slots[j].sendable && !closed) {
                    lane->queue.push_back(LaneItem{&p, static_cast<std::uint32_t>(j), Op::send});
                }
            }
            if (closed) {
                lock.unlock();
                for (std::size_t k = i; k < j; ++k) {
                    if (p.slots[k].sendable) on_dropped(p, LaneItem{&p, static_cast<std::uint32_t>(k), Op::send});
                }
            } else {
                pump(*lane, std::move(lock));
            }
            i = j;
        }
    }

    void enqueue_removes(Plan& p, const std::vector<std::uint32_t>& indexes) {
        for (const std::uint32_t index : indexes) {
            Lane* lane = p.slots[index].lane;
            bool closed = false;
            {
                std::lock_guard lock(lane->mutex);
                closed = lane->closed;
                if (!closed) lane->queue.push_back(LaneItem{&p, index, Op::remove});
            }
            if (closed) {
                on_dropped(p, LaneItem{&p, index, Op::remove});
            } else {
                pump(*lane);
            }
        }
    }

    void schedule_retry(Plan& p, std::uint32_t index, std::int64_t delay_ms) {
        Lane* lane = p.slots[index].lane;
        const auto due = SteadyClock::now() + std::chrono::milliseconds(delay_ms);
        bool closed = false;
        {
            std::lock_guard lock(lane->mutex);
            closed = lane->closed;
            if (!closed) {
                lane->delayed.push_back(DelayedItem{due, LaneItem{&p, index, Op::send}});
                std::push_heap(lane->delayed.begin(), lane->delayed.end(), later_due);
            }
        }
        if (closed) {
            on_dropped(p, LaneItem{&p, index, Op::send});
        } else {
            pump(*lane);  // arms the lane's timer (or flags the thread draining it to)
        }
    }

    // Sends what the lane's limits allow. One thread at a time drains a lane; others flag it and leave.
    void pump(Lane& lane) { pump(lane, std::unique_lock(lane.mutex)); }

    void pump(Lane& lane, std::unique_lock<std::mutex> lock) {
        if (lane.pumping) {
            lane.repump = true;
            return;
        }
        lane.pumping = true;
        // Closes when this returns, after the lane's lock was released: the writes it held go out then.
        WriteScopeGuard writes(*this, lane.concurrency);
        for (;;) {
            lane.repump = false;
            if (!lane.delayed.empty()) {
                const auto now = SteadyClock::now();
                while (!lane.delayed.empty() && lane.delayed.front().due <= now) {
                    std::pop_heap(lane.delayed.begin(), lane.delayed.end(), later_due);
                    lane.queue.push_back(lane.delayed.back().item);
                    lane.delayed.pop_back();
                }
            }
            // Sends granted after a wait go first: they hold their slot already.
            while (!lane.granted.empty() && !lane.closed) {
                const LaneItem item = lane.granted.front().item;
                if (!claim(item)) {  // cut while it waited
                    --lane.in_flight;
                    lane.request.route.swap(lane.granted.front().route);
                    lane.granted.pop_front();
                    unused_grant(lane, item, lock);
                    continue;
                }
                lane.granted.pop_front();
                send_claimed(lane, item, lock);
            }
            while (!lane.queue.empty() && lane.in_flight < lane.concurrency && !lane.closed) {
                const LaneItem item = lane.queue.front();
                lane.queue.pop_front();
                if (item.op == Op::send) {
                    set_route(lane.request.route, *item.plan, item.index);
                    if (!lane.rate_limits->try_acquire(lane.request)) {
                        // It waits for its grant holding a slot; on_granted() hands it back.
                        ++lane.in_flight;
                        RateRequest request = lane.request;
                        Plan* plan = item.plan;
                        const std::uint32_t index = item.index;
                        lock.unlock();
                        lane.rate_limits->acquire(
                            std::move(request),
                            [plan, index, route = lane.request.route](Result<void> granted) mutable {
                                plan->engine->on_granted(*plan, index, route, std::move(granted));
                            });
                        lock.lock();
                        continue;
                    }
                }
                if (!claim(item)) {  // cancelled: deadline, atomic failure, already final
                    if (item.op == Op::send) {
                        unused_grant(lane, item, lock);  // lane.request.route is still its route
                    } else {
                        lock.unlock();
                        intrusive_ptr_release(item.plan);
                        lock.lock();
                    }
                    continue;
                }
                ++lane.in_flight;
                send_claimed(lane, item, lock);
            }
            if (!lane.repump) break;
        }
        lane.pumping = false;
        std::shared_ptr<Connector> retired;
        if (lane.closed) {
            retired = std::move(lane.connector);
        } else {
            arm_lane_timer_locked(lane);
        }
        lock.unlock();
    }

    // Hands claimed @p item (its slot counted in lane.in_flight) to the connector, with the lane unlocked.
    void send_claimed(Lane& lane, const LaneItem& item, std::unique_lock<std::mutex>& lock) {
        Connector& connector = *lane.connector;
        if (item.op == Op::send) fill_message(lane, *item.plan, item.index);
        lock.unlock();
        const bool completed_inline = dispatch(connector, lane, item);
        lock.lock();
        if (completed_inline) --lane.in_flight;  // its slot, freed here rather than by on_sent()
    }

    // A grant on route lane.request.route for @p item that will not be used (the recipient was cut): the scheduler
    // hears that no response comes, and the queue's reference of the plan goes.
    void unused_grant(Lane& lane, const LaneItem& item, std::unique_lock<std::mutex>& lock) {
        lock.unlock();
        lane.rate_limits->observe(lane.request.route, RateLimitInfo{});
        intrusive_ptr_release(item.plan);
        lock.lock();
    }

    // send_route(address) of recipient @p index (not reported yet), into @p route without allocating once warm.
    static void set_route(std::string& route, const Plan& p, std::uint32_t index) {
        const Address& to = p.out[index].address;
        route.assign(to.is_user ? "send @" : "send ");
        route += to.target;
    }

    static void fill_message(Lane& lane, const Plan& p, std::uint32_t index) {
        OutboundMessage& message = lane.scratch;
        std::string& key = message.idempotency_key;
        if (lane.scratch_plan != p.serial) {  // a fan-out sends one plan's text many times in a row
            lane.scratch_plan = p.serial;
            message.text = p.text;
            if (p.reply_to) {
                if (message.reply_to) {
                    *message.reply_to = *p.reply_to;
                } else {
                    message.reply_to.emplace(*p.reply_to);
                }
            } else {
                message.reply_to.reset();
            }
            lane.scratch_prefix = 0;  // the key's prefix follows with the first recipient
        }
        // Every recipient of a lane is on its connection, so only the target changes from one send to the next (and,
        // rarely, channel or person).
        const Address& to = p.out[index].address;
        if (lane.scratch_prefix == 0 || message.to.is_user != to.is_user) {
            message.to.connection = to.connection;
            message.to.is_user = to.is_user;
            key.assign(p.plan_id);
            key += '|';
            key += to.connection;
            key += to.is_user ? "/@" : "/";
            lane.scratch_prefix = key.size();
        }
        message.to.target = to.target;
        // Stable per (plan, recipient), so a platform with nonces drops a resend after a crash.
        key.resize(lane.scratch_prefix);
        key += to.target;
    }

    // Hands @p item to the connector. Returns true if a send completed inline (inside Connector::send, on this
    // thread): its result was recorded here, without on_sent() taking the lane's lock to free its slot — the caller,
    // which drains the lane, frees it when it takes the lock again.
    bool dispatch(Connector& connector, Lane& lane, const LaneItem& item) {
        Plan* plan = item.plan;
        const std::uint32_t index = item.index;
        InlineSend inline_send{plan, index, {}};
        try {
            if (item.op == Op::send) {
                InlineSend* const outer = std::exchange(t_inline_send, &inline_send);
                try {
                    connector.send(lane.scratch, [plan, index](Result<SentMessage> result) {
                        if (InlineSend* pending = t_inline_send;
                            pending != nullptr && pending->plan == plan && pending->index == index && !pending->result) {
                            pending->result.emplace(std::move(result));
                            return;
                        }
                        plan->engine->on_sent(*plan, index, std::move(result));
                    });
                } catch (...) {
                    t_inline_send = outer;
                    throw;
                }
                t_inline_send = outer;
            } else {
                const RecipientOutcome& out = plan->out[index];
                connector.remove(out.address, out.message_id, [plan, index](Result<void> result) {
                    plan->engine->on_removed(*plan, index, std::move(result));
                });
            }
        } catch (const std::exception& e) {
            // A connector must not throw; if one does, the attempt counts as failed (and its callback is assumed
            // never to come, unless it came already).
            logger_.error("delivery: connector of '" + lane.name + "' threw from " +
                          (item.op == Op::send ? "send" : "remove") + ": " + e.what());
            if (item.op == Op::remove) {
                on_removed(*plan, index, fail(kSendFailed, std::string("the connector threw: ") + e.what()));
            } else if (!inline_send.result) {
                on_sent(*plan, index, fail(kSendFailed, std::string("the connector threw: ") + e.what()));
            }
        }
        if (!inline_send.result) return false;
        complete_send(*plan, index, *inline_send.result);
        intrusive_ptr_release(plan);  // the send's reference
        return true;
    }

    // A send's result, its lane slot freed already (or by the caller): the plan hears it. The caller holds the
    // send's reference of the plan and gives it up afterwards.
    void complete_send(Plan& p, std::uint32_t index, Result<SentMessage>& result) {
        Actions actions;
        {
            std::lock_guard lock(p.mutex);
            complete_send_locked(p, index, result, actions);
        }
        run(p, actions);
        note_completion();
    }

    void arm_lane_timer_locked(Lane& lane) {
        std::optional<SteadyClock::time_point> wake;
        if (!lane.delayed.empty()) wake = lane.delayed.front().due;
        if (!wake || (lane.timer_armed && lane.timer_due <= *wake)) return;
        lane.timer_armed = true;
        lane.timer_due = *wake;
        const std::uint64_t generation = ++lane.timer_generation;
        lane.timer.expires_at(*wake);
        lane.timer.async_wait([self = shared_from_this(), lane = &lane, generation](const boost::system::error_code&) {
            {
                std::lock_guard lock(lane->mutex);
                if (generation != lane->timer_generation) return;  // re-armed or closed since
                lane->timer_armed = false;
            }
            self->pump(*lane);
        });
    }

    void close_lanes(const std::vector<Lane*>& lanes) {
        for (Lane* lane : lanes) {
            std::deque<LaneItem> queued;
            std::deque<GrantedItem> granted;
            std::vector<DelayedItem> delayed;
            std::shared_ptr<Connector> retired;
            {
                std::lock_guard lock(lane->mutex);
                if (lane->closed) continue;
                lane->closed = true;
                queued.swap(lane->queue);
                granted.swap(lane->granted);
                lane->in_flight -= static_cast<std::uint32_t>(granted.size());
                delayed.swap(lane->delayed);
                ++lane->timer_generation;
                lane->timer_armed = false;
                lane->timer.cancel();
                if (!lane->pumping) retired = std::move(lane->connector);  // else the draining thread lets go
            }
            for (const LaneItem& item : queued) on_dropped(*item.plan, item);
            for (const GrantedItem& granted_item : granted) {
                lane->rate_limits->observe(granted_item.route, RateLimitInfo{});
                on_dropped(*granted_item.item.plan, granted_item.item);
            }
            for (const DelayedItem& item : delayed) on_dropped(*item.item.plan, item.item);
            // Sends still waiting for a grant of the engine's own scheduler end now (on_granted() drops them); the
            // host shuts down the schedulers it gave.
            if (lane->owns_rate_limits) lane->rate_limits->shutdown();
        }
    }

    Store& store_;
    const Directory& directory_;
    asio::io_context& io_;
    StoreExecutor store_executor_;
    Logger& logger_;
    EngineOptions options_;
    Clock clock_;

    std::mutex lanes_mutex_;
    std::vector<std::pair<std::string, Lane*>> lanes_;  // the current lane of each connection
    std::vector<std::unique_ptr<Lane>> all_lanes_;      // every lane made; plans keep raw pointers to them

    // What plans left pending, by plan id, for retry_parked() (see park_locked()).
    mutable std::mutex parked_mutex_;
    std::map<std::string, PendingPlan, std::less<>> parked_;
    std::size_t parked_entries_ = 0;
    std::map<std::string, std::string> last_probe_;           // connection -> the plan id its last sweep tried first
    std::map<std::string, std::uint64_t, std::less<>> late_;  // plan id -> serial of the run whose late results park
    std::atomic<std::size_t> parked_ids_{0};  // parked_.size() + late_.size(), read without the lock by every launch
    asio::steady_timer parked_timer_;         // the sweep (arm_parked_sweep_locked())
    std::chrono::milliseconds parked_delay_{0};
    bool parked_armed_ = false;
    bool parked_closed_ = false;  // shutdown(): no sweep any more

    // Final states the store refused, by (plan id, recipient text), written again until it takes them.
    using UnrecordedKey = std::pair<std::string, std::string>;
    static UnrecordedKey unrecorded_key(std::string_view plan_id, const Address& recipient) {
        return {std::string(plan_id), recipient.to_string()};
    }
    struct Unrecorded {
        Address address;
        OutboxState state = OutboxState::pending;
        std::int32_t attempts = 0;
        std::string sent_message_id;
        std::string error;
        std::uint64_t version = 0;  // which record_later() put it there
    };
    std::mutex unrecorded_mutex_;
    std::map<UnrecordedKey, Unrecorded> unrecorded_;
    std::atomic<std::size_t> unrecorded_count_{0};  // unrecorded_.size(), read without the lock by every round
    asio::steady_timer unrecorded_timer_;
    std::chrono::milliseconds unrecorded_delay_{0};
    std::uint64_t unrecorded_version_ = 0;
    bool unrecorded_armed_ = false;
    bool unrecorded_closed_ = false;  // shutdown(): nothing is armed any more

    // Plans not idle yet, newest first, linked through Plan::running_prev/next: what resume() leaves to them.
    SpinLock running_lock_;
    Plan* running_ = nullptr;

    std::atomic<std::uint64_t> next_serial_{0};
    std::atomic<std::size_t> active_{0};
    std::atomic<std::size_t> waiters_{0};
    std::mutex idle_mutex_;
    std::condition_variable idle_cv_;
};

}  // namespace engine_detail

struct DeliveryEngine::Impl : engine_detail::Core {
    using Core::Core;
};

DeliveryEngine::DeliveryEngine(Store& store, const Directory& directory, boost::asio::io_context& io,
                               StoreExecutor store_executor, Logger& logger, EngineOptions options, Clock clock)
    : impl_(
          std::make_shared<Impl>(store, directory, io, std::move(store_executor), logger, options, std::move(clock))) {}

DeliveryEngine::~DeliveryEngine() { impl_->shutdown(); }

void DeliveryEngine::add_connection(const std::string& name, std::shared_ptr<Connector> connector,
                                    ConnectionLimits limits, std::shared_ptr<ratelimit::Scheduler> rate_limits) {
    impl_->add_connection(name, std::move(connector), limits, std::move(rate_limits));
}

void DeliveryEngine::clear_connections() { impl_->clear_connections(); }

bool DeliveryEngine::retire(const std::string& name, std::chrono::milliseconds timeout) {
    return impl_->retire(name, timeout);
}

void DeliveryEngine::execute(PlannedDelivery&& delivery, bool persisted, ReportCallback done) {
    impl_->execute(delivery, persisted, done);
}

void DeliveryEngine::execute_all(std::vector<Execution> executions, bool persisted) {
    impl_->execute_all(std::move(executions), persisted);
}

void DeliveryEngine::resume(std::vector<OutboxEntry> pending) { impl_->resume(std::move(pending)); }

void DeliveryEngine::retry_parked(const std::string& connection) { impl_->retry_parked(connection); }

std::size_t DeliveryEngine::parked() const { return impl_->parked(); }

bool DeliveryEngine::wait_idle(std::chrono::milliseconds timeout) { return impl_->wait_idle(timeout); }

std::size_t DeliveryEngine::in_progress() const { return impl_->in_progress(); }

}  // namespace switchboard::routing
