#pragma once
// The `memory` store: every Store call served from standard containers behind one mutex. Nothing survives the
// process; it exists for tests and benchmarks, and as the reference for the semantics the other stores share.

#include <boost/unordered/unordered_flat_map.hpp>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <switchboard/store.hpp>
#include <unordered_map>
#include <vector>

namespace switchboard::stores {

class MemoryStore final : public Store {
public:
    /// The plugin's name in the config (`store: { plugin: memory }`).
    static constexpr const char* kName = "memory";

    /// What the host calls; the memory store has no settings.
    MemoryStore(const PluginContext& context, const PluginConfig& config);
    /// What tests call.
    MemoryStore();

    [[nodiscard]] Result<bool> is_processed(const MessageKey& key) override;
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

private:
    // Open addressing: the dedup ledger and the key-value maps are hit once or more per message.
    template <class Value>
    using FlatMap = boost::unordered_flat_map<std::string, Value>;

    // Everything known about one (connection, channel): the dedup ledger (message id -> timestamp), the cursor,
    // and the message log, kept sorted by timestamp (arrival order among equal timestamps).
    struct Channel {
        std::string connection;
        std::string channel;
        FlatMap<std::int64_t> seen;
        std::optional<Cursor> cursor;
        std::deque<Message> log;
    };
    struct StoredEntry {
        OutboxEntry entry;
        std::uint64_t sequence = 0;  // insertion order, the tie-break for "oldest first"
    };

    // The caller holds mutex_. Both use key_ as scratch space, so the key is built without allocating.
    Channel* find_channel(const std::string& connection, const std::string& channel);
    Channel& channel_for(const std::string& connection, const std::string& channel);
    void apply_write(const KeyValueWrite& write);
    void add_outbox_entry(const OutboxEntry& entry);
    const std::string& pair_key(const std::string& first, const std::string& second);

    std::mutex mutex_;
    std::string key_;
    std::unordered_map<std::string, Channel> channels_;    // by pair_key(connection, channel); nodes stay put
    FlatMap<std::string> connection_state_;                // by pair_key(connection, key)
    FlatMap<std::string> values_;                          // by pair_key(space, key)
    std::unordered_map<std::string, StoredEntry> outbox_;  // by pair_key(plan_id, recipient text)
    std::uint64_t outbox_sequence_ = 0;
    Channel* last_channel_ = nullptr;  // the channel of the last committed message (channels are never erased)
};

}  // namespace switchboard::stores
