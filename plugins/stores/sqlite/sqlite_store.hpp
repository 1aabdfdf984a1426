#pragma once
// The `sqlite` store, the default: one SQLite file in WAL mode, written with one transaction per batch (group
// commit) through cached prepared statements. The schema is versioned with `PRAGMA user_version` and migrated on
// open. The file is never overwritten: a file that is not a database, a schema newer than this build, or a file
// another running host holds (advisory lock on `<path>.lock`) is refused with a clear error.

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <switchboard/store.hpp>
#include <vector>

namespace switchboard::stores {

/// How hard SQLite syncs to disk: `normal` (in WAL mode, a power cut may lose the last commits, never corrupt
/// the file; a process crash loses nothing) or `full` (every commit is synced).
enum class SqliteSynchronous { normal, full };

/// Settings of the sqlite store besides its path.
struct SqliteOptions {
    /// How long a call waits for a lock held by another connection (a reader such as the sqlite3 shell).
    std::chrono::milliseconds busy_timeout{5000};
    /// Sync level.
    SqliteSynchronous synchronous = SqliteSynchronous::normal;
    /// Append every processed message to the message log (Store::messages()). Off, a commit writes only the dedup
    /// entry, the cursor, the key-value writes and the outbox, and messages() finds nothing logged from then on.
    bool message_log = true;
    /// Blocks prune() reads per transaction, in the ledger, the log and the outbox (1,024: about 3 MB, some 25,000
    /// outbox entries, 20–40 ms here). The outbox is not in age order, so prune() reads all of it: it goes a slice at
    /// a time, letting calls that wait for the store in between. Smaller slices hold the store for less time each.
    std::size_t prune_slice_blocks = 1024;
};

class SqliteStore final : public Store {
public:
    /// The plugin's name in the config (`store: { plugin: sqlite }`).
    static constexpr const char* kName = "sqlite";
    /// The schema version this build creates and understands (`PRAGMA user_version`).
    static constexpr int kSchemaVersion = 2;

    /// The keys `path`, `busy_timeout`, `synchronous`, `dedup_window` and `message_log`.
    [[nodiscard]] static const ConfigSchema& config_schema();
    /// Rejects a `synchronous` other than normal or full, an empty `path` and a negative `busy_timeout`.
    [[nodiscard]] static std::vector<ConfigProblem> check_config(const PluginConfig& config);

    /// What the host calls. Throws ErrorException (store_corrupt, store_schema_too_new, store_locked,
    /// store_migration_failed, store_open_failed) when the file cannot be used.
    SqliteStore(const PluginContext& context, const PluginConfig& config);
    /// Opens (creating if needed, with parent directories) the database at @p path. Throws like the above.
    explicit SqliteStore(std::filesystem::path path, SqliteOptions options = {});
    ~SqliteStore() override;

    /// The database file, as an absolute path.
    [[nodiscard]] const std::filesystem::path& path() const noexcept;

    [[nodiscard]] Result<bool> is_processed(const MessageKey& key) override;
    [[nodiscard]] Result<std::vector<bool>> are_processed(std::span<const Message> messages) override;
    [[nodiscard]] Result<void> commit(std::span<const ProcessedMessage> batch) override;
    [[nodiscard]] Result<std::optional<Cursor>> cursor(const std::string& connection,
                                                       const std::string& channel) override;
    [[nodiscard]] Result<std::vector<ChannelCursor>> cursors(const std::string& connection) override;
    [[nodiscard]] Result<void> put_connection_state(const std::string& connection, const std::string& key,
                                                    const std::string& value) override;
    [[nodiscard]] Result<std::optional<std::string>> connection_state(const std::string& connection,
                                                                      const std::string& key) override;
    [[nodiscard]] Result<std::optional<std::string>> get_value(const std::string& space,
                                                               const std::string& key) override;
    [[nodiscard]] Result<void> put_values(std::span<const KeyValueWrite> writes) override;
    [[nodiscard]] Result<void> outbox_add(std::span<const OutboxEntry> entries) override;
    [[nodiscard]] Result<void> outbox_update(std::span<const OutboxEntry> entries) override;
    [[nodiscard]] Result<void> outbox_update_plans(std::span<const OutboxPlanUpdate> plans) override;
    [[nodiscard]] Result<std::vector<OutboxEntry>> outbox_pending() override;
    [[nodiscard]] Result<std::vector<OutboxEntry>> outbox_plan(const std::string& plan_id) override;
    [[nodiscard]] Result<std::vector<Message>> messages(const std::string& connection, const std::string& channel,
                                                        std::int64_t from_ms, std::int64_t to_ms,
                                                        std::size_t limit) override;
    [[nodiscard]] Result<std::size_t> prune(std::int64_t before_ms) override;

private:
    struct Impl;  // keeps SQLiteCpp out of this header
    std::unique_ptr<Impl> impl_;
};

}  // namespace switchboard::stores
