#pragma once
// The `redis` store: the whole Store interface on a Redis server, through hiredis, so that several hosts can share
// dedup ledger, cursors, connection state, outbox, key-value space and message log (DESIGN §8). Every write that
// must be atomic (a batch commit, outbox changes, prune) is one Lua script, run with EVALSHA (EVAL when the server
// answers NOSCRIPT, e.g. after a restart); reads of several keys are scripts too, so they see one moment. A lost
// connection is re-established with backoff while the caller waits, up to `reconnect_timeout`; then the call fails
// with `store_unavailable` naming the server, and the host keeps its messages and tries again. The key layout is
// in README.md beside this file.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <switchboard/store.hpp>
#include <vector>

namespace switchboard::stores {

/// Where the server is, from `redis://[[user]:password@]host[:port][/db]`.
struct RedisEndpoint {
    std::string host = "127.0.0.1";
    int port = 6379;
    int database = 0;
    std::string username;  // empty: AUTH with the password alone (requirepass)
    std::string password;  // empty: no AUTH

    /// "redis at HOST:PORT/DB", for messages (never the password).
    [[nodiscard]] std::string describe() const;
};

/// Parses a `redis://` URL. `rediss://` (TLS) is refused: Debian 12's hiredis 0.14 has no TLS support.
/// Errors name what is wrong and what a valid URL looks like; the caller adds the setting's name.
[[nodiscard]] Result<RedisEndpoint> parse_redis_url(const std::string& url);

/// Settings of the redis store besides its URL.
struct RedisOptions {
    /// Prepended to every key, so several deployments can share one database.
    std::string prefix = "switchboard:";
    /// How long a dedup entry and a logged message are kept, counted from the message's timestamp.
    std::chrono::milliseconds dedup_window = std::chrono::hours(24 * 14);
    /// Append every processed message to the message log (Store::messages()).
    bool message_log = true;
    /// Limit for one TCP connect.
    std::chrono::milliseconds connect_timeout{2000};
    /// Limit for one command's reply (a frozen server is taken for a lost one after this).
    std::chrono::milliseconds command_timeout{5000};
    /// How long a call waits for a lost server to come back before it fails with `store_unavailable`.
    std::chrono::milliseconds reconnect_timeout{10000};
    /// Connections at most, used in parallel by calls from several threads.
    std::size_t pool_size = 4;
};

/// Also the LeaseStore of several hosts sharing the server (README.md, "Leases"): `P lease:<connection>` holds
/// "<token> <holder>" with the lease's time to live, and every commit and connection-state write of a connection
/// whose lease this object acquired checks it in the same script.
/// Its SharedQueues are Redis Streams (`P queue:<name>`) with consumer groups.
class RedisStore final : public Store, public LeaseStore, public SharedQueues {
public:
    /// The plugin's name in the config (`store: { plugin: redis }`).
    static constexpr const char* kName = "redis";
    /// The URL used when the config names none.
    static constexpr const char* kDefaultUrl = "redis://127.0.0.1:6379/0";

    /// The keys `url`, `prefix`, `dedup_window`, `message_log`, `connect_timeout`, `command_timeout`,
    /// `reconnect_timeout` and `pool_size`.
    [[nodiscard]] static const ConfigSchema& config_schema();
    /// Rejects a URL that does not parse (or asks for TLS), non-positive durations and a pool_size below 1; each
    /// problem names its key.
    [[nodiscard]] static std::vector<ConfigProblem> check_config(const PluginConfig& config);

    /// What the host calls. Throws ErrorException (config_invalid, store_auth_failed, store_unavailable, ...) when
    /// the server cannot be used.
    RedisStore(const PluginContext& context, const PluginConfig& config);
    /// Connects to @p url (waiting up to reconnect_timeout for the server) and checks it answers. Throws like the
    /// above.
    explicit RedisStore(const std::string& url, RedisOptions options = {});
    ~RedisStore() override;

    /// The server, as "redis at HOST:PORT/DB".
    [[nodiscard]] std::string server() const;

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
    [[nodiscard]] Result<std::vector<OutboxEntry>> outbox_pending() override;
    [[nodiscard]] Result<std::vector<OutboxEntry>> outbox_plan(const std::string& plan_id) override;
    [[nodiscard]] Result<std::vector<Message>> messages(const std::string& connection, const std::string& channel,
                                                        std::int64_t from_ms, std::int64_t to_ms,
                                                        std::size_t limit) override;
    [[nodiscard]] Result<std::size_t> prune(std::int64_t before_ms) override;
    [[nodiscard]] LeaseStore* leases() noexcept override;

    // LeaseStore
    [[nodiscard]] Result<std::optional<Lease>> acquire(const std::string& connection, const std::string& holder,
                                                       std::chrono::milliseconds ttl) override;
    [[nodiscard]] Result<bool> renew(const Lease& lease, std::chrono::milliseconds ttl) override;
    [[nodiscard]] Result<void> release(const Lease& lease) override;
    [[nodiscard]] Result<std::optional<Lease>> holder(const std::string& connection) override;

    // SharedQueues
    [[nodiscard]] SharedQueues* queues() noexcept override;
    [[nodiscard]] Result<std::string> push(const std::string& queue, const std::string& payload) override;
    [[nodiscard]] Result<std::vector<QueueItem>> take(std::span<const std::string> queues, const std::string& group,
                                                      const std::string& consumer, std::size_t max,
                                                      std::chrono::milliseconds reclaim_after) override;
    [[nodiscard]] Result<void> done(const std::string& queue, const std::string& group,
                                    std::span<const std::string> ids) override;

private:
    Result<void> ensure_group(const std::string& key, const std::string& group);

    struct Impl;  // keeps hiredis out of this header
    std::unique_ptr<Impl> impl_;
};

}  // namespace switchboard::stores
