// What only the sqlite store does: it survives a restart, migrates its schema, and refuses files it must not touch.

#include <SQLiteCpp/SQLiteCpp.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <set>

#include "block_table.hpp"
#include "sqlite_version1.hpp"
#include "store_test_support.hpp"

using namespace switchboard;
using namespace switchboard::store_tests;
using stores::SqliteStore;
using testing_support::TempDir;

namespace {

std::string read_bytes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
}

int user_version(const std::filesystem::path& path) {
    SQLite::Database db(path.string(), SQLite::OPEN_READONLY);
    return db.execAndGet("PRAGMA user_version").getInt();
}

class NullLogger final : public Logger {
public:
    void log(LogLevel, std::string_view text, const LogFields&) noexcept override { lines.emplace_back(text); }
    std::vector<std::string> lines;
};

}  // namespace

TEST_CASE("the sqlite store keeps everything when it is closed and opened again") {
    TempDir dir;
    const auto path = dir / "store.db";
    {
        SqliteStore store(path);
        OutboxEntry entry = outbox_entry("plan-1", "#ops", 100);
        ok(store.commit(std::vector{processed(make_message("#ops", "m1", 100), {{"echo", "k", "v"}}, {entry})}));
        ok(store.put_connection_state("telegram", "offset", "42"));
    }
    SqliteStore store(path);
    CHECK(ok(store.is_processed({"irc", "#ops", "m1"})));
    CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m1", 100});
    CHECK(ok(store.get_value("echo", "k")) == "v");
    CHECK(ok(store.connection_state("telegram", "offset")) == "42");
    CHECK(ok(store.outbox_pending()).size() == 1);
    CHECK(ids(ok(store.messages("irc", "#ops", 0, 1000, 10))) == std::vector<std::string>{"m1"});
}

TEST_CASE("the sqlite store creates its schema in a new file, an empty file, or a version 0 database") {
    TempDir dir;
    const auto path = dir / "sub" / "dir" / "store.db";

    SECTION("a new file, with its parent directories") {}
    SECTION("an empty file") {
        std::filesystem::create_directories(path.parent_path());
        write_bytes(path, "");
    }
    SECTION("a database at version 0 with a table of its own, which is kept") {
        std::filesystem::create_directories(path.parent_path());
        SQLite::Database db(path.string(), SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
        db.exec("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('keep me')");
    }

    {
        SqliteStore store(path);
        ok(store.commit(std::vector{processed(make_message("#ops", "m1", 100))}));
        CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m1", 100});
    }
    CHECK(user_version(path) == SqliteStore::kSchemaVersion);
    SQLite::Database db(path.string(), SQLite::OPEN_READONLY);
    CHECK(db.execAndGet("PRAGMA journal_mode").getString() == "wal");
    if (db.tableExists("notes")) CHECK(db.execAndGet("SELECT text FROM notes").getString() == "keep me");
}

TEST_CASE("the sqlite store refuses a file that is not a database and leaves it untouched") {
    TempDir dir;
    const auto path = dir / "store.db";
    std::mt19937 random(7);
    std::string garbage(8192, '\0');
    for (char& c : garbage) c = static_cast<char>(random() & 0xff);
    write_bytes(path, garbage);

    const Error error = open_error([&] { SqliteStore store(path); });

    CHECK(error.code == "store_corrupt");
    CHECK_THAT(error.message, Catch::Contains(path.string()) && Catch::Contains("move it aside"));
    CHECK(read_bytes(path) == garbage);
    CHECK_FALSE(std::filesystem::exists(path.string() + "-wal"));
}

TEST_CASE("the sqlite store refuses a database written by a newer schema and leaves it untouched") {
    TempDir dir;
    const auto path = dir / "store.db";
    {
        SQLite::Database db(path.string(), SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
        db.exec("CREATE TABLE future (x); PRAGMA user_version = 99");
    }
    const std::string before = read_bytes(path);

    const Error error = open_error([&] { SqliteStore store(path); });

    CHECK(error.code == "store_schema_too_new");
    CHECK_THAT(error.message, Catch::Contains(path.string()) && Catch::Contains("99") &&
                                  Catch::Contains(std::to_string(SqliteStore::kSchemaVersion)));
    CHECK(read_bytes(path) == before);
    CHECK(user_version(path) == 99);
}

TEST_CASE("the sqlite store refuses a file another open store holds, until that store is closed") {
    TempDir dir;
    const auto path = dir / "store.db";
    auto first = std::make_unique<SqliteStore>(path);
    ok(first->put_connection_state("irc", "k", "v"));

    const Error error = open_error([&] { SqliteStore second(path); });

    CHECK(error.code == "store_locked");
    CHECK_THAT(error.message, Catch::Contains(path.string()) && Catch::Contains("pid " + std::to_string(::getpid())));
    CHECK(ok(first->connection_state("irc", "k")) == "v");  // the refused open did not disturb the first

    first.reset();
    SqliteStore again(path);
    CHECK(ok(again.connection_state("irc", "k")) == "v");
}

TEST_CASE("the sqlite store declares its settings and rejects a bad synchronous value") {
    const auto& schema = SqliteStore::config_schema();
    std::vector<std::string> names;
    for (const ConfigKey& key : schema.keys) {
        names.push_back(key.name);
        CHECK_FALSE(key.description.empty());
        CHECK_FALSE(key.default_value.empty());
    }
    CHECK(names == std::vector<std::string>{"path", "busy_timeout", "synchronous", "dedup_window", "message_log"});

    PluginConfig config;
    config.set("synchronous", std::string("full"));
    CHECK(SqliteStore::check_config(config).empty());

    config.set("synchronous", std::string("sometimes"));
    const auto problems = SqliteStore::check_config(config);
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].key == "synchronous");
    CHECK_THAT(problems[0].message, Catch::Contains("normal") && Catch::Contains("sometimes"));
}

TEST_CASE("the sqlite plugin constructor opens the configured path with its settings") {
    TempDir dir;
    const auto path = dir / "data" / "bot.db";
    PluginConfig config;
    config.set("path", path.string());
    config.set("busy_timeout", std::int64_t{1000});
    config.set("synchronous", std::string("full"));
    config.set("dedup_window", std::int64_t{14} * 24 * 3600 * 1000);
    NullLogger logger;
    boost::asio::io_context io;
    const PluginContext context("store", logger, io);

    {
        SqliteStore store(context, config);
        CHECK(store.path() == path);
        ok(store.put_values(std::vector<KeyValueWrite>{{"echo", "k", "v"}}));
    }
    CHECK(std::filesystem::exists(path));
    CHECK(std::filesystem::exists(path.string() + ".lock"));
    REQUIRE(logger.lines.size() == 1);
    CHECK_THAT(logger.lines[0], Catch::Contains(path.string()));
}

TEST_CASE("the sqlite store with message_log off still deduplicates, moves cursors and fills the outbox") {
    TempDir dir;
    PluginConfig config;
    config.set("path", (dir / "store.db").string());
    config.set("message_log", false);
    NullLogger logger;
    boost::asio::io_context io;
    SqliteStore store(PluginContext("store", logger, io), config);
    const std::vector batch{
        processed(make_message("#ops", "m1", 100), {{"echo", "n", "1"}}, {outbox_entry("plan-1", "#ops", 100)}),
        processed(make_message("#ops", "m2", 200), {}, {outbox_entry("plan-2", "#ops", 200)})};

    ok(store.commit(batch));
    ok(store.commit(batch));  // a retried batch is still harmless

    CHECK(ok(store.is_processed({"irc", "#ops", "m1"})));
    CHECK(ok(store.is_processed({"irc", "#ops", "m2"})));
    CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m2", 200});
    CHECK(ok(store.get_value("echo", "n")) == "1");
    CHECK(ok(store.outbox_pending()).size() == 2);
    CHECK(ok(store.messages("irc", "#ops", 0, 1000, 10)).empty());
}

// A file of schema version 1 as the previous release left it, with a row in every table: what a store written by
// that release holds when this one opens it.
const std::string kVersion1File = std::string(testing_support::kSqliteVersion1Schema) + R"sql(
INSERT INTO dedup VALUES ('irc', '#ops', 'm1', 100), ('irc', '#ops', 'm2', 200), ('irc', '#dev', 'd1', 150),
    ('tg', '#ops', 't1', 300);
INSERT INTO cursors VALUES ('irc', '#ops', 'm2', 200), ('irc', '#dev', 'd1', 150), ('tg', '#ops', 't1', 300);
INSERT INTO connection_state VALUES ('tg', 'offset', '42');
INSERT INTO outbox (plan_id, recipient, text, reply_to, state, sent_message_id, attempts, error, created_ms) VALUES
    ('plan-b', 'irc/#ops', 'second', NULL, 'pending', '', 0, '', 200),
    ('plan-a', 'irc/#ops', 'first', 'm1', 'sent', 'x-1', 1, '', 100),
    ('plan-a', 'irc/@alice', 'first', 'm1', 'pending', '', 2, 'rate_limited', 100),
    ('plan-c', 'irc/#dev', 'third', NULL, 'failed', '', 3, 'gone', 300);
INSERT INTO kv VALUES ('echo', 'count', '7');
INSERT INTO messages VALUES ('irc', '#ops', 'm1', 'u1', 'User 1', 0, 'hello', 100, 'group', NULL, 0, '{}'),
    ('irc', '#ops', 'm2', 'u2', 'User 2', 1, 'again', 200, 'group', 'm1', 1, '');
)sql";

TEST_CASE("the sqlite store migrates a version 1 file and keeps everything in it") {
    TempDir dir;
    const auto path = dir / "store.db";
    {
        SQLite::Database db(path.string(), SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
        db.exec("PRAGMA journal_mode = WAL");
        db.exec(kVersion1File);
    }
    REQUIRE(user_version(path) == 1);

    SqliteStore store(path);
    CHECK(user_version(path) == SqliteStore::kSchemaVersion);

    SECTION("the ledger, cursors, state and key-value entries") {
        for (const MessageKey& key : {MessageKey{"irc", "#ops", "m1"}, MessageKey{"irc", "#ops", "m2"},
                                      MessageKey{"irc", "#dev", "d1"}, MessageKey{"tg", "#ops", "t1"}}) {
            CHECK(ok(store.is_processed(key)));
        }
        CHECK_FALSE(ok(store.is_processed({"irc", "#ops", "d1"})));
        CHECK_FALSE(ok(store.is_processed({"irc", "#new", "m1"})));
        CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m2", 200});
        CHECK(ok(store.cursors("")).size() == 3);
        CHECK(ok(store.connection_state("tg", "offset")) == "42");
        CHECK(ok(store.get_value("echo", "count")) == "7");
    }
    SECTION("the message log") {
        const auto logged = ok(store.messages("irc", "#ops", 0, 1000, 10));
        REQUIRE(ids(logged) == std::vector<std::string>{"m1", "m2"});
        CHECK(logged[1].author.is_bot);
        CHECK(logged[1].reply_to == "m1");
        CHECK(logged[1].recovered);
    }
    SECTION("the outbox, its pending entries oldest first") {
        const auto pending = ok(store.outbox_pending());
        REQUIRE(pending.size() == 2);
        CHECK(pending[0].plan_id == "plan-a");
        CHECK(pending[0].recipient == Address::user("irc", "alice"));
        CHECK(pending[0].attempts == 2);
        CHECK(pending[0].error == "rate_limited");
        CHECK(pending[1].plan_id == "plan-b");
        const auto plan = ok(store.outbox_plan("plan-a"));
        REQUIRE(plan.size() == 2);
        CHECK(plan[0].state == OutboxState::sent);
        CHECK(plan[0].sent_message_id == "x-1");
        CHECK(plan[0].reply_to == "m1");
        CHECK(ok(store.outbox_plan("plan-c")).front().state == OutboxState::failed);
    }
    SECTION("a migrated message is not committed again; new ones are") {
        ok(store.commit(
            std::vector{processed(make_message("#ops", "m1", 500), {}, {outbox_entry("plan-x", "#ops", 500)}),
                        processed(make_message("#ops", "m3", 400))}));
        CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m3", 400});
        CHECK(ok(store.outbox_plan("plan-x")).empty());
        CHECK(ids(ok(store.messages("irc", "#ops", 0, 1000, 10))) == std::vector<std::string>{"m1", "m2", "m3"});
        CHECK(ok(store.prune(250)) == 3);
        CHECK_FALSE(ok(store.is_processed({"irc", "#ops", "m1"})));
        CHECK(ok(store.is_processed({"irc", "#ops", "m3"})));
        CHECK(ok(store.is_processed({"tg", "#ops", "t1"})));
    }
    SECTION("migrated outbox entries are updated, kept when added again, and found after a restart") {
        OutboxEntry done = outbox_entry("plan-b", "#ops", 0);
        done.state = OutboxState::sent;
        done.attempts = 1;
        ok(store.outbox_update(std::vector{done}));
        OutboxEntry again = outbox_entry("plan-a", "#ops", 900);
        ok(store.outbox_add(std::vector{again}));
        CHECK(ok(store.outbox_plan("plan-a")).front().state == OutboxState::sent);
        const auto pending = ok(store.outbox_pending());
        REQUIRE(pending.size() == 1);
        CHECK(pending[0].plan_id == "plan-a");
    }
}

TEST_CASE("the sqlite store finds every pending outbox entry after a restart, however the outbox was updated") {
    TempDir dir;
    const auto path = dir / "store.db";
    auto entry = [](const std::string& plan, OutboxState state) {
        OutboxEntry e = outbox_entry(plan, "#ops", 100);
        e.state = state;
        return e;
    };
    {
        SqliteStore store(path);
        ok(store.outbox_add(std::vector{entry("p1", OutboxState::pending), entry("p2", OutboxState::pending),
                                        entry("p3", OutboxState::sent), entry("p4", OutboxState::pending)}));
        ok(store.outbox_update(std::vector{entry("p1", OutboxState::sent), entry("p4", OutboxState::failed)}));
        // Only p2 is pending now; then p3 goes back to pending, after p2.
        ok(store.outbox_update(std::vector{entry("p3", OutboxState::pending)}));
        ok(store.outbox_add(std::vector{entry("p5", OutboxState::pending)}));
        ok(store.outbox_update(std::vector{entry("p2", OutboxState::sent)}));
    }
    {
        SqliteStore store(path);
        const auto pending = ok(store.outbox_pending());
        std::vector<std::string> plans;
        for (const OutboxEntry& e : pending) plans.push_back(e.plan_id);
        CHECK(plans == std::vector<std::string>{"p3", "p5"});
        ok(store.outbox_update(std::vector{entry("p3", OutboxState::sent), entry("p5", OutboxState::sent)}));
        CHECK(ok(store.outbox_pending()).empty());
        ok(store.outbox_add(std::vector{entry("p6", OutboxState::pending)}));
    }
    SqliteStore store(path);
    const auto pending = ok(store.outbox_pending());
    REQUIRE(pending.size() == 1);
    CHECK(pending[0].plan_id == "p6");
}

namespace {

std::string entry_text(const OutboxEntry& e) {
    return e.plan_id + "|" + e.recipient.to_string() + "|" + e.text + "|" + e.reply_to.value_or("-") + "|" +
           std::string(to_string(e.state)) + "|" + e.sent_message_id + "|" + std::to_string(e.attempts) + "|" +
           e.error + "|" + std::to_string(e.created_ms);
}

std::vector<std::string> entry_texts(const std::vector<OutboxEntry>& entries) {
    std::vector<std::string> texts;
    for (const OutboxEntry& e : entries) texts.push_back(entry_text(e));
    return texts;
}

}  // namespace

// The sqlite store packs its ledger and outbox into blocks that are split, merged and appended to; this drives it
// and the memory store with the same random calls (ids in and out of order, repeated, with odd bytes, enough of
// them to fill many blocks) and checks that both answer alike throughout, across reopenings.
TEST_CASE("the sqlite store answers like the memory store under random use") {
    TempDir dir;
    const auto path = dir / "store.db";
    stores::MemoryStore memory;
    auto sqlite = std::make_unique<SqliteStore>(path);
    std::mt19937 random(GENERATE(1u, 2u, 3u));
    auto pick = [&](std::size_t n) { return static_cast<std::size_t>(random() % n); };
    const std::vector<std::string> channels{"#a", "#b", std::string("#\0c", 3), "#d\x01"};
    auto message_id = [&] {
        switch (pick(4)) {
            case 0:
                return std::to_string(1'000'000 + pick(3000));  // in a narrow range: repeats
            case 1:
                return std::to_string(5'000'000'000ULL + pick(1u << 30));  // spread out
            case 2:
                return std::string(1, static_cast<char>(pick(3))) + std::to_string(pick(500));  // odd bytes
            default:
                return "m" + std::to_string(pick(100000));
        }
    };
    std::vector<std::string> plans;
    auto plan_id = [&](bool fresh) {
        if (!fresh && !plans.empty()) return plans[pick(plans.size())];
        std::string id =
            pick(3) == 0 ? std::string("p\0", 2) + std::to_string(random()) : "plan-" + std::to_string(random() % 5000);
        plans.push_back(id);
        return id;
    };
    auto entry = [&](const std::string& plan) {
        OutboxEntry e = outbox_entry(plan, "#r" + std::to_string(pick(6)), static_cast<std::int64_t>(pick(50)));
        if (pick(4) == 0) e.recipient = Address::user("irc", "u" + std::to_string(pick(4)));
        e.text = std::string(pick(200), 'x') + plan;
        if (pick(2) == 0) e.reply_to = "r" + std::to_string(pick(9));
        return e;
    };
    const std::array states{OutboxState::pending, OutboxState::sent, OutboxState::failed, OutboxState::withdrawn};

    for (int round = 0; round < 120; ++round) {
        const std::size_t action = pick(10);
        if (action < 5) {
            std::vector<ProcessedMessage> batch;
            const std::size_t size = 1 + pick(pick(2) == 0 ? 8 : 120);
            for (std::size_t i = 0; i < size; ++i) {
                Message m = make_message(channels[pick(channels.size())], message_id(),
                                         static_cast<std::int64_t>(1000 + round * 10 + pick(10)));
                std::vector<OutboxEntry> replies;
                if (pick(2) == 0) replies.push_back(entry(plan_id(true)));
                batch.push_back(processed(std::move(m), {}, std::move(replies)));
            }
            ok(memory.commit(batch));
            ok(sqlite->commit(batch));
        } else if (action < 6) {
            std::vector<OutboxEntry> added;
            const std::string plan = plan_id(pick(2) == 0);
            for (std::size_t i = 0, n = 1 + pick(40); i < n; ++i) added.push_back(entry(plan));
            ok(memory.outbox_add(added));
            ok(sqlite->outbox_add(added));
        } else if (action < 8) {
            std::vector<OutboxEntry> updates;
            for (std::size_t i = 0, n = 1 + pick(60); i < n; ++i) {
                OutboxEntry e = entry(plan_id(pick(10) == 0));
                e.state = states[pick(states.size())];
                e.attempts = static_cast<std::int32_t>(pick(300));
                e.sent_message_id = pick(2) == 0 ? "" : "sent-" + std::to_string(random());
                e.error = pick(3) == 0 ? "rate_limited" : "";
                updates.push_back(e);
            }
            Result<void> in_memory;
            Result<void> in_sqlite;
            if (pick(2) == 0) {
                in_memory = memory.outbox_update(updates);
                in_sqlite = sqlite->outbox_update(updates);
            } else {  // the same updates per plan (runs of one plan id), as the delivery engine writes them
                std::vector<OutboxRecipientUpdate> flat;
                for (const OutboxEntry& e : updates) {
                    flat.push_back(
                        OutboxRecipientUpdate{&e.recipient, e.state, e.attempts, e.sent_message_id, e.error});
                }
                std::vector<OutboxPlanUpdate> per_plan;
                for (std::size_t i = 0; i < updates.size();) {
                    std::size_t end = i + 1;
                    while (end < updates.size() && updates[end].plan_id == updates[i].plan_id) ++end;
                    per_plan.push_back(OutboxPlanUpdate{updates[i].plan_id, std::span(flat.data() + i, end - i)});
                    i = end;
                }
                in_memory = memory.outbox_update_plans(per_plan);
                in_sqlite = sqlite->outbox_update_plans(per_plan);
            }
            REQUIRE(in_memory.has_value() == in_sqlite.has_value());
            if (!in_memory) CHECK(in_memory.error().message.substr(0, 40) == in_sqlite.error().message.substr(0, 40));
        } else if (action < 9) {
            const auto before = static_cast<std::int64_t>(1000 + pick(static_cast<std::size_t>(round + 1) * 10));
            CHECK(ok(memory.prune(before)) == ok(sqlite->prune(before)));
        } else {
            sqlite.reset();
            sqlite = std::make_unique<SqliteStore>(path);
        }

        for (int probe = 0; probe < 20; ++probe) {
            const MessageKey key{"irc", channels[pick(channels.size())], message_id()};
            REQUIRE(ok(memory.is_processed(key)) == ok(sqlite->is_processed(key)));
        }
        // A batch's look-up: several channels, ids in any order, some twice, some in no block or between blocks.
        std::vector<Message> probes;
        for (std::size_t i = 0, n = 1 + pick(150); i < n; ++i) {
            probes.push_back(make_message(channels[pick(channels.size())], message_id(), 0));
            if (pick(10) == 0) probes.push_back(probes[pick(probes.size())]);
        }
        if (pick(8) == 0) probes.back().connection = "elsewhere";
        REQUIRE(ok(memory.are_processed(probes)) == ok(sqlite->are_processed(probes)));
        for (int probe = 0; probe < 5 && !plans.empty(); ++probe) {
            const std::string plan = plans[pick(plans.size())];
            REQUIRE(entry_texts(ok(memory.outbox_plan(plan))) == entry_texts(ok(sqlite->outbox_plan(plan))));
        }
        REQUIRE(entry_texts(ok(memory.outbox_pending())) == entry_texts(ok(sqlite->outbox_pending())));
        for (const std::string& channel : channels) {
            REQUIRE(ok(memory.cursor("irc", channel)) == ok(sqlite->cursor("irc", channel)));
            REQUIRE(ids(ok(memory.messages("irc", channel, 0, 1'000'000, 1000))) ==
                    ids(ok(sqlite->messages("irc", channel, 0, 1'000'000, 1000))));
        }
    }
}

// Plan ids as a host makes them (connection/channel/message id#reply): long shared prefixes, a few channels
// interleaved, each channel's ids out of order, some a prefix of another, some twice. The sqlite store sorts a call's
// keys by the bytes past what they all share before sorting by key; both stores must still agree on every entry.
TEST_CASE("the sqlite store adds and updates outbox entries whose plan ids share long prefixes, in any order") {
    TempDir dir;
    stores::MemoryStore memory;
    SqliteStore sqlite(dir / "store.db");
    std::mt19937 random(7);
    std::vector<std::string> plans;
    for (int n = 0; n < 400; ++n) {
        const std::string id = "sink/120000000000" + std::to_string(104729 * (n % 5)) + "/1250000000000" +
                               std::to_string(random() % 100000);
        plans.push_back(id + "#forward.0");
        if (n % 7 == 0) plans.push_back(id);
        if (n % 11 == 0) plans.push_back(id + "#forward.0");
    }
    auto target = [](std::size_t i) { return i % 3 == 0 ? "#a" : "#b"; };
    std::vector<ProcessedMessage> batch;
    for (std::size_t i = 0; i < plans.size(); ++i) {
        OutboxEntry entry = outbox_entry(plans[i], target(i), static_cast<std::int64_t>(i));
        batch.push_back(
            processed(make_message("#c" + std::to_string(i % 5), "m" + std::to_string(i), 100), {}, {entry}));
    }
    ok(memory.commit(batch));
    ok(sqlite.commit(batch));

    std::vector<OutboxEntry> updates;
    for (std::size_t i = 0; i < plans.size(); i += 2) {
        OutboxEntry entry = outbox_entry(plans[i], target(i), static_cast<std::int64_t>(i));
        entry.state = OutboxState::sent;
        entry.sent_message_id = "sent-" + std::to_string(i);
        updates.push_back(entry);
    }
    std::shuffle(updates.begin(), updates.end(), random);
    ok(memory.outbox_update(updates));
    ok(sqlite.outbox_update(updates));
    for (const std::string& plan : plans) {
        REQUIRE(entry_texts(ok(memory.outbox_plan(plan))) == entry_texts(ok(sqlite.outbox_plan(plan))));
    }
    REQUIRE(entry_texts(ok(memory.outbox_pending())) == entry_texts(ok(sqlite.outbox_pending())));

    updates.insert(updates.begin() + 3, outbox_entry(plans[5] + "0", "#a", 0));  // no such entry
    const auto in_memory = memory.outbox_update(updates);
    const auto in_sqlite = sqlite.outbox_update(updates);
    REQUIRE(!in_memory);
    REQUIRE(!in_sqlite);
    CHECK(in_memory.error().message.substr(0, 60) == in_sqlite.error().message.substr(0, 60));
}

// Not run by default: `store_tests "[.bench]"` prints messages committed per second by each store.
TEMPLATE_TEST_CASE("store commit throughput", "[.bench]", MemoryStoreFactory, SqliteStoreFactory) {
    TestType factory;
    auto store = factory.open();
    constexpr int kMessages = 200'000;
    const int batch_size = GENERATE(1, 8, 256);
    std::vector<std::vector<ProcessedMessage>> batches;
    for (int first = 0; first < kMessages; first += batch_size) {
        std::vector<ProcessedMessage> batch;
        for (int i = first; i < std::min(kMessages, first + batch_size); ++i) {
            // Ids like platform snowflakes: the same length and increasing.
            std::string id = std::to_string(1'000'000'000 + i);
            batch.push_back(processed(make_message("#c" + std::to_string(i % 4), std::move(id), i)));
        }
        batches.push_back(std::move(batch));
    }
    const auto start = std::chrono::steady_clock::now();
    for (const auto& batch : batches) ok(store->commit(batch));
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    WARN("batch size " << batch_size << ": " << static_cast<long>(kMessages / elapsed.count()) << " messages/s, "
                       << static_cast<long>(batches.size() / elapsed.count()) << " commits/s");
    CHECK(ok(store->is_processed({"irc", "#c1", "1000000001"})));
}

TEST_CASE("a block table's remove_if goes on where a bounded call stopped, and says when it saw every block",
          "[store][sqlite]") {
    SQLite::Database db(":memory:", SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE);
    db.exec(
        "CREATE TABLE blocks (id INTEGER PRIMARY KEY, part INTEGER NOT NULL, lo BLOB NOT NULL, hi BLOB NOT NULL, "
        "count INTEGER NOT NULL, summary INTEGER NOT NULL, records BLOB NOT NULL, UNIQUE (part, lo))");
    stores::BlockTable table(
        db, "blocks", [](std::span<const stores::BlockTable::Record> records) { return std::int64_t(records.size()); },
        [](std::int64_t a, std::int64_t b) { return a + b; });
    std::vector<std::string> keys;
    for (int i = 0; i < 300; ++i) keys.push_back("key-" + std::to_string(1000 + i));
    const std::string value(100, 'v');
    std::vector<stores::BlockTable::Record> records;
    for (const std::string& key : keys) records.push_back({key, value});
    std::vector<bool> inserted;
    table.insert(1, records, inserted);
    const auto blocks = db.execAndGet("SELECT count(*) FROM blocks").getInt64();
    REQUIRE(blocks > 6);

    const auto even = [](const stores::BlockTable::Record& record) { return (record.key.back() - '0') % 2 == 0; };
    std::size_t removed = 0;
    int calls = 0;
    std::int64_t after = 0;
    while (true) {
        const auto removal = table.remove_if(std::numeric_limits<std::int64_t>::max(), even, after, 3);
        ++calls;
        removed += removal.removed;
        if (removal.complete) break;
        CHECK(removal.last_id > after);
        after = removal.last_id;
    }
    CHECK(removed == 150);
    CHECK(calls == static_cast<int>((blocks + 2) / 3));  // three blocks a call, the last call seeing the end
    const auto left = table.range(1, "", "\x7f");
    CHECK(left.size() == 150);
    CHECK(
        std::none_of(left.begin(), left.end(), [](const auto& record) { return (record.key.back() - '0') % 2 == 0; }));
}

TEST_CASE("a sqlite commit that fails after writing most of its batch leaves nothing of it, and the store goes on",
          "[store][sqlite]") {
    TempDir dir;
    const auto path = dir / "store.db";
    // Batch k: 100 messages on #ops (appended to the blocks the earlier batch filled) and, from the second on, 10 on
    // a channel of its own, each with a key-value write and an outbox entry.
    const auto batch = [](int k) {
        std::vector<ProcessedMessage> messages;
        for (int i = 0; i < 100; ++i) {
            const int n = k * 1000 + i;
            const std::string id = "m" + std::to_string(n);
            messages.push_back(processed(make_message("#ops", id, n), {{"echo", "last", id}},
                                         {outbox_entry("plan-" + id, "#ops", n)}));
        }
        for (int i = 0; k > 1 && i < 10; ++i) {
            const int n = k * 1000 + 500 + i;
            const std::string id = "n" + std::to_string(n);
            messages.push_back(processed(make_message("#new-" + std::to_string(k), id, n), {},
                                         {outbox_entry("plan-" + id, "#new", n)}));
        }
        return messages;
    };
    const auto pending_plans = [](SqliteStore& store) {
        std::set<std::string> plans;
        for (const OutboxEntry& entry : ok(store.outbox_pending())) plans.insert(entry.plan_id);
        return plans;
    };
    // What batches 1..k left, read back from @p store.
    const auto check_batches = [&](SqliteStore& store, int k) {
        std::set<std::string> expected_plans;
        for (int b = 1; b <= 2; ++b) {
            for (const ProcessedMessage& p : batch(b)) {
                const Message& m = p.message;
                INFO("batch " << b << ", message " << m.id);
                CHECK(ok(store.is_processed({m.connection, m.channel, m.id})) == (b <= k));
                if (b <= k) expected_plans.insert(p.outbox.front().plan_id);
            }
        }
        CHECK(pending_plans(store) == expected_plans);
        const std::string last = k == 1 ? "m1099" : "m2099";
        CHECK(ok(store.cursor("irc", "#ops")) == Cursor{last, k * 1000 + 99});
        CHECK(ok(store.get_value("echo", "last")) == last);
        CHECK(ok(store.messages("irc", "#ops", 0, 1'000'000, 1000)).size() == static_cast<std::size_t>(k * 100));
        CHECK(ok(store.cursor("irc", "#new-2")).has_value() == (k >= 2));
        CHECK(ok(store.messages("irc", "#new-2", 0, 1'000'000, 1000)).size() == (k >= 2 ? 10U : 0U));
    };

    {
        SqliteStore store(path);
        ok(store.commit(batch(1)));
        // A trigger refuses cursor writes, the last step of a commit: when it fires, the next batch's ledger
        // entries, logged messages, key-value writes, outbox entries and new channel are written in its
        // transaction, and its blocks are in the store's caches.
        SQLite::Database other(path.string(), SQLite::OPEN_READWRITE);
        other.exec(
            "CREATE TRIGGER refuse_insert BEFORE INSERT ON cursors BEGIN SELECT RAISE(ABORT, 'refused by the test'); "
            "END; CREATE TRIGGER refuse_update BEFORE UPDATE ON cursors BEGIN SELECT RAISE(ABORT, 'refused by the "
            "test'); END;");
        const Result<void> refused = store.commit(batch(2));
        REQUIRE_FALSE(refused.has_value());
        CHECK(refused.error().message.find("refused by the test") != std::string::npos);
        check_batches(store, 1);

        // The same batch again once the trigger is gone: written whole, on top of what the first left.
        other.exec("DROP TRIGGER refuse_insert; DROP TRIGGER refuse_update;");
        ok(store.commit(batch(2)));
        check_batches(store, 2);
    }
    SqliteStore reopened(path);
    check_batches(reopened, 2);
}

TEST_CASE("the sqlite store holds no read transaction between calls, so another connection's write blocks nothing",
          "[store][sqlite]") {
    TempDir dir;
    const std::vector<std::pair<std::string, std::function<void(SqliteStore&)>>> reads{
        {"is_processed",
         [](SqliteStore& s) {
             ok(s.is_processed({"irc", "#ops", "m1"}));
         }},
        {"are_processed", [](SqliteStore& s) { ok(s.are_processed(std::vector{make_message("#ops", "m1", 1)})); }},
        {"cursor", [](SqliteStore& s) { ok(s.cursor("irc", "#ops")); }},
        {"cursors", [](SqliteStore& s) { ok(s.cursors("irc")); }},
        {"connection_state", [](SqliteStore& s) { ok(s.connection_state("irc", "resume")); }},
        {"get_value", [](SqliteStore& s) { ok(s.get_value("echo", "k")); }},
        {"messages", [](SqliteStore& s) { ok(s.messages("irc", "#ops", 0, 100, 10)); }},
        {"outbox_pending", [](SqliteStore& s) { ok(s.outbox_pending()); }},
        {"outbox_plan", [](SqliteStore& s) { ok(s.outbox_plan("plan-1")); }},
    };
    for (const auto& [name, read] : reads) {
        INFO("after " << name);
        const auto path = dir / (name + ".db");
        SqliteStore store(path);
        ok(store.commit(std::vector{
            processed(make_message("#ops", "m1", 1), {{"echo", "k", "v"}}, {outbox_entry("plan-1", "#ops", 1)})}));
        ok(store.put_connection_state("irc", "resume", "r"));
        read(store);  // each of these finds something
        SQLite::Database other(path.string(), SQLite::OPEN_READWRITE);
        other.exec("CREATE TABLE written_by_another_connection (a)");
        ok(store.commit(std::vector{processed(make_message("#ops", "m2", 2))}));
        CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m2", 2});
    }
}

TEST_CASE("one prune forgets every finished outbox entry however many slices the outbox takes, and keeps pending ones",
          "[store][sqlite]") {
    TempDir dir;
    stores::SqliteOptions options;
    options.prune_slice_blocks = 2;  // some 40 blocks: about 20 slices
    SqliteStore store(dir / "store.db", options);
    std::vector<OutboxEntry> entries;
    for (int i = 0; i < 1500; ++i) {
        OutboxEntry entry = outbox_entry("plan-" + std::to_string(100000 + i), "#ops", 100);
        entry.text = "reply number " + std::to_string(i);
        entries.push_back(std::move(entry));
    }
    ok(store.outbox_add(entries));
    for (std::size_t i = 0; i < entries.size(); ++i) {
        if (i % 100 != 7) entries[i].state = OutboxState::sent;  // 15 stay pending
    }
    ok(store.outbox_update(entries));
    SQLite::Database db((dir / "store.db").string(), SQLite::OPEN_READONLY);
    REQUIRE(db.execAndGet("SELECT count(*) FROM outbox_blocks").getInt64() > 20);

    ok(store.prune(200));
    CHECK(db.execAndGet("SELECT sum(count) FROM outbox_blocks").getInt64() == 15);
    const auto pending = ok(store.outbox_pending());
    REQUIRE(pending.size() == 15);
    for (const OutboxEntry& entry : pending) CHECK(entry.state == OutboxState::pending);
}
