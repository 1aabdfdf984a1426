// The routing benchmarks; bench/README.md says what each one measures and holds the latest figures.
//
// Everything is the real thing but the platform: the router with the bundled private and group strategies, the
// directory built from a config made in code, the delivery engine, and the memory and sqlite stores. The platform
// is a sink connector that completes every send inline and notes the time of its last write. One thread: the
// store executor runs inline, and nothing is left for the io_context to run.
//
// Each figure has a baseline measured in the same run, a bare loop that builds the same envelopes or messages and
// moves them into a vector, so the ratio of the two shows what the framework itself costs.
//
// Benchmarks whose stores grow run a fixed number of iterations. SWITCHBOARD_BENCH_SCALE (default 1) multiplies
// those counts; ctest runs everything at 0.001 as a smoke test. A benchmark whose sink did not receive every
// message, or whose reports were not all `delivered`, is marked with an error and the program exits 1.

#include <SQLiteCpp/SQLiteCpp.h>
#include <benchmark/benchmark.h>
#include <stdlib.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <variant>
#include <vector>

#include "allocator/allocator.hpp"
#include "config/config.hpp"
#include "group_strategy.hpp"
#include "memory_store.hpp"
#include "private_strategy.hpp"
#include "ratelimit/scheduler.hpp"
#include "routing/delivery_engine.hpp"
#include "routing/directory.hpp"
#include "routing/router.hpp"
#include "sqlite_store.hpp"

namespace {

using namespace switchboard;
using SteadyClock = std::chrono::steady_clock;

constexpr const char* kConnection = "sink";
constexpr std::size_t kUsers = 100'000;        // members of the largest group
constexpr std::size_t kPrivateTargets = 1024;  // the private benchmarks address the first of them in turn
constexpr std::size_t kChannels = 8;           // inbound messages come from these in turn
constexpr std::size_t kInboundBatch = 256;     // host::Pipeline::kMaxBatch: messages per store commit
constexpr std::size_t kSinkVectorSize = 4096;  // what the baselines keep before they clear their vector
const std::string kText = "the deploy finished, 3 services restarted";  // longer than a string's inline buffer
const std::string kByKind;  // Router::send's strategy argument: the strategy named like the envelope's kind

std::int64_t scaled(std::int64_t iterations) {
    static const double scale = [] {
        const char* text = std::getenv("SWITCHBOARD_BENCH_SCALE");
        const double value = text != nullptr ? std::atof(text) : 1.0;
        return value > 0 ? value : 1.0;
    }();
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(iterations) * scale));
}

std::string numbered(std::string_view prefix, std::uint64_t n) {
    char digits[24];
    const auto end = std::to_chars(digits, digits + sizeof digits, n).ptr;
    std::string text;
    text.reserve(prefix.size() + static_cast<std::size_t>(end - digits));
    text.append(prefix).append(digits, end);
    return text;
}

// Names as an operator writes them; ids shaped like Discord snowflakes (18 digits, too long for inline storage).
std::string user_name(std::size_t i) { return numbered("user-", i); }
std::string user_id(std::size_t i) { return numbered("", 310'000'000'000'000'000ULL + i * 7919); }
std::string channel_id(std::size_t i) { return numbered("", 120'000'000'000'000'000ULL + i * 104'729); }
std::string group_name(std::size_t members) { return numbered("group-", members); }
std::string message_id(std::uint64_t n) { return numbered("", 1'250'000'000'000'000'000ULL + n); }

std::int64_t system_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

double seconds(SteadyClock::duration d) { return std::chrono::duration<double>(d).count(); }

// One connection `sink`, channels room-0..7, users user-0..99999, and groups group-10000 and group-100000 of the
// first 10,000 and of all users.
const config::Config& bench_config() {
    static const config::Config config = [] {
        config::Config c;
        c.file = "<bench>";
        config::ConnectionConfig connection;
        connection.name = kConnection;
        c.connections.push_back(connection);
        for (std::size_t i = 0; i < kChannels; ++i) {
            c.channels.push_back(config::ChannelConfig{numbered("room-", i), kConnection, channel_id(i), {}, {}});
        }
        c.users.reserve(kUsers);
        for (std::size_t i = 0; i < kUsers; ++i) {
            c.users.push_back(config::UserConfig{user_name(i), kConnection, user_id(i), {}});
        }
        for (const std::size_t members : {std::size_t{10'000}, kUsers}) {
            config::GroupConfig group;
            group.name = group_name(members);
            group.delivery = DeliveryMode::best_effort;
            for (std::size_t i = 0; i < members; ++i) group.members.push_back(c.users[i].name);
            c.groups.push_back(std::move(group));
        }
        return c;
    }();
    return config;
}

std::unique_ptr<routing::ConfigDirectory> make_directory() {
    auto directory = std::make_unique<routing::ConfigDirectory>(bench_config());
    directory->set_connection(kConnection, true, ConnectorCapabilities{});
    return directory;
}

// The platform: accepts every send at once (inline), like a platform that gives no message id (IRC). It reads the
// clock only at the write that reaches the count it was told to expect, its last one: a clock read per write (about
// 60 ns on the benchmark machine) would add to every recipient what the framework does not cost.
class SinkConnector final : public Connector {
public:
    ConnectorCapabilities capabilities() const override { return ConnectorCapabilities{}; }
    void start(ConnectorHost&) override {}
    void stop() override {}
    void send(const OutboundMessage& message, SendCallback done) override {
        bytes += message.text.size();
        if (++writes == expected) last_write = SteadyClock::now();
        done(SentMessage{});
    }

    std::uint64_t expected = 0;  // the write whose time last_write records
    std::uint64_t writes = 0;
    std::uint64_t bytes = 0;
    SteadyClock::time_point last_write{};
};

class NullLogger final : public Logger {
public:
    void log(LogLevel, std::string_view, const LogFields&) noexcept override {}
};

struct Reports {
    std::uint64_t delivered = 0;
    std::uint64_t other = 0;
    std::uint64_t recipients = 0;
    bool stamp = false;  // note when the last report came
    SteadyClock::time_point last{};

    ReportCallback callback() {
        return [this](DeliveryReport report) {
            ++(report.status == DeliveryStatus::delivered ? delivered : other);
            recipients += report.recipients.size();
            if (stamp) last = SteadyClock::now();
        };
    }
};

// The sending half of a host: engine and router over @p store, with the sink as the only connection.
struct Stack {
    Stack(Store& store, const routing::ConfigDirectory& directory)
        : engine(store, directory, io, routing::StoreExecutor{}, logger),
          router(bench_config(), directory, strategies(), &engine) {
        engine.add_connection(kConnection, sink, routing::ConnectionLimits{});
    }

    static std::map<std::string, std::shared_ptr<Strategy>> strategies() {
        return {{strategies::PrivateStrategy::kName, std::make_shared<strategies::PrivateStrategy>()},
                {strategies::GroupStrategy::kName, std::make_shared<strategies::GroupStrategy>()}};
    }

    boost::asio::io_context io;
    NullLogger logger;
    std::shared_ptr<SinkConnector> sink = std::make_shared<SinkConnector>();
    routing::DeliveryEngine engine;
    routing::Router router;
};

// Set when a benchmark could not do what it measures; main() then exits 1, so the smoke test (ctest) fails.
bool g_failed = false;

void fail_benchmark(benchmark::State& state, const std::string& why) {
    g_failed = true;
    state.SkipWithError(why.c_str());
}

bool delivered_all(benchmark::State& state, const SinkConnector& sink, const Reports& reports, std::uint64_t messages,
                   std::uint64_t plans) {
    if (sink.writes == messages && reports.delivered == plans && reports.other == 0) return true;
    fail_benchmark(state, "expected " + std::to_string(messages) + " writes and " + std::to_string(plans) +
                              " delivered reports, got " + std::to_string(sink.writes) + " writes, " +
                              std::to_string(reports.delivered) + " delivered and " + std::to_string(reports.other) +
                              " other reports");
    return false;
}

// ---- private messages ------------------------------------------------------------------------------------------

std::vector<std::string> private_targets() {
    std::vector<std::string> targets;
    for (std::size_t i = 0; i < kPrivateTargets; ++i) targets.push_back(user_name(i));
    return targets;
}

Envelope private_envelope(const std::string& target, std::uint64_t n) {
    Envelope envelope;
    envelope.kind = MessageKind::private_message;
    envelope.target = target;
    envelope.text = kText;
    envelope.idempotency_key = numbered("bench-", n);
    return envelope;
}

// (a) What moving the envelopes costs without the framework.
void private_baseline(benchmark::State& state) {
    const auto targets = private_targets();
    std::vector<Envelope> sink;
    sink.reserve(kSinkVectorSize);
    std::uint64_t n = 0;
    for (auto _ : state) {
        sink.push_back(private_envelope(targets[n % kPrivateTargets], n));
        ++n;
        if (sink.size() == kSinkVectorSize) sink.clear();
    }
    benchmark::DoNotOptimize(sink.data());
    state.SetItemsProcessed(state.iterations());
    state.counters["received"] = static_cast<double>(n);
}

// (b) Router::send of private envelopes: private strategy, engine, memory store outbox, sink. With a @p window,
// that many envelopes go through first, untimed, and prune() forgets them: see private_memory_steady.
void send_private(benchmark::State& state, std::uint64_t window) {
    const auto targets = private_targets();
    auto directory = make_directory();
    stores::MemoryStore store;
    Stack stack(store, *directory);
    Reports reports;
    const ReportCallback done = reports.callback();
    std::uint64_t n = 0;
    for (; n < window; ++n) stack.router.send(private_envelope(targets[n % kPrivateTargets], n), kByKind, done);
    if (window > 0) {
        if (!delivered_all(state, *stack.sink, reports, n, n)) return;
        if (auto pruned = store.prune(system_ms() + 1); !pruned) {
            return fail_benchmark(state, pruned.error().to_string());
        }
        if (auto first = store.outbox_plan(numbered("bench-", 0)); !first || !first->empty()) {
            return fail_benchmark(state, "prune() left the window's outbox entries behind");
        }
    }
    for (auto _ : state) {
        stack.router.send(private_envelope(targets[n % kPrivateTargets], n), kByKind, done);
        ++n;
    }
    if (!delivered_all(state, *stack.sink, reports, n, n)) return;
    state.SetItemsProcessed(state.iterations());
    state.counters["received"] = static_cast<double>(stack.sink->writes - window);
}

void private_memory(benchmark::State& state) { send_private(state, 0); }

// (b') The same in a steady state: a running host's store holds the window of messages it de-duplicates, and its
// prune() forgets what ages out of the window, so new plans live in memory that older ones held. Before the timing
// starts, as many messages as the timed run sends go through and are pruned; the timed run then fills the store to
// the size (b) ends with, as (b) does, but on memory the process has touched before: (b), a process's first seconds,
// also pays the kernel for zeroing every page the store takes for the first time (~100 MB; on this VM 2 to 16 us a
// page, which is most of the difference).
void private_memory_steady(benchmark::State& state) {
    send_private(state, static_cast<std::uint64_t>(state.max_iterations));
}

// (c) The floor under (b): for each envelope, the same parts called in a straight line — the private strategy's
// plan, the memory store's outbox_add_plan, a grant of the rate-limit scheduler, the sink's send (message and key
// built in reused buffers, as the engine's lane does), outbox_update_plans, and a report of one recipient to the same
// callback — with none of the engine's machinery: no plan object, queue, lock of its own, batch, write round,
// retry, deadline or parking. (b) minus this is what that machinery costs; this alone is as fast as private routing
// through these parts can be.
void private_floor(benchmark::State& state) {
    const auto targets = private_targets();
    auto directory = make_directory();
    stores::MemoryStore store;
    boost::asio::io_context io;
    NullLogger logger;
    ratelimit::SchedulerOptions options;
    options.connection = kConnection;
    ratelimit::Scheduler rate_limits(io, logger, options);
    SinkConnector sink;
    strategies::PrivateStrategy strategy;
    Reports reports;
    const ReportCallback done = reports.callback();
    OutboundMessage message;
    RateRequest request;
    request.priority = RequestPriority::live;
    std::uint64_t n = 0;
    for (auto _ : state) {
        Envelope envelope = private_envelope(targets[n % kPrivateTargets], n);
        ++n;
        Result<DeliveryPlan> plan = strategy.plan(envelope, *directory);
        if (!plan) return fail_benchmark(state, plan.error().to_string());
        Recipient& recipient = plan->recipients.front();
        const OutboxRecipient added{&recipient.address, OutboxState::pending, {}};
        const OutboxPlanAdd add{envelope.idempotency_key, envelope.text, std::nullopt, system_ms(),
                                std::span(&added, 1)};
        if (auto existing = store.outbox_add_plan(add); !existing) {
            return fail_benchmark(state, existing.error().to_string());
        }
        request.route.assign(recipient.address.is_user ? "send @" : "send ");
        request.route += recipient.address.target;
        if (!rate_limits.try_acquire(request)) return fail_benchmark(state, "the scheduler refused a grant");
        message.to = recipient.address;
        message.text = envelope.text;
        message.idempotency_key.assign(envelope.idempotency_key).append(1, '|').append(recipient.address.to_string());
        std::optional<Result<SentMessage>> sent;
        sink.send(message, [&sent](Result<SentMessage> result) { sent.emplace(std::move(result)); });
        if (!sent || !*sent) return fail_benchmark(state, "the sink did not accept a send");
        const OutboxRecipientUpdate update{&recipient.address, OutboxState::sent, 1, (*sent)->message_id, {}};
        const OutboxPlanUpdate updated{envelope.idempotency_key, std::span(&update, 1)};
        if (auto recorded = store.outbox_update_plans(std::span(&updated, 1)); !recorded) {
            return fail_benchmark(state, recorded.error().to_string());
        }
        DeliveryReport report;
        RecipientOutcome& outcome = report.recipients.emplace_back();
        outcome.name = std::move(recipient.name);
        outcome.address = std::move(recipient.address);
        outcome.delivered = true;
        outcome.message_id = std::move((*sent)->message_id);
        done(std::move(report));
    }
    if (!delivered_all(state, sink, reports, n, n)) return;
    state.SetItemsProcessed(state.iterations());
    state.counters["received"] = static_cast<double>(sink.writes);
}

// ---- inbound messages made durable, then their replies ----------------------------------------------------------

// Inbound message number @p n: from channel room-(n % 8), by user-(n % 1024).
void fill_message(Message& m, std::uint64_t n, std::int64_t now_ms, MessageKind kind) {
    m.id = message_id(n);
    m.connection = kConnection;
    m.channel = channel_id(n % kChannels);
    m.author = Author{user_id(n % kPrivateTargets), user_name(n % kPrivateTargets), false};
    m.text = kText;
    m.timestamp_ms = now_ms;
    m.kind = kind;
}

// One batch of inbound messages as the pipeline commits them: each with its dedup key and cursor (from the
// message) and the echo reply it produced (an outbox entry, as host/pipeline.cpp stages it), and the reply's plan.
struct InboundBatch {
    std::vector<ProcessedMessage> processed;
    std::vector<routing::Execution> replies;  // what the pipeline hands the engine after the commit

    void fill(std::uint64_t& sequence, std::int64_t now_ms, const ReportCallback& done) {
        processed.clear();
        replies.clear();
        for (std::size_t i = 0; i < kInboundBatch; ++i) {
            const std::uint64_t n = sequence++;
            ProcessedMessage& p = processed.emplace_back();
            Message& m = p.message;
            fill_message(m, n, now_ms, MessageKind::group);

            OutboxEntry& entry = p.outbox.emplace_back();
            entry.plan_id = routing::plan_key(m, "echo", 0);
            entry.recipient = Address::channel(m.connection, m.channel);
            entry.text = "echo: " + m.text;
            entry.reply_to = m.id;
            entry.created_ms = now_ms;

            routing::Execution& execution = replies.emplace_back();
            execution.done = done;
            routing::PlannedDelivery& reply = execution.delivery;
            reply.plan_id = entry.plan_id;
            reply.plan.recipients.push_back(Recipient{entry.recipient.to_string(), entry.recipient});
            reply.plan.batch_size = 1;
            reply.text = entry.text;
            reply.reply_to = entry.reply_to;
            reply.deadline_ms = now_ms + routing::kDefaultDeadlineMs;
        }
    }
};

class TempDir {
public:
    TempDir() {
        std::string pattern = (std::filesystem::temp_directory_path() / "switchboard-bench-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr) throw std::system_error(errno, std::generic_category(), "mkdtemp");
        path_ = pattern;
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    [[nodiscard]] const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// (a) for (c): building the same batches and moving them into vectors.
void inbound_baseline(benchmark::State& state) {
    InboundBatch batch;
    std::vector<ProcessedMessage> durable;
    std::vector<routing::Execution> sent;
    durable.reserve(kSinkVectorSize);
    sent.reserve(kSinkVectorSize);
    std::uint64_t sequence = 0;
    const std::int64_t now = system_ms();
    Reports reports;
    const ReportCallback done = reports.callback();
    for (auto _ : state) {
        batch.fill(sequence, now, done);
        std::move(batch.processed.begin(), batch.processed.end(), std::back_inserter(durable));
        std::move(batch.replies.begin(), batch.replies.end(), std::back_inserter(sent));
        if (sent.size() >= kSinkVectorSize) {
            durable.clear();
            sent.clear();
        }
    }
    benchmark::DoNotOptimize(sent.data());
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kInboundBatch));
    state.counters["received"] = static_cast<double>(sequence);
}

// (a) for (c), the floor SQLite itself sets: the same batches, and the rows the sqlite store writes for them, as
// bare prepared statements over the tables of its schema (version 2; kept in step with sqlite_store.cpp and
// block_table.cpp by hand), in the same two transactions per batch. Per channel, the batch's dedup keys are
// appended to the channel's last ledger block and its replies to the outbox's block for that channel (a new block
// once one holds kBlockBytes), each found with the same look-ups; the outbox update rewrites those blocks. The
// blocks' bytes are the records concatenated, without the store's encoding. No engine, no sends.
void inbound_sqlite_floor(benchmark::State& state) {
    constexpr std::size_t kBlockBytes = 3000;  // BlockTable::kMaxBlockBytes
    TempDir dir;
    SQLite::Database db((dir.path() / "floor.db").string(), SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec("PRAGMA journal_mode = WAL");
    db.exec("PRAGMA synchronous = NORMAL");
    db.exec(R"sql(
CREATE TABLE cursors (connection TEXT NOT NULL, channel TEXT NOT NULL, message_id TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL, PRIMARY KEY (connection, channel)) WITHOUT ROWID;
CREATE TABLE dedup_blocks (id INTEGER PRIMARY KEY, part INTEGER NOT NULL, lo BLOB NOT NULL, hi BLOB NOT NULL,
    count INTEGER NOT NULL, summary INTEGER NOT NULL, records BLOB NOT NULL, UNIQUE (part, lo));
CREATE TABLE outbox_blocks (id INTEGER PRIMARY KEY, part INTEGER NOT NULL, lo BLOB NOT NULL, hi BLOB NOT NULL,
    count INTEGER NOT NULL, summary INTEGER NOT NULL, records BLOB NOT NULL, UNIQUE (part, lo));
CREATE INDEX outbox_blocks_pending ON outbox_blocks (id) WHERE summary > 0;
CREATE TABLE store_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
)sql");
    struct Blocks {
        SQLite::Statement at_or_before;
        SQLite::Statement first_after;
        SQLite::Statement insert;
        SQLite::Statement update;
        SQLite::Database& db;
        Blocks(SQLite::Database& database, const std::string& table)
            : at_or_before(database, "SELECT id, lo, hi, count, summary, records FROM " + table +
                                         " WHERE part = ?1 AND lo <= ?2 ORDER BY lo DESC LIMIT 1"),
              first_after(database, "SELECT lo FROM " + table + " WHERE part = ?1 AND lo > ?2 ORDER BY lo LIMIT 1"),
              insert(database, "INSERT INTO " + table +
                                   " (part, lo, hi, count, summary, records) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
              update(database,
                     "UPDATE " + table + " SET lo = ?2, hi = ?3, count = ?4, summary = ?5, records = ?6 WHERE id = ?1"),
              db(database) {}
        static void bind_blob(SQLite::Statement& s, int i, const std::string& bytes) {
            s.bindNoCopy(i, static_cast<const void*>(bytes.data()), static_cast<int>(bytes.size()));
        }
        // Appends the records of one group (keys increasing, after every key of the partition) as the store does:
        // look up the block before the first key and the one after it, then grow the block before while it has
        // room, else start one. Returns the block's id.
        std::int64_t append(std::int64_t part, const std::string& lo, const std::string& hi, std::int64_t count,
                            const std::string& records) {
            at_or_before.reset();
            at_or_before.bind(1, part);
            bind_blob(at_or_before, 2, lo);
            std::int64_t id = 0;
            std::string old_lo;
            std::string old;
            std::int64_t old_count = 0;
            if (at_or_before.executeStep() && at_or_before.getColumn(5).getBytes() < static_cast<int>(kBlockBytes)) {
                id = at_or_before.getColumn(0).getInt64();
                old_lo = at_or_before.getColumn(1).getString();
                old_count = at_or_before.getColumn(3).getInt64();
                old = at_or_before.getColumn(5).getString();
            }
            first_after.reset();
            first_after.bind(1, part);
            bind_blob(first_after, 2, lo);
            first_after.executeStep();
            SQLite::Statement& write = id != 0 ? update : insert;
            write.reset();
            write.bind(1, id != 0 ? id : part);
            old += records;
            bind_blob(write, 2, id != 0 ? old_lo : lo);
            bind_blob(write, 3, hi);
            write.bind(4, old_count + count);
            write.bind(5, count);
            bind_blob(write, 6, old);
            write.exec();
            return id != 0 ? id : db.getLastInsertRowid();
        }
    };
    Blocks ledger(db, "dedup_blocks");
    Blocks outbox(db, "outbox_blocks");
    SQLite::Statement meta(db,
                           "INSERT INTO store_meta (key, value) VALUES ('outbox_seq', ?1) "
                           "ON CONFLICT (key) DO UPDATE SET value = excluded.value");
    SQLite::Statement cursor(db,
                             "INSERT INTO cursors VALUES (?1, ?2, ?3, ?4) ON CONFLICT (connection, channel) "
                             "DO UPDATE SET message_id = excluded.message_id, timestamp_ms = excluded.timestamp_ms");
    InboundBatch batch;
    std::uint64_t sequence = 0;
    const std::int64_t now = system_ms();
    const ReportCallback done = [](DeliveryReport) {};
    std::array<std::string, kChannels> dedup_records;
    std::array<std::string, kChannels> outbox_records;
    std::array<std::string, kChannels> first_key;
    std::array<std::string, kChannels> last_key;
    std::array<std::int64_t, kChannels> written{};
    std::string key;
    for (auto _ : state) {
        batch.fill(sequence, now, done);
        db.exec("BEGIN IMMEDIATE");
        for (std::size_t c = 0; c < kChannels; ++c) {
            dedup_records[c].clear();
            outbox_records[c].clear();
        }
        for (std::size_t i = 0; i < batch.processed.size(); ++i) {
            const ProcessedMessage& p = batch.processed[i];
            const std::size_t c = i % kChannels;
            dedup_records[c] += p.message.id;
            dedup_records[c].append(8, '\0');
            const OutboxEntry& entry = p.outbox.front();
            key = entry.plan_id + '\0' + entry.recipient.to_string();
            if (outbox_records[c].empty()) first_key[c] = key;
            last_key[c] = key;
            outbox_records[c] += key;
            outbox_records[c] += entry.text;
            outbox_records[c] += *entry.reply_to;
            outbox_records[c].append(24, '\0');  // sequence, created_ms, state, attempts, lengths
        }
        for (std::size_t c = 0; c < kChannels; ++c) {
            const Message& first = batch.processed[c].message;
            const Message& last = batch.processed[batch.processed.size() - kChannels + c].message;
            ledger.append(static_cast<std::int64_t>(c) + 1, first.id, last.id, kInboundBatch / kChannels,
                          dedup_records[c]);
            written[c] = outbox.append(0, first_key[c], last_key[c], kInboundBatch / kChannels, outbox_records[c]);
        }
        meta.reset();
        meta.bind(1, static_cast<std::int64_t>(sequence));
        meta.exec();
        for (std::size_t c = 0; c < kChannels; ++c) {
            const Message& m = batch.processed[batch.processed.size() - kChannels + c].message;
            cursor.reset();
            cursor.bindNoCopy(1, m.connection);
            cursor.bindNoCopy(2, m.channel);
            cursor.bindNoCopy(3, m.id);
            cursor.bind(4, static_cast<std::int64_t>(m.timestamp_ms));
            cursor.exec();
        }
        db.exec("COMMIT");
        // The update round: each block the batch's replies went to is found and written again.
        db.exec("BEGIN IMMEDIATE");
        for (std::size_t c = 0; c < kChannels; ++c) {
            outbox.at_or_before.reset();
            outbox.at_or_before.bind(1, std::int64_t{0});
            Blocks::bind_blob(outbox.at_or_before, 2, first_key[c]);
            if (!outbox.at_or_before.executeStep()) continue;
            const std::string lo = outbox.at_or_before.getColumn(1).getString();
            const std::string hi = outbox.at_or_before.getColumn(2).getString();
            const std::int64_t count = outbox.at_or_before.getColumn(3).getInt64();
            std::string records = outbox.at_or_before.getColumn(5).getString();
            records[records.size() / 2] ^= 1;  // the state bytes change, not the size
            outbox.update.reset();
            outbox.update.bind(1, written[c]);
            Blocks::bind_blob(outbox.update, 2, lo);
            Blocks::bind_blob(outbox.update, 3, hi);
            outbox.update.bind(4, count);
            outbox.update.bind(5, std::int64_t{0});
            Blocks::bind_blob(outbox.update, 6, records);
            outbox.update.exec();
        }
        db.exec("COMMIT");
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kInboundBatch));
    state.counters["received"] = static_cast<double>(sequence);
}

// (c) Store::commit of each batch (dedup entry, cursor, the reply in the outbox, and with range(0) = 1 the message
// log: one transaction), then the batch's replies through the engine with persisted = true, as the host hands them
// over (execute_all): sink, outbox update (grouped), report.
void inbound_sqlite(benchmark::State& state) {
    TempDir dir;
    auto directory = make_directory();
    std::uint64_t sequence = 0;
    {
        stores::SqliteOptions options;
        options.message_log = state.range(0) != 0;
        stores::SqliteStore store(dir.path() / "bench.db", options);
        Stack stack(store, *directory);
        Reports reports;
        const ReportCallback done = reports.callback();
        double commit_seconds = 0;
        double engine_seconds = 0;
        InboundBatch batch;
        const std::int64_t now = system_ms();
        for (auto _ : state) {
            batch.fill(sequence, now, done);
            const auto start = SteadyClock::now();
            if (auto committed = store.commit(batch.processed); !committed) {
                fail_benchmark(state, committed.error().to_string());
                break;
            }
            const auto committed = SteadyClock::now();
            stack.engine.execute_all(std::move(batch.replies), true);
            commit_seconds += seconds(committed - start);
            engine_seconds += seconds(SteadyClock::now() - committed);
        }
        // Where the time went, per message: the store's commit, and the engine with its outbox updates.
        state.counters["commit_us"] = commit_seconds * 1e6 / static_cast<double>(std::max<std::uint64_t>(sequence, 1));
        state.counters["engine_us"] = engine_seconds * 1e6 / static_cast<double>(std::max<std::uint64_t>(sequence, 1));
        if (!delivered_all(state, *stack.sink, reports, sequence, sequence)) return;
        state.counters["received"] = static_cast<double>(stack.sink->writes);
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kInboundBatch));
    std::error_code ec;
    state.counters["db_bytes"] = static_cast<double>(std::filesystem::file_size(dir.path() / "bench.db", ec));
}

// ---- private messages the way the host routes them ------------------------------------------------------------

// What host::Pipeline does with a batch of inbound messages, with a bot that answers each direct message by routing a
// private envelope to a named user (the private strategy and the directory): one dedup lookup for the batch
// (Store::are_processed), per message the plan and its outbox entry staged with the message, one Store::commit
// (dedup entries, cursors, the outbox entries), then the plans through DeliveryEngine::execute_all(…, persisted =
// true): sink, outbox updates in rounds, reports. The inbound messages are built before the clock runs (a connector
// hands them over built), in batches of 256 from 8 direct-message channels.
struct PrivateBatch {
    std::vector<Message> inbound;
    std::vector<std::string> targets = private_targets();

    void fill(std::uint64_t& sequence, std::int64_t now_ms) {
        inbound.clear();
        for (std::size_t i = 0; i < kInboundBatch; ++i) {
            const std::uint64_t n = sequence++;
            fill_message(inbound.emplace_back(), n, now_ms, MessageKind::private_message);
        }
    }
};

// The timed part: everything the host does with one batch. Returns false (and marks the benchmark) on a failure.
bool route_private_batch(benchmark::State& state, Store& store, Stack& stack, PrivateBatch& batch,
                         const ReportCallback& done) {
    auto seen = store.are_processed(batch.inbound);
    if (!seen) {
        fail_benchmark(state, seen.error().to_string());
        return false;
    }
    std::vector<ProcessedMessage> processed;
    processed.reserve(batch.inbound.size());
    std::vector<routing::Execution> plans;
    plans.reserve(batch.inbound.size());
    for (std::size_t i = 0; i < batch.inbound.size(); ++i) {
        if ((*seen)[i]) continue;
        ProcessedMessage& p = processed.emplace_back();
        p.message = std::move(batch.inbound[i]);  // as the pipeline does: moved back only if the commit fails
        const Message& m = p.message;
        // The bot: route the text privately to the user on call (host::StagedBotContext::route).
        Envelope envelope;
        envelope.kind = MessageKind::private_message;
        envelope.target = batch.targets[i % kPrivateTargets];
        envelope.text = m.text;
        envelope.idempotency_key = routing::plan_key(m, "forward", 0);  // as host::StagedBotContext keys it
        auto planned = stack.router.plan(std::move(envelope), kByKind);
        auto* delivery = std::get_if<routing::PlannedDelivery>(&planned);
        if (delivery == nullptr) {
            fail_benchmark(state, "a private envelope was not planned: " + std::get<DeliveryReport>(planned).detail);
            return false;
        }
        // Staged with the message as host::stage does: its one outbox entry takes the plan's address, id and text
        // until the commit has made it durable.
        OutboxEntry& entry = p.outbox.emplace_back();
        entry.recipient = std::move(delivery->plan.recipients.front().address);
        entry.plan_id = std::move(delivery->plan_id);
        entry.text = std::move(delivery->text);
        entry.reply_to = std::move(delivery->reply_to);
        entry.created_ms = m.timestamp_ms;
        plans.push_back(routing::Execution{std::move(*delivery), done});
    }
    if (auto committed = store.commit(processed); !committed) {
        fail_benchmark(state, committed.error().to_string());
        return false;
    }
    for (std::size_t k = 0; k < plans.size(); ++k) {  // host::give_back
        OutboxEntry& entry = processed[k].outbox.front();
        routing::PlannedDelivery& delivery = plans[k].delivery;
        delivery.plan.recipients.front().address = std::move(entry.recipient);
        delivery.plan_id = std::move(entry.plan_id);
        delivery.text = std::move(entry.text);
        delivery.reply_to = std::move(entry.reply_to);
    }
    stack.engine.execute_all(std::move(plans), true);
    return true;
}

// (a) for the route/private figures: the same batches, and per message what the host builds whatever routes it (the
// message moved into what it commits, the envelope with its key, the staged outbox entry) moved into vectors.
void route_private_baseline(benchmark::State& state) {
    PrivateBatch batch;
    std::vector<ProcessedMessage> durable;
    std::vector<Envelope> envelopes;
    durable.reserve(kSinkVectorSize);
    envelopes.reserve(kSinkVectorSize);
    std::uint64_t sequence = 0;
    const std::int64_t now = system_ms();
    for (auto _ : state) {
        state.PauseTiming();
        batch.fill(sequence, now);
        state.ResumeTiming();
        for (std::size_t i = 0; i < batch.inbound.size(); ++i) {
            ProcessedMessage& p = durable.emplace_back();
            p.message = std::move(batch.inbound[i]);
            const Message& m = p.message;
            Envelope& envelope = envelopes.emplace_back();
            envelope.kind = MessageKind::private_message;
            envelope.target = batch.targets[i % kPrivateTargets];
            envelope.text = m.text;
            envelope.idempotency_key = routing::plan_key(m, "forward", 0);  // as host::StagedBotContext keys it
            OutboxEntry& entry = p.outbox.emplace_back();
            entry.plan_id = envelope.idempotency_key;
            entry.recipient = Address::user(kConnection, m.author.id);
            entry.text = envelope.text;
            entry.created_ms = now;
        }
        if (durable.size() >= kSinkVectorSize) {
            durable.clear();
            envelopes.clear();
        }
    }
    benchmark::DoNotOptimize(durable.data());
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kInboundBatch));
}

// (b) and (c): private routing the host's way, with the memory store or the sqlite store (message_log on or off).
template <class MakeStore>
void route_private(benchmark::State& state, MakeStore make_store) {
    auto directory = make_directory();
    std::uint64_t sequence = 0;
    {
        auto store = make_store(state);
        Stack stack(*store, *directory);
        Reports reports;
        const ReportCallback done = reports.callback();
        PrivateBatch batch;
        const std::int64_t now = system_ms();
        for (auto _ : state) {
            state.PauseTiming();
            batch.fill(sequence, now);
            state.ResumeTiming();
            if (!route_private_batch(state, *store, stack, batch, done)) break;
        }
        if (!delivered_all(state, *stack.sink, reports, sequence, sequence)) return;
        state.counters["received"] = static_cast<double>(stack.sink->writes);
    }
    state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(kInboundBatch));
}

void route_private_memory(benchmark::State& state) {
    route_private(state, [](benchmark::State&) { return std::make_unique<stores::MemoryStore>(); });
}

void route_private_sqlite(benchmark::State& state) {
    TempDir dir;
    route_private(state, [&](benchmark::State& s) {
        stores::SqliteOptions options;
        options.message_log = s.range(0) != 0;
        return std::make_unique<stores::SqliteStore>(dir.path() / "bench.db", options);
    });
}

// ---- group fan-out -----------------------------------------------------------------------------------------------

// (d) baseline: copying the group's members into a vector; the time of the last copy.
void fanout_baseline(benchmark::State& state) {
    const auto members = static_cast<std::size_t>(state.range(0));
    auto directory = make_directory();
    const auto group = directory->group(group_name(members));
    std::vector<Recipient> sink;
    sink.reserve(members);
    for (auto _ : state) {
        sink.clear();
        const auto start = SteadyClock::now();
        for (const Recipient& member : group->members) sink.push_back(member);
        state.SetIterationTime(seconds(SteadyClock::now() - start));
    }
    state.counters["members"] = static_cast<double>(members);
    state.counters["received"] = static_cast<double>(sink.size());
}

// (d) Router::send of one group envelope: group strategy over the cached member list, engine in batches of 100,
// memory store outbox, sink. Time from the call to the sink's last write; each send gets a fresh store.
void fanout(benchmark::State& state) {
    const auto members = static_cast<std::size_t>(state.range(0));
    auto directory = make_directory();
    directory->group(group_name(members));  // resolved and cached, as in a host that ran a while
    std::uint64_t n = 0;
    double report_seconds = 0;
    for (auto _ : state) {
        stores::MemoryStore store;
        Stack stack(store, *directory);
        Reports reports;
        reports.stamp = true;
        Envelope envelope;
        envelope.kind = MessageKind::group;
        envelope.target = group_name(members);
        envelope.text = kText;
        envelope.idempotency_key = numbered("fanout-", n++);
        stack.sink->expected = members;
        const auto start = SteadyClock::now();
        stack.router.send(std::move(envelope), kByKind, reports.callback());
        state.SetIterationTime(seconds(stack.sink->last_write - start));
        report_seconds += seconds(reports.last - start);
        if (!delivered_all(state, *stack.sink, reports, members, 1) || reports.recipients != members) break;
    }
    state.counters["members"] = static_cast<double>(members);
    state.counters["send_to_report_ms"] = report_seconds * 1e3 / static_cast<double>(std::max<std::uint64_t>(n, 1));
}

// ---- memory of a cached group -----------------------------------------------------------------------------------

// (e) The heap a resolved, cached member list takes (the directory's first group() call), per member, and how long
// resolving takes.
void cached_group(benchmark::State& state) {
    const auto members = static_cast<std::size_t>(state.range(0));
    double bytes = 0;
    for (auto _ : state) {
        auto directory = make_directory();
        const std::size_t before = allocator::bytes_in_use();
        const auto start = SteadyClock::now();
        auto group = directory->group(group_name(members));
        state.SetIterationTime(seconds(SteadyClock::now() - start));
        bytes = static_cast<double>(allocator::bytes_in_use() - before);
        if (group == nullptr || group->members.size() != members) {
            fail_benchmark(state, "the group did not resolve");
            break;
        }
    }
    state.counters["members"] = static_cast<double>(members);
    state.counters["bytes_per_member"] = bytes / static_cast<double>(members);
}

}  // namespace

BENCHMARK(private_baseline)->Name("private/baseline")->Iterations(scaled(1'000'000))->UseRealTime();
BENCHMARK(private_memory)->Name("private/memory")->Iterations(scaled(500'000))->UseRealTime();
BENCHMARK(private_memory_steady)->Name("private/memory/steady")->Iterations(scaled(500'000))->UseRealTime();
BENCHMARK(private_floor)->Name("private/floor")->Iterations(scaled(500'000))->UseRealTime();
BENCHMARK(route_private_baseline)->Name("route/private/baseline")->Iterations(scaled(2000))->UseRealTime();
BENCHMARK(route_private_memory)->Name("route/private/memory")->Iterations(scaled(2000))->UseRealTime();
BENCHMARK(route_private_sqlite)->Name("route/private/sqlite")->ArgName("message_log")->Arg(1)->Arg(0)
    ->Iterations(scaled(400))->UseRealTime();
BENCHMARK(inbound_baseline)->Name("inbound/baseline")->Iterations(scaled(1000))->UseRealTime();
BENCHMARK(inbound_sqlite_floor)->Name("inbound/sqlite_floor")->Iterations(scaled(400))->UseRealTime();
BENCHMARK(inbound_sqlite)
    ->Name("inbound/sqlite")
    ->ArgName("message_log")
    ->Arg(1)
    ->Arg(0)
    ->Iterations(scaled(400))
    ->UseRealTime();
BENCHMARK(fanout_baseline)
    ->Name("fanout/baseline")
    ->Arg(10'000)
    ->Arg(100'000)
    ->Iterations(scaled(50))
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(fanout)
    ->Name("fanout/memory")
    ->Arg(10'000)
    ->Iterations(scaled(50))
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(fanout)
    ->Name("fanout/memory")
    ->Arg(100'000)
    ->Iterations(scaled(10))
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(cached_group)
    ->Name("directory/cached_group")
    ->Arg(100'000)
    ->Iterations(scaled(5))
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

int main(int argc, char** argv) {
    allocator::configure();
    benchmark::AddCustomContext("allocator", allocator::name());
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return g_failed ? 1 : 0;
}
