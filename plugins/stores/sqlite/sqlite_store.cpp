#include "sqlite_store.hpp"

#include <SQLiteCpp/SQLiteCpp.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <iterator>
#include <limits>
#include <mutex>
#include <set>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>

namespace switchboard::stores {
namespace {

constexpr const char* kDefaultPath = "data/switchboard.db";

// One step of the schema history. Steps run in order, each in its own transaction together with the
// `PRAGMA user_version` bump, so a crash mid-migration leaves the file at the previous version.
struct Migration {
    int version;
    const char* summary;
    const char* sql;
};

constexpr std::array kMigrations{
    Migration{1, "initial schema", R"sql(
CREATE TABLE dedup (
    connection   TEXT NOT NULL,
    channel      TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (connection, channel, message_id)
) WITHOUT ROWID;

CREATE TABLE cursors (
    connection   TEXT NOT NULL,
    channel      TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (connection, channel)
) WITHOUT ROWID;

CREATE TABLE connection_state (
    connection TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (connection, key)
) WITHOUT ROWID;

CREATE TABLE outbox (
    plan_id         TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    text            TEXT NOT NULL,
    reply_to        TEXT,
    state           TEXT NOT NULL,
    sent_message_id TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    error           TEXT NOT NULL DEFAULT '',
    created_ms      INTEGER NOT NULL,
    PRIMARY KEY (plan_id, recipient)
);
CREATE INDEX outbox_pending ON outbox (created_ms) WHERE state = 'pending';

CREATE TABLE kv (
    space TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (space, key)
) WITHOUT ROWID;

CREATE TABLE messages (
    connection    TEXT NOT NULL,
    channel       TEXT NOT NULL,
    id            TEXT NOT NULL,
    author_id     TEXT NOT NULL,
    author_name   TEXT NOT NULL,
    author_is_bot INTEGER NOT NULL,
    text          TEXT NOT NULL,
    timestamp_ms  INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    reply_to      TEXT,
    recovered     INTEGER NOT NULL,
    raw           TEXT NOT NULL
);
CREATE INDEX messages_by_channel_time ON messages (connection, channel, timestamp_ms);
)sql"},
    // Every row a commit writes costs a B-tree insert per index, and on this kind of machine each one is
    // microseconds: the dedup key shrinks to (channel number, message id), and the outbox loses its text primary
    // key as the row's address (updates go by rowid) and its partial index of pending entries (the store keeps the
    // pending entries' rowids in memory, and `store_meta.outbox_pending_from` bounds the scan that finds them).
    Migration{2, "dedup keyed by channel number; outbox rows addressed by rowid, no pending index", R"sql(
CREATE TABLE channels (
    id         INTEGER PRIMARY KEY,
    connection TEXT NOT NULL,
    channel    TEXT NOT NULL,
    UNIQUE (connection, channel)
);
INSERT INTO channels (connection, channel) SELECT DISTINCT connection, channel FROM dedup ORDER BY 1, 2;

CREATE TABLE dedup_v2 (
    channel      INTEGER NOT NULL,
    message_id   TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (channel, message_id)
) WITHOUT ROWID;
INSERT INTO dedup_v2 (channel, message_id, timestamp_ms)
    SELECT c.id, d.message_id, d.timestamp_ms
    FROM dedup d JOIN channels c ON c.connection = d.connection AND c.channel = d.channel;
DROP TABLE dedup;
ALTER TABLE dedup_v2 RENAME TO dedup;

CREATE TABLE outbox_v2 (
    id              INTEGER PRIMARY KEY,
    plan_id         TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    text            TEXT NOT NULL,
    reply_to        TEXT,
    state           TEXT NOT NULL,
    sent_message_id TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    error           TEXT NOT NULL DEFAULT '',
    created_ms      INTEGER NOT NULL,
    UNIQUE (plan_id, recipient)
);
INSERT INTO outbox_v2 (plan_id, recipient, text, reply_to, state, sent_message_id, attempts, error, created_ms)
    SELECT plan_id, recipient, text, reply_to, state, sent_message_id, attempts, error, created_ms
    FROM outbox ORDER BY rowid;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;

CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO store_meta (key, value) VALUES ('outbox_pending_from',
    coalesce((SELECT min(id) FROM outbox WHERE state = 'pending'), (SELECT coalesce(max(id), 0) + 1 FROM outbox)));
)sql"},
};
static_assert(kMigrations.back().version == SqliteStore::kSchemaVersion,
              "the last migration step must produce kSchemaVersion");

[[noreturn]] void refuse(std::string code, std::string message) {
    throw ErrorException(fail(std::move(code), std::move(message)));
}

std::string quoted(const std::filesystem::path& path) { return "'" + path.string() + "'"; }

int primary_code(const SQLite::Exception& e) { return e.getErrorCode() & 0xff; }

bool is_corruption(const SQLite::Exception& e) {
    const int code = primary_code(e);
    return code == SQLITE_NOTADB || code == SQLITE_CORRUPT;
}

std::filesystem::path prepare_path(std::filesystem::path path) {
    if (path.empty()) refuse("store_open_failed", "the sqlite store's path is empty; set store.path to a file name");
    std::error_code ec;
    path = std::filesystem::absolute(path, ec);
    if (ec) refuse("store_open_failed", "cannot resolve the store path " + quoted(path) + ": " + ec.message());
    if (path.has_parent_path()) {
        std::filesystem::create_directories(path.parent_path(), ec);
        if (ec) {
            refuse("store_open_failed", "cannot create the directory " + quoted(path.parent_path()) +
                                            " for the store: " + ec.message() + "; create it or change store.path");
        }
    }
    if (std::filesystem::is_directory(path, ec)) {
        refuse("store_open_failed", quoted(path) + " is a directory; store.path must name a database file");
    }
    return path;
}

// The advisory lock that keeps two running hosts (or two stores in one process) off the same file. flock() locks
// belong to the open file description, so each store opens the lock file itself and a second open in the same
// process is refused exactly like one from another process. The kernel drops the lock when the holder dies, so a
// crashed host never leaves a stale lock behind; the file itself stays (unlinking it would race with openers).
class LockFile {
public:
    explicit LockFile(const std::filesystem::path& database) {
        const std::filesystem::path path = database.string() + ".lock";
        fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd_ < 0) {
            refuse("store_open_failed", "cannot open the lock file " + quoted(path) + ": " + std::strerror(errno) +
                                            "; check that its directory is writable");
        }
        if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
            const int error = errno;
            const std::string holder = read_holder();
            ::close(fd_);
            fd_ = -1;
            if (error == EWOULDBLOCK) {
                std::string who = holder.empty() ? "another process (pid not recorded yet)" : "pid " + holder;
                if (holder == std::to_string(::getpid())) who += " (this process: the store is already open)";
                refuse("store_locked", quoted(database) + " is in use by another running switchboard, " + who +
                                           ", which holds " + quoted(path) +
                                           ". Stop that process first, or give this one its own store.path.");
            }
            refuse("store_open_failed", "cannot lock " + quoted(path) + ": " + std::strerror(error));
        }
        // Only read to name the holder in the error above, so a failure to record it is not fatal.
        const std::string pid = std::to_string(::getpid()) + "\n";
        if (::ftruncate(fd_, 0) == 0) {
            [[maybe_unused]] const auto written = ::pwrite(fd_, pid.data(), pid.size(), 0);
        }
    }
    ~LockFile() {
        if (fd_ < 0) return;
        // Forget our pid before letting go, so a later refusal never names a process that is gone.
        [[maybe_unused]] const int truncated = ::ftruncate(fd_, 0);
        ::close(fd_);
    }
    LockFile(const LockFile&) = delete;
    LockFile& operator=(const LockFile&) = delete;

private:
    std::string read_holder() const {
        std::array<char, 32> buffer{};
        const auto size = ::pread(fd_, buffer.data(), buffer.size() - 1, 0);
        if (size <= 0) return {};
        std::string text(buffer.data(), static_cast<std::size_t>(size));
        while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
        if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
            return {};
        }
        return text;
    }

    int fd_ = -1;
};

int read_user_version(SQLite::Database& db) {
    SQLite::Statement query(db, "PRAGMA user_version");
    query.executeStep();
    return query.getColumn(0).getInt();
}

// Opens the file and brings its schema up to date. Reads before it writes: nothing is written to a file that turns
// out not to be a database, or to be newer than this build.
SQLite::Database open_database(const std::filesystem::path& path, const SqliteOptions& options) {
    int version = 0;
    try {
        const auto timeout = std::clamp<std::chrono::milliseconds::rep>(options.busy_timeout.count(), 0,
                                                                        std::numeric_limits<int>::max());
        SQLite::Database db(path.string(), SQLite::OPEN_READWRITE | SQLite::OPEN_CREATE | SQLite::OPEN_NOMUTEX,
                            static_cast<int>(timeout));
        try {
            version = read_user_version(db);
            SQLite::Statement schema(db, "SELECT count(*) FROM sqlite_master");
            schema.executeStep();
        } catch (const SQLite::Exception& e) {
            if (!is_corruption(e)) throw;
            refuse("store_corrupt", quoted(path) + " is not a SQLite database or is corrupt (" + e.what() +
                                        "). Switchboard will not overwrite it: move it aside (or restore a "
                                        "backup) and start again; a new, empty store is then created.");
        }
        if (version > SqliteStore::kSchemaVersion) {
            refuse("store_schema_too_new",
                   quoted(path) + " has schema version " + std::to_string(version) +
                       ", but this build of switchboard knows schema versions up to " +
                       std::to_string(SqliteStore::kSchemaVersion) +
                       ". It was written by a newer switchboard: run that version, or move the file aside.");
        }

        db.exec("PRAGMA journal_mode = WAL");
        db.exec(options.synchronous == SqliteSynchronous::full ? "PRAGMA synchronous = FULL"
                                                               : "PRAGMA synchronous = NORMAL");

        for (const Migration& step : kMigrations) {
            if (step.version <= version) continue;
            try {
                db.exec("BEGIN IMMEDIATE");
                db.exec(step.sql);
                db.exec("PRAGMA user_version = " + std::to_string(step.version));
                db.exec("COMMIT");
            } catch (const SQLite::Exception& e) {
                if (sqlite3_get_autocommit(db.getHandle()) == 0) sqlite3_exec(db.getHandle(), "ROLLBACK", {}, {}, {});
                refuse("store_migration_failed", "migrating " + quoted(path) + " from schema version " +
                                                     std::to_string(version) + " to " + std::to_string(step.version) +
                                                     " (" + step.summary + ") failed: " + e.what() +
                                                     ". The file was left at version " + std::to_string(version) +
                                                     "; if it is not a switchboard store, point store.path elsewhere.");
            }
            version = step.version;
        }
        return db;
    } catch (const SQLite::Exception& e) {
        if (is_corruption(e)) {
            refuse("store_corrupt", quoted(path) + " is corrupt (" + e.what() +
                                        "). Move it aside (or restore a backup) and start again.");
        }
        refuse("store_open_failed", "cannot open the store " + quoted(path) + ": " + e.what());
    }
}

std::optional<OutboxState> parse_outbox_state(std::string_view text) {
    for (const OutboxState state :
         {OutboxState::pending, OutboxState::sent, OutboxState::failed, OutboxState::withdrawn}) {
        if (to_string(state) == text) return state;
    }
    return std::nullopt;
}

std::optional<std::string> optional_text(const SQLite::Column& column) {
    if (column.isNull()) return std::nullopt;
    return column.getString();
}

}  // namespace

struct SqliteStore::Impl {
    Impl(std::filesystem::path file, const SqliteOptions& options)
        : path(prepare_path(std::move(file))),
          message_log(options.message_log),
          lock(path),
          db(open_database(path, options)) {
        load_pending();
    }

    // Turns a failure of a runtime call into a value naming the file, what was being done and what to do.
    [[nodiscard]] Error runtime_error(std::string_view what, const SQLite::Exception& e) {
        rollback_if_open();
        const std::string where = " while " + std::string(what) + " in " + quoted(path) + ": " + e.what();
        switch (primary_code(e)) {
            case SQLITE_BUSY:
            case SQLITE_LOCKED:
                return fail_retryable("store_busy",
                                      "the database stayed locked by another connection" + where +
                                          "; retry, and check which other program has the file open",
                                      1000);
            case SQLITE_FULL:
                return fail_retryable("store_full", "the disk is full" + where + "; free some space", 5000);
            case SQLITE_IOERR:
                return fail_retryable("store_io_error", "an I/O error happened" + where, 1000);
            case SQLITE_READONLY:
                return fail("store_read_only", "the database is read-only" + where + "; check the file's permissions");
            case SQLITE_CORRUPT:
            case SQLITE_NOTADB:
                return fail("store_corrupt", "the database is corrupt" + where +
                                                 "; stop switchboard, move the file aside (or restore a backup)");
            default:
                return fail("store_error", "the store failed" + where);
        }
    }

    [[nodiscard]] Error runtime_error(std::string_view what, const std::exception& e) {
        rollback_if_open();
        return fail("store_error",
                    "the store failed while " + std::string(what) + " in " + quoted(path) + ": " + e.what());
    }

    void rollback_if_open() noexcept {
        if (sqlite3_get_autocommit(db.getHandle()) == 0) {
            sqlite3_exec(db.getHandle(), "ROLLBACK", nullptr, nullptr, nullptr);
        }
        // The caches may hold what the rolled-back transaction wrote: read them again from the file.
        channel_ids.clear();
        pending_stale = true;
    }

    // Runs @p body under the connection's mutex; SQLite exceptions never leave the store.
    template <class Body>
    auto guarded(std::string_view what, Body&& body) -> decltype(body()) {
        std::lock_guard guard(mutex);
        try {
            if (pending_stale) load_pending();
            return body();
        } catch (const SQLite::Exception& e) {
            return runtime_error(what, e);
        } catch (const std::exception& e) {
            return runtime_error(what, e);
        }
    }

    static SQLite::Statement& fresh(SQLite::Statement& statement) noexcept {
        statement.tryReset();  // reset() would re-throw the previous step's error
        return statement;
    }

    void put_value(const KeyValueWrite& write) {
        if (write.value) {
            auto& put = fresh(kv_put);
            put.bindNoCopy(1, write.space);
            put.bindNoCopy(2, write.key);
            put.bindNoCopy(3, *write.value);
            put.exec();
        } else {
            auto& erase = fresh(kv_erase);
            erase.bindNoCopy(1, write.space);
            erase.bindNoCopy(2, write.key);
            erase.exec();
        }
    }

    // Address::to_string() into @p text, reusing its buffer.
    static void address_text(const Address& address, std::string& text) {
        text.assign(address.connection);
        text.append(address.is_user ? "/@" : "/");
        text.append(address.target);
    }

    // The channel number of (@p connection, @p channel), which keys its dedup entries; with @p create, a channel
    // seen for the first time is numbered (in the caller's transaction), else it has none.
    std::optional<std::int64_t> channel_id(const std::string& connection, const std::string& channel, bool create) {
        channel_key.assign(connection);
        channel_key.push_back('\0');
        channel_key.append(channel);
        if (const auto it = channel_ids.find(channel_key); it != channel_ids.end()) return it->second;
        auto& find = fresh(channel_find);
        find.bindNoCopy(1, connection);
        find.bindNoCopy(2, channel);
        std::int64_t id = 0;
        if (find.executeStep()) {
            id = find.getColumn(0).getInt64();
            find.tryReset();
        } else if (create) {
            auto& insert = fresh(channel_insert);
            insert.bindNoCopy(1, connection);
            insert.bindNoCopy(2, channel);
            insert.exec();
            id = db.getLastInsertRowid();
        } else {
            return std::nullopt;
        }
        channel_ids.emplace(channel_key, id);
        return id;
    }

    // plan_id NUL recipient: the key of a pending entry's rowid.
    static void entry_key(const std::string& plan_id, const std::string& recipient, std::string& key) {
        key.assign(plan_id);
        key.push_back('\0');
        key.append(recipient);
    }

    void note_pending(const std::string& key, std::int64_t id) {
        pending_ids.insert_or_assign(key, id);
        pending_order.insert(id);
    }

    // Reads the rowids of the pending entries, from the first rowid that may be pending on.
    void load_pending() {
        pending_ids.clear();
        pending_order.clear();
        auto& from = fresh(meta_get);
        from.bind(1, kPendingFrom);
        const std::int64_t first = from.executeStep() ? from.getColumn(0).getInt64() : 0;
        pending_from = first;
        auto& last = fresh(outbox_last_id);
        last.executeStep();
        last_outbox_id = last.getColumn(0).getInt64();
        auto& scan = fresh(outbox_pending_ids);
        scan.bind(1, static_cast<std::int64_t>(first));
        std::string key;
        while (scan.executeStep()) {
            entry_key(scan.getColumn(1).getString(), scan.getColumn(2).getString(), key);
            note_pending(key, scan.getColumn(0).getInt64());
        }
        pending_stale = false;
    }

    // Moves `outbox_pending_from` up to the first pending rowid (or past the last row), in the caller's transaction.
    void advance_pending_from() {
        const std::int64_t first = pending_order.empty() ? last_outbox_id + 1 : *pending_order.begin();
        if (first == pending_from) return;
        auto& put = fresh(meta_advance_pending_from);
        put.bind(1, first);
        put.exec();
        auto& get = fresh(meta_get);
        get.bind(1, kPendingFrom);
        if (get.executeStep()) pending_from = get.getColumn(0).getInt64();
    }

    void add_outbox_entry(const OutboxEntry& entry) {
        auto& insert = fresh(outbox_insert);
        address_text(entry.recipient, recipient_text);
        insert.bindNoCopy(1, entry.plan_id);
        insert.bindNoCopy(2, recipient_text);
        insert.bindNoCopy(3, entry.text);
        if (entry.reply_to) {
            insert.bindNoCopy(4, *entry.reply_to);
        } else {
            insert.bind(4);
        }
        insert.bindNoCopy(5, to_string(entry.state).data());  // a string literal
        insert.bindNoCopy(6, entry.sent_message_id);
        insert.bind(7, entry.attempts);
        insert.bindNoCopy(8, entry.error);
        insert.bind(9, static_cast<std::int64_t>(entry.created_ms));
        if (insert.exec() == 0) return;  // kept the existing entry
        last_outbox_id = db.getLastInsertRowid();
        if (entry.state != OutboxState::pending) return;
        entry_key(entry.plan_id, recipient_text, pending_key);
        note_pending(pending_key, last_outbox_id);
    }

    // Writes @p entry's state; false if the outbox has no such entry.
    bool update_outbox_entry(const OutboxEntry& entry) {
        address_text(entry.recipient, recipient_text);
        entry_key(entry.plan_id, recipient_text, pending_key);
        const auto known = pending_ids.find(pending_key);
        const bool pending = entry.state == OutboxState::pending;
        if (known != pending_ids.end()) {
            auto& update = fresh(outbox_set_by_id);
            update.bind(1, known->second);
            bind_outbox_state(update, entry);
            if (update.exec() == 0) return false;
            if (!pending) {
                pending_order.erase(known->second);
                pending_ids.erase(known);
            }
            return true;
        }
        auto& update = fresh(outbox_set_by_key);
        update.bindNoCopy(1, entry.plan_id);
        update.bindNoCopy(2, recipient_text);
        bind_outbox_state(update, entry);
        if (!update.executeStep()) return false;
        const std::int64_t id = update.getColumn(0).getInt64();
        update.tryReset();                           // a statement still stepping would keep COMMIT from finishing
        if (pending) note_pending(pending_key, id);  // back to pending
        return true;
    }

    // ?3 state, ?4 sent message id, ?5 attempts, ?6 error.
    static void bind_outbox_state(SQLite::Statement& statement, const OutboxEntry& entry) {
        statement.bindNoCopy(3, to_string(entry.state).data());  // a string literal
        statement.bindNoCopy(4, entry.sent_message_id);
        statement.bind(5, entry.attempts);
        statement.bindNoCopy(6, entry.error);
    }

    void log_message(const Message& message) {
        auto& insert = fresh(log_insert);
        insert.bindNoCopy(1, message.connection);
        insert.bindNoCopy(2, message.channel);
        insert.bindNoCopy(3, message.id);
        insert.bindNoCopy(4, message.author.id);
        insert.bindNoCopy(5, message.author.display_name);
        insert.bind(6, static_cast<std::int32_t>(message.author.is_bot));
        insert.bindNoCopy(7, message.text);
        insert.bind(8, static_cast<std::int64_t>(message.timestamp_ms));
        insert.bindNoCopy(9, to_string(message.kind).data());  // a string literal
        if (message.reply_to) {
            insert.bindNoCopy(10, *message.reply_to);
        } else {
            insert.bind(10);
        }
        insert.bind(11, static_cast<std::int32_t>(message.recovered));
        insert.bindNoCopy(12, message.raw);
        insert.exec();
    }

    [[nodiscard]] Result<OutboxEntry> read_outbox_entry(SQLite::Statement& query) {
        OutboxEntry entry;
        entry.plan_id = query.getColumn(0).getString();
        const std::string recipient = query.getColumn(1).getString();
        auto address = Address::parse(recipient);
        if (!address) {
            return fail("store_corrupt", "outbox entry of plan '" + entry.plan_id + "' in " + quoted(path) +
                                             " has an unreadable recipient '" + recipient + "'");
        }
        entry.recipient = *address;
        entry.text = query.getColumn(2).getString();
        entry.reply_to = optional_text(query.getColumn(3));
        const std::string state = query.getColumn(4).getString();
        const auto parsed = parse_outbox_state(state);
        if (!parsed) {
            return fail("store_corrupt", "outbox entry of plan '" + entry.plan_id + "' in " + quoted(path) +
                                             " has an unknown state '" + state + "'");
        }
        entry.state = *parsed;
        entry.sent_message_id = query.getColumn(5).getString();
        entry.attempts = query.getColumn(6).getInt();
        entry.error = query.getColumn(7).getString();
        entry.created_ms = query.getColumn(8).getInt64();
        return entry;
    }

    [[nodiscard]] Result<std::vector<OutboxEntry>> read_outbox_entries(SQLite::Statement& query) {
        std::vector<OutboxEntry> entries;
        while (query.executeStep()) {
            auto entry = read_outbox_entry(query);
            if (!entry) return entry.error();
            entries.push_back(std::move(*entry));
        }
        return entries;
    }

    const std::filesystem::path path;
    const bool message_log;
    LockFile lock;
    SQLite::Database db;  // declared after the lock: the connection closes before the lock is released

    SQLite::Statement begin{db, "BEGIN IMMEDIATE"};
    SQLite::Statement commit{db, "COMMIT"};
    SQLite::Statement channel_find{db, "SELECT id FROM channels WHERE connection = ?1 AND channel = ?2"};
    SQLite::Statement channel_insert{db, "INSERT INTO channels (connection, channel) VALUES (?1, ?2)"};
    SQLite::Statement dedup_insert{db,
                                   "INSERT OR IGNORE INTO dedup (channel, message_id, timestamp_ms) "
                                   "VALUES (?1, ?2, ?3)"};
    SQLite::Statement dedup_find{db, "SELECT 1 FROM dedup WHERE channel = ?1 AND message_id = ?2"};
    SQLite::Statement cursor_upsert{db,
                                    "INSERT INTO cursors (connection, channel, message_id, timestamp_ms) "
                                    "VALUES (?1, ?2, ?3, ?4) ON CONFLICT (connection, channel) DO UPDATE SET "
                                    "message_id = excluded.message_id, timestamp_ms = excluded.timestamp_ms "
                                    "WHERE excluded.timestamp_ms >= cursors.timestamp_ms"};
    SQLite::Statement cursor_get{db,
                                 "SELECT message_id, timestamp_ms FROM cursors WHERE connection = ?1 AND channel = ?2"};
    SQLite::Statement cursors_all{
        db, "SELECT connection, channel, message_id, timestamp_ms FROM cursors ORDER BY connection, channel"};
    SQLite::Statement cursors_of{db,
                                 "SELECT connection, channel, message_id, timestamp_ms FROM cursors "
                                 "WHERE connection = ?1 ORDER BY channel"};
    SQLite::Statement state_put{db,
                                "INSERT INTO connection_state (connection, key, value) VALUES (?1, ?2, ?3) "
                                "ON CONFLICT (connection, key) DO UPDATE SET value = excluded.value"};
    SQLite::Statement state_get{db, "SELECT value FROM connection_state WHERE connection = ?1 AND key = ?2"};
    SQLite::Statement kv_put{db,
                             "INSERT INTO kv (space, key, value) VALUES (?1, ?2, ?3) "
                             "ON CONFLICT (space, key) DO UPDATE SET value = excluded.value"};
    SQLite::Statement kv_erase{db, "DELETE FROM kv WHERE space = ?1 AND key = ?2"};
    SQLite::Statement kv_get{db, "SELECT value FROM kv WHERE space = ?1 AND key = ?2"};
    SQLite::Statement outbox_insert{db,
                                    "INSERT INTO outbox (plan_id, recipient, text, reply_to, state, sent_message_id, "
                                    "attempts, error, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
                                    "ON CONFLICT (plan_id, recipient) DO NOTHING"};
    SQLite::Statement outbox_set_by_id{db,
                                       "UPDATE outbox SET state = ?3, sent_message_id = ?4, attempts = ?5, "
                                       "error = ?6 WHERE id = ?1"};
    SQLite::Statement outbox_set_by_key{db,
                                        "UPDATE outbox SET state = ?3, sent_message_id = ?4, attempts = ?5, "
                                        "error = ?6 WHERE plan_id = ?1 AND recipient = ?2 RETURNING id"};
    SQLite::Statement outbox_pending{db,
                                     "SELECT plan_id, recipient, text, reply_to, state, sent_message_id, attempts, "
                                     "error, created_ms FROM outbox WHERE id >= ?1 AND state = 'pending' "
                                     "ORDER BY created_ms, id"};
    SQLite::Statement outbox_pending_ids{db,
                                         "SELECT id, plan_id, recipient FROM outbox "
                                         "WHERE id >= ?1 AND state = 'pending'"};
    SQLite::Statement outbox_plan{db,
                                  "SELECT plan_id, recipient, text, reply_to, state, sent_message_id, attempts, "
                                  "error, created_ms FROM outbox WHERE plan_id = ?1 ORDER BY id"};
    // Never past a row that exists: a rowid below it is never handed out again.
    SQLite::Statement meta_advance_pending_from{
        db,
        "UPDATE store_meta SET value = min(?1, (SELECT coalesce(max(id), 0) + 1 FROM outbox)) "
        "WHERE key = 'outbox_pending_from'"};
    SQLite::Statement meta_get{db, "SELECT value FROM store_meta WHERE key = ?1"};
    SQLite::Statement outbox_last_id{db, "SELECT coalesce(max(id), 0) FROM outbox"};
    SQLite::Statement log_insert{db,
                                 "INSERT INTO messages (connection, channel, id, author_id, author_name, "
                                 "author_is_bot, text, timestamp_ms, kind, reply_to, recovered, raw) "
                                 "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"};
    SQLite::Statement log_range{db,
                                "SELECT connection, channel, id, author_id, author_name, author_is_bot, text, "
                                "timestamp_ms, kind, reply_to, recovered, raw FROM messages "
                                "WHERE connection = ?1 AND channel = ?2 AND timestamp_ms >= ?3 AND timestamp_ms < ?4 "
                                "ORDER BY timestamp_ms, rowid LIMIT ?5"};
    SQLite::Statement prune_dedup{db, "DELETE FROM dedup WHERE timestamp_ms < ?1"};
    SQLite::Statement prune_log{db, "DELETE FROM messages WHERE timestamp_ms < ?1"};

    static constexpr const char* kPendingFrom = "outbox_pending_from";

    std::mutex mutex;
    // Caches of what the file holds, read again after a rollback. Both stay small: one number per channel, and the
    // rowids of the entries still pending (what a restart would send), never the whole outbox or ledger.
    std::unordered_map<std::string, std::int64_t> channel_ids;  // connection NUL channel -> channels.id
    std::unordered_map<std::string, std::int64_t> pending_ids;  // plan_id NUL recipient -> outbox.id
    std::set<std::int64_t> pending_order;                       // the same rowids, in order
    std::int64_t pending_from = 0;                              // store_meta.outbox_pending_from as stored
    std::int64_t last_outbox_id = 0;                            // the largest rowid of the outbox
    bool pending_stale = false;

    std::vector<const Message*> cursor_moves;  // scratch for commit(): the newest message per channel
    std::string recipient_text;                // scratch: the recipient column of the outbox entry being written
    std::string channel_key;                   // scratch: a key of channel_ids
    std::string pending_key;                   // scratch: a key of pending_ids
};

const ConfigSchema& SqliteStore::config_schema() {
    static const ConfigSchema schema{{
        ConfigKey{"path", ValueType::string, false, kDefaultPath,
                  "Database file; parent directories are created. A `<path>.lock` file beside it keeps a second "
                  "running host away."},
        ConfigKey{"busy_timeout", ValueType::duration, false, "5s",
                  "How long a write waits for a lock held by another connection to the file (e.g. a sqlite3 shell)."},
        ConfigKey{"synchronous", ValueType::string, false, "normal",
                  "normal (WAL: a power cut may lose the last commits, never corrupts) or full (sync every commit)."},
        ConfigKey{"dedup_window", ValueType::duration, false, "14d",
                  "How long processed message ids and logged messages are kept before the host prunes them."},
        ConfigKey{"message_log", ValueType::boolean, false, "true",
                  "Keep every processed message in the message log (what bots read back by channel and time). "
                  "false: a commit writes only the dedup entry, cursor, key-value writes and outbox (faster)."},
    }};
    return schema;
}

namespace {

std::optional<SqliteSynchronous> parse_synchronous(std::string_view text) {
    if (text == "normal") return SqliteSynchronous::normal;
    if (text == "full") return SqliteSynchronous::full;
    return std::nullopt;
}

}  // namespace

std::vector<ConfigProblem> SqliteStore::check_config(const PluginConfig& config) {
    std::vector<ConfigProblem> problems;
    const std::string synchronous = config.get_string("synchronous", "normal");
    if (!parse_synchronous(synchronous)) {
        problems.push_back({"synchronous", "synchronous must be 'normal' or 'full', not '" + synchronous + "'"});
    }
    if (config.has("path") && config.get_string("path").empty()) {
        problems.push_back({"path", "path must name a database file, e.g. data/switchboard.db"});
    }
    if (config.get_int("busy_timeout", 5000) < 0) {
        problems.push_back({"busy_timeout", "busy_timeout must not be negative"});
    }
    if (config.get_int("dedup_window", 1) <= 0) {
        problems.push_back({"dedup_window", "dedup_window must be longer than zero, e.g. 14d"});
    }
    return problems;
}

namespace {

SqliteOptions options_from(const PluginConfig& config) {
    if (auto problems = SqliteStore::check_config(config); !problems.empty()) {
        refuse("config_invalid", "store." + problems.front().key + ": " + problems.front().message);
    }
    SqliteOptions options;
    options.busy_timeout = std::chrono::milliseconds(config.get_int("busy_timeout", 5000));
    options.synchronous = *parse_synchronous(config.get_string("synchronous", "normal"));
    options.message_log = config.get_bool("message_log", true);
    return options;
}

}  // namespace

SqliteStore::SqliteStore(const PluginContext& context, const PluginConfig& config)
    : SqliteStore(config.get_string("path", kDefaultPath), options_from(config)) {
    context.logger().info("sqlite store open: " + impl_->path.string() + " (schema version " +
                          std::to_string(kSchemaVersion) + ", WAL)");
}

SqliteStore::SqliteStore(std::filesystem::path path, SqliteOptions options) {
    try {
        impl_ = std::make_unique<Impl>(std::move(path), options);
    } catch (const SQLite::Exception& e) {  // preparing a statement failed: the schema is not what we expect
        refuse("store_open_failed", std::string("cannot prepare the store's statements: ") + e.what() +
                                        "; the file's schema does not match this build");
    }
}

SqliteStore::~SqliteStore() = default;

const std::filesystem::path& SqliteStore::path() const noexcept { return impl_->path; }

Result<bool> SqliteStore::is_processed(const MessageKey& key) {
    return impl_->guarded("checking the dedup ledger", [&]() -> Result<bool> {
        const auto channel = impl_->channel_id(key.connection, key.channel, false);
        if (!channel) return false;
        auto& find = Impl::fresh(impl_->dedup_find);
        find.bind(1, *channel);
        find.bindNoCopy(2, key.message_id);
        return find.executeStep();
    });
}

Result<void> SqliteStore::commit(std::span<const ProcessedMessage> batch) {
    if (batch.empty()) return {};
    return impl_->guarded("committing a batch of processed messages", [&]() -> Result<void> {
        Impl& s = *impl_;
        Impl::fresh(s.begin).exec();
        auto& moves = s.cursor_moves;
        moves.clear();
        for (const ProcessedMessage& item : batch) {
            const Message& message = item.message;
            const std::int64_t channel = *s.channel_id(message.connection, message.channel, true);
            auto& dedup = Impl::fresh(s.dedup_insert);
            dedup.bind(1, channel);
            dedup.bindNoCopy(2, message.id);
            dedup.bind(3, static_cast<std::int64_t>(message.timestamp_ms));
            if (dedup.exec() == 0) continue;  // already processed: a retried batch or a recovered overlap

            // Cursors move once per channel per batch, to the newest message seen in batch order; the upsert's
            // WHERE keeps a stored cursor that is newer still. Same result as moving it message by message.
            auto same_channel = [&](const Message* m) {
                return m->channel == message.channel && m->connection == message.connection;
            };
            auto it = std::find_if(moves.rbegin(), moves.rend(), same_channel);
            if (it == moves.rend()) {
                moves.push_back(&message);
            } else if ((*it)->timestamp_ms <= message.timestamp_ms) {
                *it = &message;
            }

            if (s.message_log) s.log_message(message);
            for (const KeyValueWrite& write : item.writes) s.put_value(write);
            for (const OutboxEntry& entry : item.outbox) s.add_outbox_entry(entry);
        }
        for (const Message* message : moves) {
            auto& upsert = Impl::fresh(s.cursor_upsert);
            upsert.bindNoCopy(1, message->connection);
            upsert.bindNoCopy(2, message->channel);
            upsert.bindNoCopy(3, message->id);
            upsert.bind(4, static_cast<std::int64_t>(message->timestamp_ms));
            upsert.exec();
        }
        Impl::fresh(s.commit).exec();
        return {};
    });
}

Result<std::optional<Cursor>> SqliteStore::cursor(const std::string& connection, const std::string& channel) {
    return impl_->guarded("reading a cursor", [&]() -> Result<std::optional<Cursor>> {
        auto& query = Impl::fresh(impl_->cursor_get);
        query.bindNoCopy(1, connection);
        query.bindNoCopy(2, channel);
        if (!query.executeStep()) return std::optional<Cursor>{};
        return std::optional<Cursor>{Cursor{query.getColumn(0).getString(), query.getColumn(1).getInt64()}};
    });
}

Result<std::vector<ChannelCursor>> SqliteStore::cursors(const std::string& connection) {
    return impl_->guarded("listing cursors", [&]() -> Result<std::vector<ChannelCursor>> {
        auto& query = Impl::fresh(connection.empty() ? impl_->cursors_all : impl_->cursors_of);
        if (!connection.empty()) query.bindNoCopy(1, connection);
        std::vector<ChannelCursor> result;
        while (query.executeStep()) {
            result.push_back(ChannelCursor{query.getColumn(0).getString(), query.getColumn(1).getString(),
                                           Cursor{query.getColumn(2).getString(), query.getColumn(3).getInt64()}});
        }
        return result;
    });
}

Result<void> SqliteStore::put_connection_state(const std::string& connection, const std::string& key,
                                               const std::string& value) {
    return impl_->guarded("storing connection state", [&]() -> Result<void> {
        auto& put = Impl::fresh(impl_->state_put);
        put.bindNoCopy(1, connection);
        put.bindNoCopy(2, key);
        put.bindNoCopy(3, value);
        put.exec();
        return {};
    });
}

Result<std::optional<std::string>> SqliteStore::connection_state(const std::string& connection,
                                                                 const std::string& key) {
    return impl_->guarded("reading connection state", [&]() -> Result<std::optional<std::string>> {
        auto& query = Impl::fresh(impl_->state_get);
        query.bindNoCopy(1, connection);
        query.bindNoCopy(2, key);
        if (!query.executeStep()) return std::optional<std::string>{};
        return std::optional<std::string>{query.getColumn(0).getString()};
    });
}

Result<std::optional<std::string>> SqliteStore::get_value(const std::string& space, const std::string& key) {
    return impl_->guarded("reading a key-value entry", [&]() -> Result<std::optional<std::string>> {
        auto& query = Impl::fresh(impl_->kv_get);
        query.bindNoCopy(1, space);
        query.bindNoCopy(2, key);
        if (!query.executeStep()) return std::optional<std::string>{};
        return std::optional<std::string>{query.getColumn(0).getString()};
    });
}

Result<void> SqliteStore::put_values(std::span<const KeyValueWrite> writes) {
    if (writes.empty()) return {};
    return impl_->guarded("writing key-value entries", [&]() -> Result<void> {
        Impl::fresh(impl_->begin).exec();
        for (const KeyValueWrite& write : writes) impl_->put_value(write);
        Impl::fresh(impl_->commit).exec();
        return {};
    });
}

Result<void> SqliteStore::outbox_add(std::span<const OutboxEntry> entries) {
    if (entries.empty()) return {};
    return impl_->guarded("adding outbox entries", [&]() -> Result<void> {
        Impl::fresh(impl_->begin).exec();
        for (const OutboxEntry& entry : entries) impl_->add_outbox_entry(entry);
        Impl::fresh(impl_->commit).exec();
        return {};
    });
}

Result<void> SqliteStore::outbox_update(std::span<const OutboxEntry> entries) {
    if (entries.empty()) return {};
    return impl_->guarded("updating outbox entries", [&]() -> Result<void> {
        Impl& s = *impl_;
        Impl::fresh(s.begin).exec();
        const OutboxEntry* missing = nullptr;
        for (const OutboxEntry& entry : entries) {
            if (!s.update_outbox_entry(entry) && missing == nullptr) missing = &entry;
        }
        s.advance_pending_from();
        Impl::fresh(s.commit).exec();
        if (missing != nullptr) {
            return fail("outbox_entry_not_found", "no outbox entry for plan '" + missing->plan_id +
                                                      "' and recipient '" + missing->recipient.to_string() + "' in " +
                                                      quoted(s.path) + "; add it with outbox_add first");
        }
        return {};
    });
}

Result<std::vector<OutboxEntry>> SqliteStore::outbox_pending() {
    return impl_->guarded("listing pending outbox entries", [&]() -> Result<std::vector<OutboxEntry>> {
        auto& query = Impl::fresh(impl_->outbox_pending);
        query.bind(1, impl_->pending_from);
        return impl_->read_outbox_entries(query);
    });
}

Result<std::vector<OutboxEntry>> SqliteStore::outbox_plan(const std::string& plan_id) {
    return impl_->guarded("reading a plan's outbox entries", [&]() -> Result<std::vector<OutboxEntry>> {
        auto& query = Impl::fresh(impl_->outbox_plan);
        query.bindNoCopy(1, plan_id);
        return impl_->read_outbox_entries(query);
    });
}

Result<std::vector<Message>> SqliteStore::messages(const std::string& connection, const std::string& channel,
                                                   std::int64_t from_ms, std::int64_t to_ms, std::size_t limit) {
    return impl_->guarded("reading the message log", [&]() -> Result<std::vector<Message>> {
        auto& query = Impl::fresh(impl_->log_range);
        query.bindNoCopy(1, connection);
        query.bindNoCopy(2, channel);
        query.bind(3, static_cast<std::int64_t>(from_ms));
        query.bind(4, static_cast<std::int64_t>(to_ms));
        query.bind(5,
                   static_cast<std::int64_t>(std::min<std::size_t>(limit, std::numeric_limits<std::int64_t>::max())));
        std::vector<Message> result;
        while (query.executeStep()) {
            Message message;
            message.connection = query.getColumn(0).getString();
            message.channel = query.getColumn(1).getString();
            message.id = query.getColumn(2).getString();
            message.author.id = query.getColumn(3).getString();
            message.author.display_name = query.getColumn(4).getString();
            message.author.is_bot = query.getColumn(5).getInt() != 0;
            message.text = query.getColumn(6).getString();
            message.timestamp_ms = query.getColumn(7).getInt64();
            message.kind = parse_message_kind(query.getColumn(8).getString()).value_or(MessageKind::group);
            message.reply_to = optional_text(query.getColumn(9));
            message.recovered = query.getColumn(10).getInt() != 0;
            message.raw = query.getColumn(11).getString();
            result.push_back(std::move(message));
        }
        return result;
    });
}

Result<std::size_t> SqliteStore::prune(std::int64_t before_ms) {
    return impl_->guarded("pruning old entries", [&]() -> Result<std::size_t> {
        Impl& s = *impl_;
        Impl::fresh(s.begin).exec();
        auto& dedup = Impl::fresh(s.prune_dedup);
        dedup.bind(1, static_cast<std::int64_t>(before_ms));
        const int removed = dedup.exec();
        auto& log = Impl::fresh(s.prune_log);
        log.bind(1, static_cast<std::int64_t>(before_ms));
        log.exec();
        Impl::fresh(s.commit).exec();
        return static_cast<std::size_t>(removed);
    });
}

}  // namespace switchboard::stores
