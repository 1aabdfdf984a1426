#pragma once
// The delivery engine (DESIGN §3): carries out delivery plans. Fan-out runs in parallel and in batches, with a
// concurrency limit per connection and every send acquired from the connection's rate-limit scheduler (route
// send_route(address), priority live), retries retryable failures with backoff, and
// ends every plan in a DeliveryReport before its deadline — never a silent timeout. Each recipient's state lives in
// the store's outbox, so a plan interrupted by a crash is finished at the next start without sending anyone twice.
//
// Batches: a plan releases its next batch when every recipient of the previous one has a final outcome, so at most
// one batch per plan is queued or in flight; connections are shared fairly by queueing (FIFO per connection).
//
// Outbox writes are group commits: what completes while a write runs joins the next one, and sends that complete
// inline (inside Connector::send) are recorded in rounds of at most the connection's concurrency limit (256 within
// execute_all() and resume()), one Store::outbox_update_plans call per round whatever the number of plans. So a crash
// re-sends at most what was in flight or in the round being gathered, with the same idempotency keys. A round the
// store refuses is kept and written again (100 ms doubling to 5 s) until the store takes it.
//
// Status rules (error_code in parentheses):
//   - every recipient delivered (or already `sent` in the outbox) → delivered;
//   - atomic plan with an unreachable member → rejected (atomic_unreachable); every member is listed, the unreachable
//     ones `unreachable` (`unknown_connection` without a connector), the others `atomic_unreachable`;
//   - atomic plan with a permanent failure after sending started: the rest is not sent (`aborted`); with
//     on_failure: compensate, what was sent is deleted where the connector can (`compensated`, outbox `withdrawn`);
//     nothing left delivered → rejected (compensated if something was withdrawn, else the failure's code), otherwise
//     partial (the failure's code);
//   - any recipient still retryable (retries exhausted, the next retry past the deadline, the deadline itself,
//     shutdown) → retryable: error_code `deadline_exceeded` when the deadline cut the plan, else the first retryable
//     recipient's code; retry_after_ms the largest wait any of them asked for (at least the initial backoff);
//   - otherwise some delivered and some failed (unreachable, unknown_connection, a connector's permanent code) →
//     partial with the first failed recipient's code (in plan order); none delivered → rejected with that code.
//
// Outbox states: sent (with the platform id), failed (permanent), withdrawn (compensated), and pending for anything
// that may still go out (retryable, cut by the deadline or shutdown): a retried envelope, the connection coming back
// (retry_parked()) or the next start sends those.
// Engine codes beyond routing.hpp's list: `aborted`, `shutting_down` (both per recipient; shutting_down also as a
// retryable report's code).

#include <switchboard/connector.hpp>
#include <switchboard/routing.hpp>
#include <switchboard/store.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace switchboard::ratelimit {
class Scheduler;
}  // namespace switchboard::ratelimit

namespace switchboard::routing {

/// Limits of one connection.
struct ConnectionLimits {
    /// Sends in flight at once, counting those waiting for their rate-limit grant.
    std::uint32_t concurrency = 8;
    /// Only when add_connection() is given no scheduler: the "global" bucket of the one the engine makes, sustained
    /// sends per second (0: unlimited).
    double rate_per_second = 0;
    /// Only when add_connection() is given no scheduler: that bucket's burst.
    std::uint32_t burst = 1;
};

/// Default time a report may take when an envelope names no deadline: from when the router plans it ahead
/// (Router::plan()), or from when the engine starts it (a deadline_ms of 0).
inline constexpr std::int64_t kDefaultDeadlineMs = 30'000;

/// A plan ready to run: what a strategy decided plus what the envelope carries.
struct PlannedDelivery {
    /// The envelope's idempotency key; outbox entries are keyed (plan_id, recipient).
    std::string plan_id;
    DeliveryPlan plan;
    std::string text;
    std::optional<std::string> reply_to;
    /// The report is final by then (ms since the Unix epoch, on the engine's clock).
    std::int64_t deadline_ms = 0;
};

/// A plan with the callback that receives its report, for execute_all().
struct Execution {
    PlannedDelivery delivery;
    ReportCallback done;
};

/// Engine tuning.
struct EngineOptions {
    /// Recipients per batch when the plan does not say.
    std::uint32_t default_batch_size = 100;
    /// Attempts per recipient before a retryable failure counts as final (within the deadline). With the default
    /// backoff, 8 attempts wait out about 12.7 s of a connection that answers retryable because it is not up yet
    /// (reconnecting, being replaced by a reload, starting), well inside the default 30 s deadline; what is still not
    /// sent then stays pending in the outbox until the next start.
    std::uint32_t max_attempts = 8;
    /// First retry backoff; doubles per attempt, and a connector's retry_after_ms wins when larger.
    std::chrono::milliseconds initial_backoff{100};
    /// What plans left pending for a connection waits for retry_parked(), which the host calls when the connection
    /// is back. A connection that never dropped never is: what waits for it is sent again this long after it was
    /// left pending anyway — if the directory finds one of its recipients reachable — then at doubling delays up to
    /// 10 minutes while something still waits (retry_parked() starts the delays again). Such a sweep sends one plan's
    /// recipients on the connection first, and the others waiting there once that plan's report is not retryable;
    /// successive sweeps take the plans in turn.
    std::chrono::milliseconds parked_retry{30'000};
    /// Hears every report just before its callback gets it, with the time since the plan started (the host's
    /// metrics and status). Called on the thread that delivers the report; must not block.
    std::function<void(const DeliveryReport& report, std::chrono::nanoseconds elapsed)> on_report;
};

/// Milliseconds since the Unix epoch; tests give a fake.
using Clock = std::function<std::int64_t()>;

/// Runs store calls off the I/O threads: the host passes its worker pool. Empty: store calls run inline, on the
/// thread that makes them (benchmarks and tests), without wrapping each in a std::function.
using StoreExecutor = std::function<void(std::function<void()>)>;

class DeliveryEngine {
public:
    DeliveryEngine(Store& store, const Directory& directory, boost::asio::io_context& io, StoreExecutor store_executor,
                   Logger& logger, EngineOptions options = {}, Clock clock = {});
    /// Closes every connection as clear_connections() does. Plans with sends still in flight finish when those
    /// complete (they keep what they use alive); destroy the engine after wait_idle() to have none.
    ~DeliveryEngine();
    DeliveryEngine(const DeliveryEngine&) = delete;
    DeliveryEngine& operator=(const DeliveryEngine&) = delete;

    /// Sends through @p connector for every address on connection @p name, at most limits.concurrency at once,
    /// each after a grant of @p rate_limits (the connection's scheduler, shared with its connector; the host's).
    /// Without one the engine makes its own from limits.rate_per_second and limits.burst, and shuts it down with
    /// the connection.
    void add_connection(const std::string& name, std::shared_ptr<Connector> connector, ConnectionLimits limits,
                        std::shared_ptr<ratelimit::Scheduler> rate_limits = nullptr);

    /// Forgets every connector (at shutdown, after they stopped): what is still queued stays pending in the outbox.
    /// Plans with recipients queued on them end `retryable` / `shutting_down` once their sends in flight complete;
    /// sends waiting for a grant of a scheduler the host gave end so when the host shuts that scheduler down.
    void clear_connections();

    /// After add_connection() replaced connection @p name (or removed it, given no connector): waits until the lanes
    /// it had before hold nothing — no send queued, waiting for a grant or a retry, or in flight at their old
    /// connector — or @p timeout passes, then closes them as clear_connections() does (what is left stays pending in
    /// the outbox) and lets their connectors go. Returns whether they drained. A reload calls it before it stops the
    /// old connector, so replies already queued there still go out through it.
    bool retire(const std::string& name, std::chrono::milliseconds timeout);

    /// Carries out @p delivery and calls @p done exactly once, before the deadline, with the report.
    ///
    /// Atomic plans check every recipient reachable (Directory::reachable) before anything is written or sent, and
    /// report `rejected` / `atomic_unreachable` naming the unreachable ones if one is not. Best-effort plans send
    /// to the reachable ones and report the others `unreachable` (status `partial`). Unless @p persisted (the
    /// entries already entered the outbox with an inbound message), the recipients are added to the outbox first;
    /// recipients whose outbox entry is already `sent` (a retried envelope with the same key) are not sent again.
    ///
    /// With @p persisted the engine trusts the entries to be fresh and does not read them back. A deadline_ms of 0
    /// means 30 s from the plan's start: its outbox write, or execute()'s return if that comes first (an executor
    /// that runs the write later); the entries' created_ms is the write's time. With an inline store executor and a
    /// connector that completes inline, @p done is called before execute() returns and no timer is armed.
    void execute(PlannedDelivery&& delivery, bool persisted, ReportCallback done);

    /// Carries out each plan of @p executions as execute() does, with their outbox writes grouped: what completes
    /// while they start (sends that complete inline) is recorded in rounds of up to 256 recipients, one
    /// Store::outbox_update_plans call per round, rather than one call per plan. The pipeline hands over the replies of
    /// an inbound batch this way. Empty callbacks are allowed.
    void execute_all(std::vector<Execution> executions, bool persisted);

    /// Finishes plans that the outbox holds as pending (after a restart): sends each pending entry once, logging
    /// each plan's report.
    ///
    /// Entries are grouped by plan id into best-effort plans due in 30 s. Reachability is not checked (connections
    /// are still connecting at start-up): a connector that is not ready answers retryable and the engine retries.
    /// Entries this engine knows better than the store are left out, as they would go out twice: those of plans it
    /// is still running (a lease taken back after an outage), and those whose final state the store refused and the
    /// engine is writing again.
    void resume(std::vector<OutboxEntry> pending);

    /// Connection @p connection is back (connected or resumed): sends again, as resume() does, the recipients on it
    /// that plans of this run left pending — still retryable when their attempts ran out, or cut by the deadline
    /// before they were sent (their reports said retryable). Without this they would wait in the outbox for the next
    /// start. A recipient in flight when its deadline came waits this way too if its late result is retryable. A plan
    /// executed again under the same id takes its recipients over (and the late results of the earlier run are then
    /// left to it), so nobody gets a message twice. At most 100,000 recipients wait this way; beyond, they wait for
    /// the next start. The engine also sends them again by itself, EngineOptions::parked_retry after they were left
    /// pending and then at doubling delays, for a connection that never dropped and so never comes back (one plan
    /// first, the rest once it got through).
    void retry_parked(const std::string& connection);

    /// Recipients waiting for retry_parked() now.
    [[nodiscard]] std::size_t parked() const;

    /// Waits until no plan is in progress or @p timeout passes; returns whether it drained.
    ///
    /// A plan is in progress until its report was delivered, its sends and deletions in flight have completed and
    /// its outbox writes are done (sends cut by a deadline but still in flight keep it in progress).
    bool wait_idle(std::chrono::milliseconds timeout);

    /// Plans in progress now (as wait_idle() counts them).
    [[nodiscard]] std::size_t in_progress() const;

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace switchboard::routing
