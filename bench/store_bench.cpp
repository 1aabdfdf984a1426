// The store benchmarks (bench/README.md, "Store benchmarks"): how many inbound messages per second each store
// records the way the host's pipeline does — batches of up to 256 (host::Pipeline::kMaxBatch) over 8 channels, each
// batch one Store::commit (dedup entry, cursor, and with message_log the message itself) — for the memory, sqlite
// and redis stores. The redis store talks to a redis-server this program starts on a free loopback port (nothing
// kept on disk: `--save "" --appendonly no`) and stops at exit.
//
// Two shapes per store:
//   commit  one Store::commit per batch: the dedup check is the commit's own (a message already in the ledger is
//           skipped), so this is the store's throughput for "dedup + cursor".
//   host    what host::Pipeline does: one Store::are_processed for the batch (the dedup lookup before any bot sees
//           it), then the commit. For the redis store that is two round trips per batch.
// With threads (`threads:4`), each thread is one connection's lane with channels of its own, sharing one store.
//
// The machine these figures come from is shared, so wall-clock rates depend on what else runs. Every redis run also
// reports the CPU time each side spent per message — `cpu_time` (this program's thread, per batch of 256,
// Google Benchmark's own column) and `server_cpu_us` (redis-server's used_cpu_user + used_cpu_sys from INFO cpu) —
// which other work on the machine does not inflate.
//
// Each run ends with a check that every channel's cursor is the last message committed to it; if not, the run is
// marked with an error and the program exits 1. SWITCHBOARD_BENCH_SCALE (default 1) scales the fixed iteration
// counts; ctest runs everything at 0.01 as a smoke test.

#include <SQLiteCpp/SQLiteCpp.h>
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "allocator/allocator.hpp"
#include "memory_store.hpp"
#include "redis_server.hpp"
#include "redis_store.hpp"
#include "sqlite_store.hpp"
#include "sqlite_version1.hpp"
#include "test_support.hpp"

namespace {

using namespace switchboard;

constexpr std::size_t kBatch = 256;        // host::Pipeline::kMaxBatch
constexpr std::size_t kChannels = 8;       // per thread; batches take messages from them in turn
constexpr std::int64_t kIterations = 400;  // batches per thread: 102,400 messages at scale 1
const std::string kText = "the deploy finished, 3 services restarted";

enum class Kind { memory, sqlite, redis };

std::int64_t scaled(std::int64_t iterations) {
    static const double scale = [] {
        const char* text = std::getenv("SWITCHBOARD_BENCH_SCALE");
        const double value = text != nullptr ? std::atof(text) : 1.0;
        return value > 0 ? value : 1.0;
    }();
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(static_cast<double>(iterations) * scale));
}

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Set when a run could not do what it measures; main() then exits 1, so the smoke test fails.
std::atomic<bool> g_failed{false};

void fail_run(benchmark::State& state, const std::string& why) {
    g_failed = true;
    state.SkipWithError(why.c_str());
}

testing_support::RedisServer& redis_server() {
    static testing_support::RedisServer server;
    static const bool started = server.start();
    if (!started) throw std::runtime_error(server.why());
    return server;
}

// The store of the current run, made by Setup before the threads start and dropped by Teardown after.
struct Shared {
    std::unique_ptr<testing_support::TempDir> dir;
    std::unique_ptr<Store> store;
};
Shared g_shared;

template <Kind kind, bool message_log>
void open_store(const benchmark::State&) {
    g_shared.dir = std::make_unique<testing_support::TempDir>();
    if constexpr (kind == Kind::memory) {
        g_shared.store = std::make_unique<stores::MemoryStore>();
    } else if constexpr (kind == Kind::sqlite) {
        stores::SqliteOptions options;
        options.message_log = message_log;
        g_shared.store = std::make_unique<stores::SqliteStore>(*g_shared.dir / "store.db", options);
    } else {
        auto& server = redis_server();
        if (server.command({"FLUSHALL"}) != "OK") throw std::runtime_error("FLUSHALL failed");
        stores::RedisOptions options;
        options.message_log = message_log;
        g_shared.store = std::make_unique<stores::RedisStore>(server.url(), options);
    }
}

void close_store(const benchmark::State&) {
    g_shared.store.reset();
    g_shared.dir.reset();
}

// The batches one thread commits: channel "t<thread>-c<k>", ids "<thread>-<n>", timestamps rising from now.
std::vector<std::vector<ProcessedMessage>> make_batches(int thread, std::int64_t batches) {
    const std::int64_t base = now_ms();
    std::vector<std::vector<ProcessedMessage>> result(static_cast<std::size_t>(batches));
    std::size_t n = 0;
    for (auto& batch : result) {
        batch.reserve(kBatch);
        for (std::size_t i = 0; i < kBatch; ++i, ++n) {
            ProcessedMessage& item = batch.emplace_back();
            Message& m = item.message;
            m.connection = "bench";
            m.channel = "t" + std::to_string(thread) + "-c" + std::to_string(n % kChannels);
            m.id = std::to_string(thread) + "-" + std::to_string(n);
            m.author = Author{"3100000000000" + std::to_string(n % 1000), "user " + std::to_string(n % 1000), false};
            m.text = kText;
            m.timestamp_ms = base + static_cast<std::int64_t>(n);
        }
    }
    return result;
}

// redis-server's CPU time so far, in seconds.
double redis_cpu_seconds() {
    std::istringstream info(redis_server().command({"INFO", "cpu"}));
    double total = 0;
    for (std::string line; std::getline(info, line);) {
        for (const char* field : {"used_cpu_user:", "used_cpu_sys:"}) {
            if (line.starts_with(field)) total += std::atof(line.c_str() + std::strlen(field));
        }
    }
    return total;
}

template <Kind kind, bool check_each>
void commit_batches(benchmark::State& state) {
    Store& store = *g_shared.store;
    const auto batches = make_batches(state.thread_index(), state.max_iterations);
    std::vector<std::vector<Message>> inbound;  // the same batches as the pipeline has them before the lookup
    if constexpr (check_each) {
        for (const auto& batch : batches) {
            auto& messages = inbound.emplace_back();
            for (const ProcessedMessage& item : batch) messages.push_back(item.message);
        }
    }
    const bool measure_server = kind == Kind::redis && state.thread_index() == 0;
    const double server_before = measure_server ? redis_cpu_seconds() : 0;
    std::size_t next = 0;
    for (auto _ : state) {
        if constexpr (check_each) {
            auto seen = store.are_processed(inbound[next]);
            if (!seen || std::find(seen->begin(), seen->end(), true) != seen->end()) {
                fail_run(state, seen ? "a new message was already processed" : seen.error().to_string());
                return;
            }
        }
        const auto& batch = batches[next++];
        if (auto committed = store.commit(batch); !committed) {
            fail_run(state, committed.error().to_string());
            return;
        }
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(next * kBatch));
    if (measure_server) {
        const double messages = static_cast<double>(next * kBatch) * state.threads();
        state.counters["server_cpu_us"] = (redis_cpu_seconds() - server_before) * 1e6 / messages;
    }

    // Every channel's cursor is its last message.
    const auto& last = batches[next - 1];
    for (std::size_t i = last.size() - kChannels; i < last.size(); ++i) {
        const Message& m = last[i].message;
        auto cursor = store.cursor(m.connection, m.channel);
        if (!cursor || !*cursor || (*cursor)->message_id != m.id) {
            fail_run(state, "the cursor of " + m.channel + " is not its last message " + m.id);
            return;
        }
    }
}

template <Kind kind, bool message_log, bool check_each>
void register_one(const std::string& name, int threads) {
    benchmark::RegisterBenchmark(name.c_str(), commit_batches<kind, check_each>)
        ->Setup(open_store<kind, message_log>)
        ->Teardown(close_store)
        ->Iterations(scaled(kIterations))
        ->Threads(threads)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
}

template <Kind kind>
void register_store(const std::string& store, std::vector<int> threads) {
    for (const int t : threads) {
        register_one<kind, true, false>("store/" + store + "/commit/message_log:1", t);
        register_one<kind, false, false>("store/" + store + "/commit/message_log:0", t);
        register_one<kind, true, true>("store/" + store + "/host/message_log:1", t);
    }
}

// ---- pruning ----------------------------------------------------------------------------------------------------
//
// prune/sqlite: one Store::prune() call after a busy window — kPruneBatches × 256 messages in the dedup ledger, each
// with one reply in the outbox, all sent, all older than the bound — which forgets them all, the outbox a slice of
// blocks per transaction. Meanwhile another thread commits one new message at a time, as a live connection would:
// `max_commit_wait_ms` is the longest such commit took, which is how long a slice holds the store. The run ends with a
// check that the outbox holds no entry.

constexpr std::int64_t kPruneBatches = 1600;  // 409,600 messages and replies at scale 1

std::int64_t outbox_entries(const std::filesystem::path& file) {
    SQLite::Database db(file.string(), SQLite::OPEN_READONLY);
    return db.execAndGet("SELECT coalesce(sum(count), 0) FROM outbox_blocks").getInt64();
}

void prune_sqlite(benchmark::State& state) {
    testing_support::TempDir dir;
    const auto file = dir / "store.db";
    stores::SqliteOptions options;
    options.message_log = false;
    stores::SqliteStore store(file, options);
    auto batches = make_batches(0, scaled(kPruneBatches));
    std::size_t n = 0;
    for (auto& batch : batches) {
        std::vector<std::string> plans;
        for (ProcessedMessage& item : batch) {
            OutboxEntry& reply = item.outbox.emplace_back();
            reply.plan_id = item.message.connection + "/" + item.message.channel + "/" + item.message.id + "#echo.0";
            reply.recipient = Address::channel(item.message.connection, item.message.channel);
            reply.text = "echo: " + item.message.text;
            reply.reply_to = item.message.id;
            reply.created_ms = item.message.timestamp_ms;
            plans.push_back(reply.plan_id);
            ++n;
        }
        if (auto committed = store.commit(batch); !committed) return fail_run(state, committed.error().to_string());
        std::vector<OutboxRecipientUpdate> sent(batch.size());
        std::vector<OutboxPlanUpdate> updates(batch.size());
        for (std::size_t i = 0; i < batch.size(); ++i) {
            sent[i] = OutboxRecipientUpdate{&batch[i].outbox.front().recipient, OutboxState::sent, 1, {}, {}};
            updates[i] = OutboxPlanUpdate{plans[i], std::span(&sent[i], 1)};
        }
        if (auto updated = store.outbox_update_plans(updates); !updated) {
            return fail_run(state, updated.error().to_string());
        }
    }
    batches.clear();
    const std::int64_t bound = now_ms() + 3'600'000;  // every entry is older
    std::atomic<bool> pruning{true};
    double longest_commit = 0;
    std::int64_t commits = 0;
    std::thread committer([&] {
        for (std::int64_t k = 0; pruning.load(); ++k) {
            ProcessedMessage live;
            live.message.connection = "bench";
            live.message.channel = "live";
            live.message.id = "live-" + std::to_string(k);
            live.message.timestamp_ms = bound + k;
            const auto start = std::chrono::steady_clock::now();
            if (!store.commit(std::span(&live, 1))) return;
            longest_commit = std::max(longest_commit,
                                      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
            ++commits;
        }
    });
    Result<std::size_t> pruned = std::size_t{0};
    for (auto _ : state) pruned = store.prune(bound);
    pruning = false;
    committer.join();
    if (!pruned) return fail_run(state, pruned.error().to_string());
    if (outbox_entries(file) != 0) return fail_run(state, "finished outbox entries are left after pruning");
    state.counters["entries"] = static_cast<double>(n);
    state.counters["commits_meanwhile"] = static_cast<double>(commits);
    state.counters["max_commit_wait_ms"] = longest_commit * 1e3;
}

// ---- migration ---------------------------------------------------------------------------------------------------
//
// migrate/sqlite: how long opening a store of schema version 1 takes — the migration to version 2 runs then, in one
// transaction, before the host starts — when the file holds kMigrateMessages messages over 8 channels, each in the
// dedup ledger and the message log with one sent reply in the outbox (a busy window). The file is made with SQL in a
// setup the timing leaves out; the run ends with a check that the ledger and the log made it across.

constexpr std::int64_t kMigrateMessages = 400'000;

void migrate_sqlite(benchmark::State& state) {
    const std::int64_t messages = scaled(kMigrateMessages);
    for (auto _ : state) {
        state.PauseTiming();
        testing_support::TempDir dir;
        const auto file = dir / "store.db";
        {
            SQLite::Database db(file.string(), SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
            db.exec("PRAGMA journal_mode = WAL");
            db.exec(testing_support::kSqliteVersion1Schema);
            SQLite::Transaction fill(db);
            const std::string rows = "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n < " +
                                     std::to_string(messages - 1) + ") ";
            const std::string text = "'" + kText + "'";
            db.exec(rows +
                    "INSERT INTO dedup SELECT 'bench', 'c' || (n % 8), '1250000000000' || n, 1700000000000 + n "
                    "FROM seq");
            db.exec(rows + "INSERT INTO messages SELECT 'bench', 'c' || (n % 8), '1250000000000' || n, " +
                    "'u' || (n % 1000), 'user ' || (n % 1000), 0, " + text +
                    ", 1700000000000 + n, 'group', NULL, 0, '' FROM seq");
            db.exec(rows + "INSERT INTO outbox SELECT 'bench/c' || (n % 8) || '/1250000000000' || n || '#echo.0', " +
                    "'bench/c' || (n % 8), 'echo: ' || " + text +
                    ", '1250000000000' || n, 'sent', '', 1, '', 1700000000000 + n FROM seq");
            db.exec(
                "WITH RECURSIVE ks(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM ks WHERE k < 7) "
                "INSERT INTO cursors SELECT 'bench', 'c' || k, '1250000000000' || k, 1700000000000 FROM ks");
            fill.commit();
        }
        state.ResumeTiming();
        stores::SqliteStore store(file);  // migrates
        state.PauseTiming();
        const std::string last = "1250000000000" + std::to_string(messages - 1);
        const std::string channel = "c" + std::to_string((messages - 1) % 8);
        auto processed = store.is_processed({"bench", channel, last});
        auto logged = store.messages("bench", channel, 0, std::numeric_limits<std::int64_t>::max(), 1);
        if (!processed || !*processed || !logged || logged->empty()) {
            return fail_run(state, "the migrated store lost the ledger or the log");
        }
        state.ResumeTiming();
    }
    state.SetItemsProcessed(state.iterations() * messages);
    state.counters["messages"] = static_cast<double>(messages);
}

}  // namespace

int main(int argc, char** argv) {
    allocator::configure();
    benchmark::AddCustomContext("allocator", allocator::name());
    register_store<Kind::memory>("memory", {1});
    register_store<Kind::sqlite>("sqlite", {1});
    register_store<Kind::redis>("redis", {1, 4});
    benchmark::RegisterBenchmark("migrate/sqlite", migrate_sqlite)->Iterations(1)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark("prune/sqlite", prune_sqlite)
        ->Iterations(1)
        ->UseRealTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
    try {
        benchmark::RunSpecifiedBenchmarks();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "store_bench: %s\n", e.what());
        return 1;
    }
    benchmark::Shutdown();
    return g_failed ? 1 : 0;
}
