// The sqlite store. How it keeps things, and why:
//
// - One file in WAL mode; every call that writes is one transaction (commit(): a whole batch), so a crash leaves a
//   batch entirely done or not at all. synchronous = NORMAL (a power cut may lose the last commits) or FULL.
// - The dedup ledger and the outbox are BlockTables (block_table.hpp): records sorted by key and packed into rows of
//   about 3 KB. On a small VM every SQLite row written costs a few microseconds (B-tree work, statement overhead, a
//   WAL page), which is what limited version 1 (a dedup row and an outbox row with two indexes per message, and an
//   UPDATE per outbox entry). Now a batch appends each channel's message ids to that channel's last ledger block and
//   its replies to the outbox's blocks, and an update round rewrites the few blocks its entries are in, patching
//   them in place when the values keep their size.
//   - Ledger: partition = channels.id, key = message id, value = the message's timestamp (8 bytes), block summary =
//     the oldest timestamp (prune() reads only blocks that have something to forget).
//   - Outbox: one partition; key = plan id (0x00/0x01 escaped), 0x00, recipient: a plan's entries are contiguous;
//     value = sequence number, created_ms, state, attempts, text, reply_to, sent message id, error; block summary =
//     the number of pending entries, with a partial index, so outbox_pending() reads only blocks with some. Entries
//     are listed by sequence number (the order they were added), pending ones by created_ms first.
//   Memory stays bounded whatever the size of the ledger and the outbox: one block is decoded at a time, each table
//   remembers at most 1024 recent blocks (4 MB at most), and channel numbers are cached (at most 65,536).
//   - Message log: partition = channels.id, key = timestamp and sequence number (big-endian: sorted by time, then
//     in the order logged), value = the message; messages() reads the blocks of a time range, up to its limit.
// - Cursors, connection state and the bots' key-value space are plain tables, as in version 1.
// - WAL checkpoints run on a thread of the store's own (Checkpointer), never inside a commit.

#include "sqlite_store.hpp"

#include <SQLiteCpp/SQLiteCpp.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <iterator>
#include <limits>
#include <mutex>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>

#include "block_table.hpp"

namespace switchboard::stores {
namespace {

constexpr const char* kDefaultPath = "data/switchboard.db";

// One step of the schema history. Steps run in order, each in its own transaction together with the
// `PRAGMA user_version` bump, so a crash mid-migration leaves the file at the previous version.
struct Migration {
    int version;
    const char* summary;
    const char* sql;
    void (*convert)(SQLite::Database&) = nullptr;  // runs after `sql`, in the same transaction
};

void convert_to_version_2(SQLite::Database& db);

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
    // Version 2 packs the dedup ledger, the outbox and the message log into blocks of records (block_table.hpp): a
    // batch writes a few rows per channel instead of several per message. The rows of version 1 are converted by
    // convert_to_version_2(), in the same transaction.
    Migration{2, "dedup ledger, outbox and message log packed into blocks of records", R"sql(
CREATE TABLE channels (
    id         INTEGER PRIMARY KEY,
    connection TEXT NOT NULL,
    channel    TEXT NOT NULL,
    UNIQUE (connection, channel)
);
INSERT INTO channels (connection, channel) SELECT DISTINCT connection, channel FROM dedup ORDER BY 1, 2;
INSERT OR IGNORE INTO channels (connection, channel) SELECT DISTINCT connection, channel FROM messages ORDER BY 1, 2;

-- part: channels.id; a record: message id -> timestamp; summary: the oldest timestamp in the block.
CREATE TABLE dedup_blocks (
    id      INTEGER PRIMARY KEY,
    part    INTEGER NOT NULL,
    lo      BLOB NOT NULL,
    hi      BLOB NOT NULL,
    count   INTEGER NOT NULL,
    summary INTEGER NOT NULL,
    records BLOB NOT NULL,
    UNIQUE (part, lo)
);

-- part: 0; a record: (plan id, recipient) -> the entry; summary: how many of the block's entries are pending.
CREATE TABLE outbox_blocks (
    id      INTEGER PRIMARY KEY,
    part    INTEGER NOT NULL,
    lo      BLOB NOT NULL,
    hi      BLOB NOT NULL,
    count   INTEGER NOT NULL,
    summary INTEGER NOT NULL,
    records BLOB NOT NULL,
    UNIQUE (part, lo)
);
CREATE INDEX outbox_blocks_pending ON outbox_blocks (id) WHERE summary > 0;

-- part: channels.id; a record: (timestamp, sequence number) -> the message; summary: the oldest timestamp.
CREATE TABLE log_blocks (
    id      INTEGER PRIMARY KEY,
    part    INTEGER NOT NULL,
    lo      BLOB NOT NULL,
    hi      BLOB NOT NULL,
    count   INTEGER NOT NULL,
    summary INTEGER NOT NULL,
    records BLOB NOT NULL,
    UNIQUE (part, lo)
);

-- outbox_seq, log_seq: the sequence numbers of the last outbox entry and logged message added.
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
)sql",
              convert_to_version_2},
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

// Copies the WAL back into the database file on a thread of its own, with its own connection, so that a commit
// never waits for that copy and its fsync (SQLite's automatic checkpoint would run them inside the commit that
// crosses the threshold). A passive checkpoint never blocks the writer. Under a steady stream of commits the WAL is
// never fully copied at the moment a transaction starts, so it would not start over: past kForceFrames the writer
// copies the remainder itself (little is left by then), and the WAL restarts. The thread is woken once the WAL has
// grown by kStepFrames since it was last woken, not after every commit: each checkpoint syncs both files, and a page
// that the commits in between rewrote (the tail blocks of the ledger and the outbox, mostly) is copied once.
class Checkpointer {
public:
    static constexpr int kStartFrames = 1000;  // SQLite's own threshold (4 MB of 4 KB pages)
    static constexpr int kStepFrames = 256;    // 1 MB
    static constexpr int kForceFrames = 8000;

    Checkpointer(const std::filesystem::path& path, sqlite3* writer)
        : db_(path.string(), SQLite::OPEN_READWRITE | SQLite::OPEN_NOMUTEX), writer_(writer) {
        db_.exec("SELECT count(*) FROM sqlite_master");  // reads the file, so the connection knows it is in WAL mode
        sqlite3_wal_hook(writer_, &Checkpointer::on_commit, this);
        thread_ = std::thread([this] { run(); });
    }
    ~Checkpointer() {
        sqlite3_wal_hook(writer_, nullptr, nullptr);
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        wake_.notify_one();
        thread_.join();
    }
    Checkpointer(const Checkpointer&) = delete;
    Checkpointer& operator=(const Checkpointer&) = delete;

private:
    // SQLite's WAL hook: called after each commit with the WAL's size in frames.
    static int on_commit(void* self, sqlite3* writer, const char* schema, int frames) {
        auto& checkpointer = *static_cast<Checkpointer*>(self);
        if (frames < checkpointer.last_frames_) checkpointer.next_frames_ = kStartFrames;  // the WAL started over
        checkpointer.last_frames_ = frames;
        if (frames >= kForceFrames) {
            sqlite3_wal_checkpoint_v2(writer, schema, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
        } else if (frames >= checkpointer.next_frames_) {
            checkpointer.next_frames_ = frames + kStepFrames;
            {
                std::lock_guard lock(checkpointer.mutex_);
                checkpointer.due_ = true;
            }
            checkpointer.wake_.notify_one();
        }
        return SQLITE_OK;
    }

    void run() {
        std::unique_lock lock(mutex_);
        while (true) {
            wake_.wait(lock, [this] { return due_ || stop_; });
            if (stop_) return;
            due_ = false;
            lock.unlock();
            // Failures (a busy file) are left to the next round, or to the writer past kForceFrames.
            sqlite3_wal_checkpoint_v2(db_.getHandle(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
            lock.lock();
        }
    }

    SQLite::Database db_;
    sqlite3* writer_;
    int last_frames_ = 0;             // the WAL's size after the last commit; only the hook (the writer) touches these
    int next_frames_ = kStartFrames;  // the size at which the thread is woken next
    std::mutex mutex_;
    std::condition_variable wake_;
    bool due_ = false;
    bool stop_ = false;
    std::thread thread_;
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
                if (step.convert != nullptr) step.convert(db);
                db.exec("PRAGMA user_version = " + std::to_string(step.version));
                db.exec("COMMIT");
            } catch (const std::exception& e) {
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

// ---- records of the dedup ledger: message id -> timestamp (8 bytes, little-endian) ----

void put_fixed64(std::string& out, std::int64_t value) {
    auto bits = static_cast<std::uint64_t>(value);
    char bytes[8];
    for (char& byte : bytes) {
        byte = static_cast<char>(bits & 0xff);
        bits >>= 8;
    }
    out.append(bytes, sizeof bytes);
}

std::int64_t get_fixed64(std::string_view in) {
    std::uint64_t bits = 0;
    for (std::size_t i = std::min<std::size_t>(in.size(), 8); i-- > 0;) {
        bits = (bits << 8) | static_cast<unsigned char>(in[i]);
    }
    return static_cast<std::int64_t>(bits);
}

std::int64_t oldest_timestamp(std::span<const BlockTable::Record> records) {
    std::int64_t oldest = std::numeric_limits<std::int64_t>::max();
    for (const auto& record : records) oldest = std::min(oldest, get_fixed64(record.value));
    return oldest;
}

// ---- records of the outbox ----
// Key: the plan id with 0x00 and 0x01 escaped (as 0x01 0x01 and 0x01 0x02), a 0x00, then the recipient. Keys of
// one plan are therefore contiguous: from plan_prefix(plan) up to, not including, plan_end(plan).
// Value: sequence number and created_ms (8 bytes each), state (1 byte), attempts (varint), then text, reply_to
// (a flag byte, then the text if set), sent message id and error, each with its length.

constexpr std::size_t kStateOffset = 16;

void append_escaped(std::string& out, std::string_view text) {
    if (std::memchr(text.data(), '\x00', text.size()) == nullptr &&
        std::memchr(text.data(), '\x01', text.size()) == nullptr) {
        out.append(text);
        return;
    }
    for (const char c : text) {
        if (c == '\x00' || c == '\x01') {
            out.push_back('\x01');
            out.push_back(static_cast<char>(c + 1));
        } else {
            out.push_back(c);
        }
    }
}

std::string plan_prefix(const std::string& plan_id) {
    std::string key;
    append_escaped(key, plan_id);
    key.push_back('\x00');
    return key;
}

std::string plan_end(const std::string& plan_id) {
    std::string key;
    append_escaped(key, plan_id);
    key.push_back('\x01');
    return key;
}

// Appends the key of (@p plan_id, @p recipient) to @p key.
void append_outbox_key(std::string_view plan_id, std::string_view recipient, std::string& key) {
    append_escaped(key, plan_id);
    key.push_back('\x00');
    key.append(recipient);
}

// The first 8 bytes of @p bytes (0 past its end) as a big-endian number: numbers compare as the bytes do.
std::uint64_t ordered_word(std::string_view bytes) {
    std::uint64_t word = 0;
    for (std::size_t i = 0; i < 8; ++i) {
        word = (word << 8) | (i < bytes.size() ? static_cast<unsigned char>(bytes[i]) : 0u);
    }
    return word;
}

// Sorts [@p first, @p last), already grouped so that @p same_run holds within a run of neighbours, by @p less within
// each run, leaving a run that is in order already as it is: the keys of a batch come in a few runs (channels), each
// mostly in order, so most runs cost one pass.
template <class It, class SameRun, class Less>
void sort_runs(It first, It last, SameRun&& same_run, Less&& less) {
    while (first != last) {
        const It next = std::find_if(first, last, [&](const auto& item) { return !same_run(*first, item); });
        if (!std::is_sorted(first, next, less)) std::sort(first, next, less);
        first = next;
    }
}

char state_byte(OutboxState state) { return static_cast<char>(state); }

// Appends @p entry, encoded, to @p value.
void encode_entry(const OutboxEntry& entry, std::int64_t sequence, std::string& value) {
    put_fixed64(value, sequence);
    put_fixed64(value, entry.created_ms);
    value.push_back(state_byte(entry.state));
    put_varint(value, static_cast<std::uint32_t>(entry.attempts));
    put_text(value, entry.text);
    value.push_back(entry.reply_to ? '\x01' : '\x00');
    if (entry.reply_to) put_text(value, *entry.reply_to);
    put_text(value, entry.sent_message_id);
    put_text(value, entry.error);
}

// An outbox entry as stored, with its sequence number.
struct StoredEntry {
    std::int64_t sequence = 0;
    OutboxEntry entry;
};

std::optional<StoredEntry> decode_entry(std::string_view key, std::string_view value) {
    StoredEntry stored;
    OutboxEntry& entry = stored.entry;
    std::size_t i = 0;
    for (; i < key.size() && key[i] != '\x00'; ++i) {
        if (key[i] != '\x01') {
            entry.plan_id.push_back(key[i]);
        } else if (++i < key.size()) {
            entry.plan_id.push_back(static_cast<char>(key[i] - 1));
        }
    }
    if (i >= key.size()) return std::nullopt;
    auto recipient = Address::parse(std::string(key.substr(i + 1)));
    if (!recipient || value.size() < kStateOffset + 1) return std::nullopt;
    entry.recipient = std::move(*recipient);
    stored.sequence = get_fixed64(value.substr(0, 8));
    entry.created_ms = get_fixed64(value.substr(8, 8));
    const auto state = static_cast<unsigned char>(value[kStateOffset]);
    if (state > static_cast<unsigned char>(OutboxState::withdrawn)) return std::nullopt;
    entry.state = static_cast<OutboxState>(state);
    value.remove_prefix(kStateOffset + 1);
    const auto attempts = get_varint(value);
    const auto text = get_text(value);
    if (!attempts || !text || value.empty()) return std::nullopt;
    entry.attempts = static_cast<std::int32_t>(static_cast<std::uint32_t>(*attempts));
    entry.text = *text;
    const bool has_reply_to = value.front() != '\x00';
    value.remove_prefix(1);
    if (has_reply_to) {
        const auto reply_to = get_text(value);
        if (!reply_to) return std::nullopt;
        entry.reply_to = std::string(*reply_to);
    }
    const auto sent = get_text(value);
    const auto error = sent ? get_text(value) : std::nullopt;
    if (!error) return std::nullopt;
    entry.sent_message_id = *sent;
    entry.error = *error;
    return stored;
}

std::int64_t pending_entries(std::span<const BlockTable::Record> records) {
    std::int64_t pending = 0;
    for (const auto& record : records) {
        if (record.value.size() > kStateOffset && record.value[kStateOffset] == state_byte(OutboxState::pending)) {
            ++pending;
        }
    }
    return pending;
}

// ---- records of the message log ----
// Key: the timestamp and the sequence number, 8 bytes each, big-endian (the timestamp's sign bit flipped), so that
// keys sort by time, then in the order the messages were logged. Value: id, author id and name, is_bot (1 byte),
// text, kind, reply_to (a flag byte, then the text if set), recovered (1 byte), raw.

void put_ordered64(std::string& out, std::uint64_t bits) {
    char bytes[8];
    for (int i = 7; i >= 0; --i) {
        bytes[i] = static_cast<char>(bits & 0xff);
        bits >>= 8;
    }
    out.append(bytes, sizeof bytes);
}

std::uint64_t get_ordered64(std::string_view in) {
    std::uint64_t bits = 0;
    for (std::size_t i = 0; i < 8 && i < in.size(); ++i) bits = (bits << 8) | static_cast<unsigned char>(in[i]);
    return bits;
}

constexpr std::uint64_t kSignBit = std::uint64_t{1} << 63;

void append_log_key(std::int64_t timestamp_ms, std::int64_t sequence, std::string& key) {
    put_ordered64(key, static_cast<std::uint64_t>(timestamp_ms) ^ kSignBit);
    put_ordered64(key, static_cast<std::uint64_t>(sequence));
}

std::int64_t log_timestamp(std::string_view key) { return static_cast<std::int64_t>(get_ordered64(key) ^ kSignBit); }

void encode_message(const Message& message, std::string& value) {
    put_text(value, message.id);
    put_text(value, message.author.id);
    put_text(value, message.author.display_name);
    value.push_back(message.author.is_bot ? '\x01' : '\x00');
    put_text(value, message.text);
    put_text(value, to_string(message.kind));
    value.push_back(message.reply_to ? '\x01' : '\x00');
    if (message.reply_to) put_text(value, *message.reply_to);
    value.push_back(message.recovered ? '\x01' : '\x00');
    put_text(value, message.raw);
}

std::optional<Message> decode_message(std::string_view key, std::string_view value) {
    Message message;
    message.timestamp_ms = log_timestamp(key);
    const auto id = get_text(value);
    const auto author_id = id ? get_text(value) : std::nullopt;
    const auto author_name = author_id ? get_text(value) : std::nullopt;
    if (!author_name || value.empty()) return std::nullopt;
    message.id = *id;
    message.author.id = *author_id;
    message.author.display_name = *author_name;
    message.author.is_bot = value.front() != '\x00';
    value.remove_prefix(1);
    const auto text = get_text(value);
    const auto kind = text ? get_text(value) : std::nullopt;
    if (!kind || value.empty()) return std::nullopt;
    message.text = *text;
    message.kind = parse_message_kind(*kind).value_or(MessageKind::group);
    const bool has_reply_to = value.front() != '\x00';
    value.remove_prefix(1);
    if (has_reply_to) {
        const auto reply_to = get_text(value);
        if (!reply_to) return std::nullopt;
        message.reply_to = std::string(*reply_to);
    }
    if (value.empty()) return std::nullopt;
    message.recovered = value.front() != '\x00';
    value.remove_prefix(1);
    const auto raw = get_text(value);
    if (!raw) return std::nullopt;
    message.raw = *raw;
    return message;
}

std::int64_t oldest_logged(std::span<const BlockTable::Record> records) {
    std::int64_t oldest = std::numeric_limits<std::int64_t>::max();
    for (const auto& record : records) oldest = std::min(oldest, log_timestamp(record.key));
    return oldest;
}

std::int64_t smaller(std::int64_t a, std::int64_t b) { return std::min(a, b); }
std::int64_t sum(std::int64_t a, std::int64_t b) { return a + b; }

BlockTable ledger_table(SQLite::Database& db) { return BlockTable(db, "dedup_blocks", oldest_timestamp, smaller); }
BlockTable outbox_table(SQLite::Database& db) { return BlockTable(db, "outbox_blocks", pending_entries, sum); }
BlockTable log_table(SQLite::Database& db) { return BlockTable(db, "log_blocks", oldest_logged, smaller); }

std::int64_t read_meta(SQLite::Database& db, const char* key) {
    SQLite::Statement query(db, "SELECT value FROM store_meta WHERE key = ?1");
    query.bind(1, key);
    return query.executeStep() ? query.getColumn(0).getInt64() : 0;
}

// Version 1 -> 2: the rows of `dedup` and `outbox` become blocks (outbox entries keep their order: their rowid is
// their sequence number), then the old tables go. Rows are read a chunk at a time, so memory stays bounded.
void convert_to_version_2(SQLite::Database& db) {
    constexpr std::size_t kChunk = 4096;
    std::vector<BlockTable::OwnedRecord> records;
    std::vector<BlockTable::Record> views;
    std::vector<bool> inserted;
    // Records go into a table a chunk at a time, each chunk of one partition: add() writes what it holds first when
    // the partition changes or the chunk is full, flush() writes the rest.
    std::int64_t part = 0;
    auto flush = [&](BlockTable& table) {
        if (records.empty()) return;
        std::sort(records.begin(), records.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
        views.clear();
        for (const auto& record : records) views.push_back({record.key, record.value});
        table.insert(part, views, inserted);
        records.clear();
    };
    auto add = [&](BlockTable& table, std::int64_t record_part) -> BlockTable::OwnedRecord& {
        if (record_part != part || records.size() == kChunk) flush(table);
        part = record_part;
        return records.emplace_back();
    };
    {
        BlockTable ledger = ledger_table(db);
        SQLite::Statement rows(db,
                               "SELECT c.id, d.message_id, d.timestamp_ms FROM dedup d JOIN channels c "
                               "ON c.connection = d.connection AND c.channel = d.channel ORDER BY c.id, d.message_id");
        while (rows.executeStep()) {
            BlockTable::OwnedRecord& record = add(ledger, rows.getColumn(0).getInt64());
            record.key = rows.getColumn(1).getString();
            put_fixed64(record.value, rows.getColumn(2).getInt64());
        }
        flush(ledger);
    }
    {
        BlockTable outbox = outbox_table(db);
        SQLite::Statement rows(db,
                               "SELECT rowid, plan_id, recipient, text, reply_to, state, sent_message_id, attempts, "
                               "error, created_ms FROM outbox ORDER BY plan_id, recipient");
        std::int64_t last_sequence = 0;
        while (rows.executeStep()) {
            OutboxEntry entry;
            const std::int64_t sequence = rows.getColumn(0).getInt64();
            entry.text = rows.getColumn(3).getString();
            entry.reply_to = optional_text(rows.getColumn(4));
            const std::string state = rows.getColumn(5).getString();
            const auto parsed = parse_outbox_state(state);
            if (!parsed) throw std::runtime_error("an outbox entry has the unknown state '" + state + "'");
            entry.state = *parsed;
            entry.sent_message_id = rows.getColumn(6).getString();
            entry.attempts = rows.getColumn(7).getInt();
            entry.error = rows.getColumn(8).getString();
            entry.created_ms = rows.getColumn(9).getInt64();
            BlockTable::OwnedRecord& record = add(outbox, 0);
            append_outbox_key(rows.getColumn(1).getString(), rows.getColumn(2).getString(), record.key);
            encode_entry(entry, sequence, record.value);
            last_sequence = std::max(last_sequence, sequence);
        }
        flush(outbox);
        SQLite::Statement meta(db, "INSERT INTO store_meta (key, value) VALUES ('outbox_seq', ?1)");
        meta.bind(1, last_sequence);
        meta.exec();
    }
    {
        BlockTable log = log_table(db);
        SQLite::Statement rows(db,
                               "SELECT c.id, m.rowid, m.id, m.author_id, m.author_name, m.author_is_bot, m.text, "
                               "m.timestamp_ms, m.kind, m.reply_to, m.recovered, m.raw FROM messages m JOIN channels c "
                               "ON c.connection = m.connection AND c.channel = m.channel "
                               "ORDER BY c.id, m.timestamp_ms, m.rowid");
        std::int64_t last_sequence = 0;
        while (rows.executeStep()) {
            const std::int64_t channel = rows.getColumn(0).getInt64();
            const std::int64_t sequence = rows.getColumn(1).getInt64();
            Message message;
            message.id = rows.getColumn(2).getString();
            message.author.id = rows.getColumn(3).getString();
            message.author.display_name = rows.getColumn(4).getString();
            message.author.is_bot = rows.getColumn(5).getInt() != 0;
            message.text = rows.getColumn(6).getString();
            message.kind = parse_message_kind(rows.getColumn(8).getString()).value_or(MessageKind::group);
            message.reply_to = optional_text(rows.getColumn(9));
            message.recovered = rows.getColumn(10).getInt() != 0;
            message.raw = rows.getColumn(11).getString();
            BlockTable::OwnedRecord& record = add(log, channel);
            append_log_key(rows.getColumn(7).getInt64(), sequence, record.key);
            encode_message(message, record.value);
            last_sequence = std::max(last_sequence, sequence);
        }
        flush(log);
        SQLite::Statement meta(db, "INSERT INTO store_meta (key, value) VALUES ('log_seq', ?1)");
        meta.bind(1, last_sequence);
        meta.exec();
    }
    db.exec("DROP TABLE dedup; DROP TABLE outbox; DROP TABLE messages;");
}

}  // namespace

struct SqliteStore::Impl {
    Impl(std::filesystem::path file, const SqliteOptions& options)
        : path(prepare_path(std::move(file))),
          message_log(options.message_log),
          prune_slice_blocks(std::max<std::size_t>(1, options.prune_slice_blocks)),
          lock(path),
          db(open_database(path, options)) {
        outbox_sequence = read_meta(db, "outbox_seq");
        log_sequence = read_meta(db, "log_seq");
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
        // The caches may hold what the rolled-back transaction wrote: channel numbers, blocks.
        channel_ids.clear();
        ledger.forget();
        outbox.forget();
        log.forget();
    }

    // Runs @p body under the connection's mutex; SQLite exceptions never leave the store.
    template <class Body>
    auto guarded(std::string_view what, Body&& body) -> decltype(body()) {
        waiting.fetch_add(1, std::memory_order_relaxed);
        std::lock_guard guard(mutex);
        waiting.fetch_sub(1, std::memory_order_relaxed);
        try {
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

    // The one row @p query finds, read by @p read, if there is one. The query is reset before this returns: a
    // statement left on a row keeps its read transaction open, so a write by another connection (a sqlite3 shell)
    // would make the next commit fail with store_busy, and checkpoints could not get past its snapshot.
    template <class Read>
    static auto read_row(SQLite::Statement& query, Read&& read) -> std::optional<decltype(read(query))> {
        std::optional<decltype(read(query))> row;
        if (query.executeStep()) row.emplace(read(query));
        query.tryReset();
        return row;
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

    // The number of (@p connection, @p channel), which is the ledger's partition of its messages; with @p create,
    // a channel seen for the first time is numbered (in the caller's transaction), else it has none.
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
        if (channel_ids.size() >= kMaxCachedChannels) channel_ids.clear();
        channel_ids.emplace(channel_key, id);
        return id;
    }

    // Fills `ledger_keys` with (channel number, message id, position) of @p count messages, @p message_at(i) the
    // i-th, sorted by channel, id, then position, and `channel_of` with each one's channel number. With @p create a
    // channel seen for the first time is numbered (in the caller's transaction); without, the messages of a channel
    // that has no number get no key (none of them is in the ledger) and channel number 0.
    template <class MessageAt>
    void sort_ledger_keys(std::size_t count, MessageAt&& message_at, bool create) {
        ledger_keys.clear();
        channel_of.clear();
        for (std::size_t i = 0; i < count; ++i) {
            const Message& message = message_at(i);
            const auto channel = channel_id(message.connection, message.channel, create);
            channel_of.push_back(channel.value_or(0));
            if (channel) ledger_keys.push_back({*channel, message.id, i});
        }
        // A batch interleaves a few channels, each with its ids mostly increasing: grouping by channel compares only
        // numbers, and a channel's run then needs sorting by id only if it is not in order already.
        std::sort(ledger_keys.begin(), ledger_keys.end(), [](const LedgerKey& a, const LedgerKey& b) {
            return a.channel != b.channel ? a.channel < b.channel : a.index < b.index;
        });
        sort_runs(
            ledger_keys.begin(), ledger_keys.end(),
            [](const LedgerKey& a, const LedgerKey& b) { return a.channel == b.channel; },
            [](const LedgerKey& a, const LedgerKey& b) {
                const int order = a.id.compare(b.id);
                return order != 0 ? order < 0 : a.index < b.index;
            });
    }

    // Enters the messages of @p batch into the ledger; fresh[i] says whether batch[i] was not there yet (nor earlier
    // in the batch).
    void enter_into_ledger(std::span<const ProcessedMessage> batch, std::vector<bool>& fresh) {
        const auto& keys = ledger_keys;
        sort_ledger_keys(batch.size(), [&](std::size_t i) -> const Message& { return batch[i].message; }, true);
        timestamps.clear();
        for (const ProcessedMessage& item : batch) put_fixed64(timestamps, item.message.timestamp_ms);
        fresh.assign(batch.size(), false);
        for (std::size_t first = 0; first < keys.size();) {
            const std::int64_t channel = keys[first].channel;
            records.clear();
            indexes.clear();
            std::size_t next = first;
            for (; next < keys.size() && keys[next].channel == channel; ++next) {
                const LedgerKey& key = keys[next];
                if (!records.empty() && records.back().key == key.id) continue;  // twice in the batch
                records.push_back({key.id, std::string_view(timestamps).substr(key.index * 8, 8)});
                indexes.push_back(key.index);
            }
            ledger.insert(channel, records, inserted);
            for (std::size_t k = 0; k < indexes.size(); ++k) fresh[indexes[k]] = inserted[k];
            first = next;
        }
    }

    // Builds the outbox key of each entry in `arena`, and `order`: the entries' indexes sorted by key (equal keys in
    // call order), with `sorted_keys` the keys in that order. @p key_at(i) gives the i-th entry's plan id and
    // recipient.
    template <class KeyAt>
    void sort_outbox_keys(std::size_t count, KeyAt&& key_at) {
        arena.clear();
        key_ends.clear();
        for (std::size_t i = 0; i < count; ++i) {
            const auto [plan_id, recipient] = key_at(i);
            address_text(*recipient, recipient_text);
            append_outbox_key(plan_id, recipient_text, arena);
            key_ends.push_back(arena.size());
        }
        keyed.clear();
        for (std::size_t i = 0; i < count; ++i) {
            const std::size_t start = i == 0 ? 0 : key_ends[i - 1];
            keyed.push_back({0, std::string_view(arena).substr(start, key_ends[i] - start), i});
        }
        // The keys of a batch share a long prefix (connection, channel) and come a few channels interleaved, each in
        // order. So: sort by the 8 bytes after what all keys share (compared as a number, in the keys' order), which
        // mostly groups them by channel, then sort a group by its keys only if it is not in order already.
        std::size_t shared = keyed.empty() ? 0 : keyed.front().key.size();
        for (const KeyedEntry& entry : keyed) shared = shared_prefix(keyed.front().key.substr(0, shared), entry.key);
        for (KeyedEntry& entry : keyed) entry.word = ordered_word(entry.key.substr(shared));
        std::sort(keyed.begin(), keyed.end(), [](const KeyedEntry& a, const KeyedEntry& b) {
            return a.word != b.word ? a.word < b.word : a.index < b.index;
        });
        sort_runs(
            keyed.begin(), keyed.end(), [](const KeyedEntry& a, const KeyedEntry& b) { return a.word == b.word; },
            [](const KeyedEntry& a, const KeyedEntry& b) {
                const int order = a.key.compare(b.key);
                return order != 0 ? order < 0 : a.index < b.index;
            });
        order.clear();
        sorted_keys.clear();
        for (const KeyedEntry& entry : keyed) {
            sorted_keys.push_back(entry.key);
            order.push_back(entry.index);
        }
    }

    // Adds @p entries (in order: of equal keys the first counts) to the outbox, keeping entries that exist.
    void add_outbox_entries(std::span<const OutboxEntry* const> entries) {
        if (entries.empty()) return;
        sort_outbox_keys(entries.size(), [&](std::size_t i) { return key_of(*entries[i]); });
        values.clear();
        value_ends.clear();
        for (const std::size_t i : order) {
            encode_entry(*entries[i], outbox_sequence + 1 + static_cast<std::int64_t>(i), values);
            value_ends.push_back(values.size());
        }
        records.clear();
        for (std::size_t k = 0; k < order.size(); ++k) {
            const std::string_view key = sorted_keys[k];
            if (!records.empty() && records.back().key == key) continue;  // twice in the call
            const std::size_t start = k == 0 ? 0 : value_ends[k - 1];
            records.push_back({key, std::string_view(values).substr(start, value_ends[k] - start)});
        }
        outbox.insert(0, records, inserted);
        outbox_sequence += static_cast<std::int64_t>(entries.size());
    }

    // Appends batch[i] for each i of @p logged (messages not processed before) to the message log.
    void log_messages(std::span<const ProcessedMessage> batch, std::span<const std::size_t> logged) {
        if (logged.empty()) return;
        log_keys.clear();
        log_values.clear();
        log_ends.clear();
        for (std::size_t k = 0; k < logged.size(); ++k) {
            const Message& message = batch[logged[k]].message;
            append_log_key(message.timestamp_ms, log_sequence + 1 + static_cast<std::int64_t>(k), log_keys);
            encode_message(message, log_values);
            log_ends.emplace_back(log_keys.size(), log_values.size());
        }
        log_sequence += static_cast<std::int64_t>(logged.size());
        auto key = [&](std::size_t k) { return std::string_view(log_keys).substr(k * 16, 16); };
        auto value = [&](std::size_t k) {
            const std::size_t start = k == 0 ? 0 : log_ends[k - 1].second;
            return std::string_view(log_values).substr(start, log_ends[k].second - start);
        };
        order.resize(logged.size());
        for (std::size_t k = 0; k < order.size(); ++k) order[k] = k;
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            const std::int64_t ca = channel_of[logged[a]];
            const std::int64_t cb = channel_of[logged[b]];
            return ca != cb ? ca < cb : key(a) < key(b);
        });
        for (std::size_t first = 0; first < order.size();) {
            const std::int64_t channel = channel_of[logged[order[first]]];
            records.clear();
            std::size_t next = first;
            for (; next < order.size() && channel_of[logged[order[next]]] == channel; ++next) {
                records.push_back({key(order[next]), value(order[next])});
            }
            log.insert(channel, records, inserted);
            first = next;
        }
    }

    // Writes the sequence numbers of the outbox and the log, in the caller's transaction.
    void save_sequences() {
        auto& put = fresh(meta_put);
        put.bind(1, outbox_sequence);
        put.bind(2, log_sequence);
        put.exec();
    }

    // The plan id and recipient of @p entry, as sort_outbox_keys() takes them.
    static std::pair<std::string_view, const Address*> key_of(const OutboxEntry& entry) {
        return {entry.plan_id, &entry.recipient};
    }

    // What an update writes into an entry.
    struct EntryState {
        OutboxState state;
        std::int32_t attempts;
        std::string_view sent_message_id;
        std::string_view error;
    };

    // Updates @p count entries, the i-th one's key from @p key_at(i) and its new state from @p state_at(i). Returns
    // the first i (in call order) whose entry does not exist, or @p count.
    template <class KeyAt, class StateAt>
    std::size_t update_outbox_entries(std::size_t count, KeyAt&& key_at, StateAt&& state_at) {
        sort_outbox_keys(count, key_at);
        outbox.update(
            0, sorted_keys,
            [&](std::size_t k, std::string_view old, std::string& out) { rewrite_state(state_at(order[k]), old, out); },
            found);
        std::size_t missing = count;
        for (std::size_t k = 0; k < found.size(); ++k) {
            if (!found[k]) missing = std::min(missing, order[k]);
        }
        return missing;
    }

    // Writes to @p out the entry @p old (encoded) with the state, attempts, sent message id and error of @p entry.
    static void rewrite_state(const EntryState& entry, std::string_view old, std::string& out) {
        std::string_view rest = old.substr(std::min(old.size(), kStateOffset + 1));
        const bool readable = get_varint(rest).has_value();
        const std::size_t content = old.size() - rest.size();  // text and reply_to, kept as they are
        const auto text = readable ? get_text(rest) : std::nullopt;
        if (!text || rest.empty()) throw std::runtime_error("an outbox entry is unreadable: the store file is corrupt");
        const bool has_reply_to = rest.front() != '\x00';
        rest.remove_prefix(1);
        if (has_reply_to && !get_text(rest)) {
            throw std::runtime_error("an outbox entry is unreadable: the store file is corrupt");
        }
        const std::size_t content_end = old.size() - rest.size();
        out.append(old.substr(0, kStateOffset));
        out.push_back(state_byte(entry.state));
        put_varint(out, static_cast<std::uint32_t>(entry.attempts));
        out.append(old.substr(content, content_end - content));
        put_text(out, entry.sent_message_id);
        put_text(out, entry.error);
    }

    [[nodiscard]] Error entry_not_found(std::string_view plan_id, const Address& recipient) const {
        return fail("outbox_entry_not_found", "no outbox entry for plan '" + std::string(plan_id) +
                                                  "' and recipient '" + recipient.to_string() + "' in " + quoted(path) +
                                                  "; add it with outbox_add first");
    }

    // The entries of @p records, in the order they were added (pending ones: oldest first).
    [[nodiscard]] Result<std::vector<OutboxEntry>> entries_of(const std::vector<BlockTable::OwnedRecord>& records,
                                                              bool pending_only, bool by_creation) {
        std::vector<StoredEntry> stored;
        for (const BlockTable::OwnedRecord& record : records) {
            auto entry = decode_entry(record.key, record.value);
            if (!entry) {
                return fail("store_corrupt", "an outbox entry in " + quoted(path) +
                                                 " is unreadable; stop switchboard, move the file aside (or "
                                                 "restore a backup)");
            }
            if (pending_only && entry->entry.state != OutboxState::pending) continue;
            stored.push_back(std::move(*entry));
        }
        std::sort(stored.begin(), stored.end(), [by_creation](const StoredEntry& a, const StoredEntry& b) {
            if (by_creation && a.entry.created_ms != b.entry.created_ms) return a.entry.created_ms < b.entry.created_ms;
            return a.sequence < b.sequence;
        });
        std::vector<OutboxEntry> result;
        result.reserve(stored.size());
        for (StoredEntry& entry : stored) result.push_back(std::move(entry.entry));
        return result;
    }

    const std::filesystem::path path;
    const bool message_log;
    const std::size_t prune_slice_blocks;
    LockFile lock;
    SQLite::Database db;  // declared after the lock: the connection closes before the lock is released
    Checkpointer checkpointer{path, db.getHandle()};  // stops before the connection closes

    BlockTable ledger = ledger_table(db);
    BlockTable outbox = outbox_table(db);
    BlockTable log = log_table(db);
    SQLite::Statement begin{db, "BEGIN IMMEDIATE"};
    SQLite::Statement begin_read{db, "BEGIN"};
    SQLite::Statement commit{db, "COMMIT"};
    SQLite::Statement channel_find{db, "SELECT id FROM channels WHERE connection = ?1 AND channel = ?2"};
    SQLite::Statement channel_insert{db, "INSERT INTO channels (connection, channel) VALUES (?1, ?2)"};
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
    SQLite::Statement meta_put{db,
                               "INSERT INTO store_meta (key, value) VALUES ('outbox_seq', ?1), ('log_seq', ?2) "
                               "ON CONFLICT (key) DO UPDATE SET value = excluded.value"};

    // Channels seen at most; past it the cache starts again (it only saves a look-up).
    static constexpr std::size_t kMaxCachedChannels = 65536;

    std::mutex mutex;
    std::atomic<int> waiting{0};  // calls waiting for `mutex`: a long task working in slices lets them go first
    std::unordered_map<std::string, std::int64_t> channel_ids;  // connection NUL channel -> channels.id (a cache)
    std::int64_t outbox_sequence = 0;                           // store_meta.outbox_seq
    std::int64_t log_sequence = 0;                              // store_meta.log_seq

    // Scratch buffers, kept between calls so that a warm store allocates little.
    struct LedgerKey {
        std::int64_t channel;
        std::string_view id;
        std::size_t index;
    };
    std::vector<LedgerKey> ledger_keys;       // the batch's dedup keys, sorted
    std::string timestamps;                   // their timestamps as stored, 8 bytes each in batch order
    std::vector<BlockTable::Record> records;  // records handed to a block table
    std::vector<std::size_t> indexes;         // which message each ledger record is
    std::vector<bool> inserted;               // what a block table inserted
    std::vector<bool> found;                  // what a block table found
    std::string arena;                        // outbox keys, one after the other
    std::vector<std::size_t> key_ends;        // where each ends in the arena
    struct KeyedEntry {
        std::uint64_t word;  // the key's first 8 bytes past what the call's keys share, big-endian (0 past its end)
        std::string_view key;
        std::size_t index;
    };
    std::vector<KeyedEntry> keyed;                                // outbox keys and their entries
    std::vector<std::size_t> order;                               // entries by key
    std::vector<std::string_view> sorted_keys;                    // the keys in that order
    std::string values;                                           // encoded entries, one after the other
    std::vector<std::size_t> value_ends;                          // where each ends
    std::vector<std::int64_t> channel_of;                         // the channel number of each message of the batch
    std::vector<std::size_t> logged;                              // the batch's messages to log
    std::string log_keys;                                         // their keys, 16 bytes each
    std::string log_values;                                       // their values, one after the other
    std::vector<std::pair<std::size_t, std::size_t>> log_ends;    // where each key and value ends
    std::vector<bool> fresh_messages;          // scratch for commit(): which messages were not in the ledger
    std::vector<const OutboxEntry*> replies;   // scratch for commit(): the outbox entries to add
    std::vector<std::pair<std::int64_t, const Message*>> cursor_moves;  // commit(): channel, its newest message
    std::string recipient_text;  // scratch: a recipient as text
    std::vector<std::pair<std::string_view, const OutboxRecipientUpdate*>> plan_updates;  // outbox_update_plans()
    std::string channel_key;  // scratch: a key of channel_ids
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
        return channel && impl_->ledger.find(*channel, key.message_id).has_value();
    });
}

Result<std::vector<bool>> SqliteStore::are_processed(std::span<const Message> messages) {
    return impl_->guarded("checking the dedup ledger", [&]() -> Result<std::vector<bool>> {
        Impl& s = *impl_;
        std::vector<bool> seen(messages.size());
        if (messages.empty()) return seen;
        // Each channel's ids, sorted, looked for block by block (BlockTable::contains), all in one read transaction:
        // a batch is mostly a few channels' newest ids, past every block, so one look-up per channel.
        Impl::fresh(s.begin_read).exec();
        s.sort_ledger_keys(messages.size(), [&](std::size_t i) -> const Message& { return messages[i]; }, false);
        const auto& keys = s.ledger_keys;
        std::vector<std::string_view> ids;
        std::vector<bool> found;
        for (std::size_t first = 0; first < keys.size();) {
            std::size_t next = first;
            ids.clear();
            for (; next < keys.size() && keys[next].channel == keys[first].channel; ++next) ids.push_back(keys[next].id);
            s.ledger.contains(keys[first].channel, ids, found);
            for (std::size_t k = first; k < next; ++k) seen[keys[k].index] = found[k - first];
            first = next;
        }
        Impl::fresh(s.commit).exec();
        return seen;
    });
}

Result<void> SqliteStore::commit(std::span<const ProcessedMessage> batch) {
    if (batch.empty()) return {};
    return impl_->guarded("committing a batch of processed messages", [&]() -> Result<void> {
        Impl& s = *impl_;
        Impl::fresh(s.begin).exec();
        s.enter_into_ledger(batch, s.fresh_messages);
        auto& moves = s.cursor_moves;
        moves.clear();
        s.replies.clear();
        s.logged.clear();
        for (std::size_t i = 0; i < batch.size(); ++i) {
            if (!s.fresh_messages[i]) continue;  // already processed: a retried batch or a recovered overlap
            const ProcessedMessage& item = batch[i];
            const Message& message = item.message;

            // Cursors move once per channel per batch, to the newest message seen in batch order; the upsert's
            // WHERE keeps a stored cursor that is newer still. Same result as moving it message by message.
            // Channels are told apart by their numbers, which enter_into_ledger() gave every message.
            const std::int64_t channel = s.channel_of[i];
            auto it =
                std::find_if(moves.rbegin(), moves.rend(), [&](const auto& move) { return move.first == channel; });
            if (it == moves.rend()) {
                moves.emplace_back(channel, &message);
            } else if (it->second->timestamp_ms <= message.timestamp_ms) {
                it->second = &message;
            }

            if (s.message_log) s.logged.push_back(i);
            for (const KeyValueWrite& write : item.writes) s.put_value(write);
            for (const OutboxEntry& entry : item.outbox) s.replies.push_back(&entry);
        }
        s.log_messages(batch, s.logged);
        s.add_outbox_entries(s.replies);
        s.save_sequences();
        for (const auto& [channel, message] : moves) {
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
        return Impl::read_row(query, [](SQLite::Statement& row) {
            return Cursor{row.getColumn(0).getString(), row.getColumn(1).getInt64()};
        });
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
        return Impl::read_row(query, [](SQLite::Statement& row) { return row.getColumn(0).getString(); });
    });
}

Result<std::optional<std::string>> SqliteStore::get_value(const std::string& space, const std::string& key) {
    return impl_->guarded("reading a key-value entry", [&]() -> Result<std::optional<std::string>> {
        auto& query = Impl::fresh(impl_->kv_get);
        query.bindNoCopy(1, space);
        query.bindNoCopy(2, key);
        return Impl::read_row(query, [](SQLite::Statement& row) { return row.getColumn(0).getString(); });
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
        std::vector<const OutboxEntry*> added;
        added.reserve(entries.size());
        for (const OutboxEntry& entry : entries) added.push_back(&entry);
        Impl::fresh(impl_->begin).exec();
        impl_->add_outbox_entries(added);
        impl_->save_sequences();
        Impl::fresh(impl_->commit).exec();
        return {};
    });
}

Result<void> SqliteStore::outbox_update(std::span<const OutboxEntry> entries) {
    if (entries.empty()) return {};
    return impl_->guarded("updating outbox entries", [&]() -> Result<void> {
        Impl& s = *impl_;
        Impl::fresh(s.begin).exec();
        const std::size_t missing = s.update_outbox_entries(
            entries.size(), [&](std::size_t i) { return Impl::key_of(entries[i]); },
            [&](std::size_t i) {
                const OutboxEntry& e = entries[i];
                return Impl::EntryState{e.state, e.attempts, e.sent_message_id, e.error};
            });
        Impl::fresh(s.commit).exec();
        if (missing < entries.size()) return s.entry_not_found(entries[missing].plan_id, entries[missing].recipient);
        return {};
    });
}

Result<void> SqliteStore::outbox_update_plans(std::span<const OutboxPlanUpdate> plans) {
    return impl_->guarded("updating outbox entries", [&]() -> Result<void> {
        Impl& s = *impl_;
        auto& flat = s.plan_updates;  // (plan id, update) of every entry, in call order
        flat.clear();
        for (const OutboxPlanUpdate& plan : plans) {
            for (const OutboxRecipientUpdate& update : plan.recipients) flat.emplace_back(plan.plan_id, &update);
        }
        if (flat.empty()) return {};
        Impl::fresh(s.begin).exec();
        const auto key_at = [&](std::size_t i) {
            return std::pair<std::string_view, const Address*>{flat[i].first, flat[i].second->address};
        };
        const auto state_at = [&](std::size_t i) {
            const OutboxRecipientUpdate& u = *flat[i].second;
            return Impl::EntryState{u.state, u.attempts, u.sent_message_id, u.error};
        };
        const std::size_t missing = s.update_outbox_entries(flat.size(), key_at, state_at);
        Impl::fresh(s.commit).exec();
        if (missing < flat.size()) return s.entry_not_found(flat[missing].first, *flat[missing].second->address);
        return {};
    });
}

Result<std::vector<OutboxEntry>> SqliteStore::outbox_pending() {
    return impl_->guarded("listing pending outbox entries", [&]() -> Result<std::vector<OutboxEntry>> {
        return impl_->entries_of(impl_->outbox.with_positive_summary(), true, true);
    });
}

Result<std::vector<OutboxEntry>> SqliteStore::outbox_plan(const std::string& plan_id) {
    return impl_->guarded("reading a plan's outbox entries", [&]() -> Result<std::vector<OutboxEntry>> {
        return impl_->entries_of(impl_->outbox.range(0, plan_prefix(plan_id), plan_end(plan_id)), false, false);
    });
}

Result<std::vector<Message>> SqliteStore::messages(const std::string& connection, const std::string& channel,
                                                   std::int64_t from_ms, std::int64_t to_ms, std::size_t limit) {
    return impl_->guarded("reading the message log", [&]() -> Result<std::vector<Message>> {
        std::vector<Message> result;
        const auto part = impl_->channel_id(connection, channel, false);
        if (!part || from_ms >= to_ms) return result;
        std::string from;
        std::string to;
        append_log_key(from_ms, 0, from);
        append_log_key(to_ms, 0, to);
        for (const BlockTable::OwnedRecord& record : impl_->log.range(*part, from, to, limit)) {
            auto message = decode_message(record.key, record.value);
            if (!message) {
                return fail("store_corrupt", "a logged message of " + connection + "/" + channel + " in " +
                                                 quoted(impl_->path) +
                                                 " is unreadable; stop switchboard, move the file aside (or "
                                                 "restore a backup)");
            }
            message->connection = connection;
            message->channel = channel;
            result.push_back(std::move(*message));
        }
        return result;
    });
}

Result<std::size_t> SqliteStore::prune(std::int64_t before_ms) {
    // Each table in slices of prune_slice_blocks blocks, each slice a transaction of its own under the store's lock,
    // letting other calls (a live connection's commits) in between, until the slice that reaches its last block.
    const auto in_slices = [&](BlockTable& table, std::int64_t bound,
                               const std::function<bool(const BlockTable::Record&)>& remove,
                               std::string_view what) -> Result<std::size_t> {
        std::size_t removed = 0;
        for (std::int64_t after = 0;;) {
            auto slice = impl_->guarded(what, [&]() -> Result<BlockTable::Removal> {
                Impl::fresh(impl_->begin).exec();
                const BlockTable::Removal removal = table.remove_if(bound, remove, after, impl_->prune_slice_blocks);
                Impl::fresh(impl_->commit).exec();
                return removal;
            });
            if (!slice) return slice.error();
            removed += slice->removed;
            if (slice->complete) return removed;
            after = slice->last_id;
            // Calls waiting for the store go first (a mutex is not fair: this thread would take it again at once);
            // at most some 10 ms, for a store that never goes quiet.
            for (int rounds = 0; impl_->waiting.load(std::memory_order_relaxed) > 0 && rounds < 100; ++rounds) {
                std::this_thread::sleep_for(std::chrono::microseconds(100));
            }
        }
    };
    auto removed = in_slices(
        impl_->ledger, before_ms,
        [&](const BlockTable::Record& record) { return get_fixed64(record.value) < before_ms; },
        "pruning the dedup ledger");
    if (!removed) return removed;
    auto logged = in_slices(
        impl_->log, before_ms, [&](const BlockTable::Record& record) { return log_timestamp(record.key) < before_ms; },
        "pruning the message log");
    if (!logged) return logged.error();
    // Finished outbox entries (sent, failed, withdrawn) created before the bound. The outbox's blocks are in plan id
    // order, not by age, and their summary counts pending entries: every block is read.
    auto finished = in_slices(
        impl_->outbox, std::numeric_limits<std::int64_t>::max(),
        [&](const BlockTable::Record& record) {
            return record.value.size() > kStateOffset &&
                   record.value[kStateOffset] != state_byte(OutboxState::pending) &&
                   get_fixed64(record.value.substr(8, 8)) < before_ms;
        },
        "pruning finished outbox entries");
    if (!finished) return finished.error();
    return removed;
}

}  // namespace switchboard::stores
