#include "memory_store.hpp"

#include <algorithm>
#include <tuple>

namespace switchboard::stores {

MemoryStore::MemoryStore(const PluginContext& /*context*/, const PluginConfig& /*config*/) : MemoryStore() {}

MemoryStore::MemoryStore() = default;

// Parts joined by '\0', which no connection name, channel id or plan id contains in practice; a key that did would
// at worst share an entry with another, never crash.
const std::string& MemoryStore::pair_key(const std::string& first, const std::string& second) {
    key_.assign(first);
    key_.push_back('\0');
    key_.append(second);
    return key_;
}

MemoryStore::Channel* MemoryStore::find_channel(const std::string& connection, const std::string& channel) {
    auto it = channels_.find(pair_key(connection, channel));
    return it == channels_.end() ? nullptr : &it->second;
}

MemoryStore::Channel& MemoryStore::channel_for(const std::string& connection, const std::string& channel) {
    auto [it, inserted] = channels_.try_emplace(pair_key(connection, channel));
    if (inserted) {
        it->second.connection = connection;
        it->second.channel = channel;
    }
    return it->second;
}

void MemoryStore::apply_write(const KeyValueWrite& write) {
    if (write.value) {
        values_.insert_or_assign(pair_key(write.space, write.key), *write.value);
    } else {
        values_.erase(pair_key(write.space, write.key));
    }
}

void MemoryStore::add_outbox_entry(const OutboxEntry& entry) {
    auto [it, inserted] = outbox_.try_emplace(pair_key(entry.plan_id, entry.recipient.to_string()));
    if (inserted) it->second = StoredEntry{entry, outbox_sequence_++};
}

Result<bool> MemoryStore::is_processed(const MessageKey& key) {
    std::lock_guard lock(mutex_);
    const Channel* channel = find_channel(key.connection, key.channel);
    return channel != nullptr && channel->seen.contains(key.message_id);
}

Result<void> MemoryStore::commit(std::span<const ProcessedMessage> batch) {
    std::lock_guard lock(mutex_);
    for (const ProcessedMessage& item : batch) {
        const Message& message = item.message;
        // Consecutive messages are mostly of one channel: look it up only when it changes.
        Channel* channel = last_channel_;
        if (channel == nullptr || channel->channel != message.channel || channel->connection != message.connection) {
            channel = last_channel_ = &channel_for(message.connection, message.channel);
        }
        if (!channel->seen.try_emplace(message.id, message.timestamp_ms).second) continue;

        if (!channel->cursor || channel->cursor->timestamp_ms <= message.timestamp_ms) {
            channel->cursor = Cursor{message.id, message.timestamp_ms};
        }
        auto& log = channel->log;
        if (log.empty() || log.back().timestamp_ms <= message.timestamp_ms) {
            log.push_back(message);
        } else {
            auto after = std::upper_bound(log.begin(), log.end(), message.timestamp_ms,
                                          [](std::int64_t ts, const Message& m) { return ts < m.timestamp_ms; });
            log.insert(after, message);
        }
        for (const KeyValueWrite& write : item.writes) apply_write(write);
        for (const OutboxEntry& entry : item.outbox) add_outbox_entry(entry);
    }
    return {};
}

Result<std::optional<Cursor>> MemoryStore::cursor(const std::string& connection, const std::string& channel) {
    std::lock_guard lock(mutex_);
    const Channel* found = find_channel(connection, channel);
    if (found == nullptr) return std::optional<Cursor>{};
    return found->cursor;
}

Result<std::vector<ChannelCursor>> MemoryStore::cursors(const std::string& connection) {
    std::lock_guard lock(mutex_);
    std::vector<ChannelCursor> result;
    for (const auto& [key, channel] : channels_) {
        if (!channel.cursor || (!connection.empty() && channel.connection != connection)) continue;
        result.push_back(ChannelCursor{channel.connection, channel.channel, *channel.cursor});
    }
    std::sort(result.begin(), result.end(), [](const ChannelCursor& a, const ChannelCursor& b) {
        return std::tie(a.connection, a.channel) < std::tie(b.connection, b.channel);
    });
    return result;
}

Result<void> MemoryStore::put_connection_state(const std::string& connection, const std::string& key,
                                               const std::string& value) {
    std::lock_guard lock(mutex_);
    connection_state_.insert_or_assign(pair_key(connection, key), value);
    return {};
}

Result<std::optional<std::string>> MemoryStore::connection_state(const std::string& connection,
                                                                 const std::string& key) {
    std::lock_guard lock(mutex_);
    auto it = connection_state_.find(pair_key(connection, key));
    if (it == connection_state_.end()) return std::optional<std::string>{};
    return std::optional<std::string>{it->second};
}

Result<std::optional<std::string>> MemoryStore::get_value(const std::string& space, const std::string& key) {
    std::lock_guard lock(mutex_);
    auto it = values_.find(pair_key(space, key));
    if (it == values_.end()) return std::optional<std::string>{};
    return std::optional<std::string>{it->second};
}

Result<void> MemoryStore::put_values(std::span<const KeyValueWrite> writes) {
    std::lock_guard lock(mutex_);
    for (const KeyValueWrite& write : writes) apply_write(write);
    return {};
}

Result<void> MemoryStore::outbox_add(std::span<const OutboxEntry> entries) {
    std::lock_guard lock(mutex_);
    for (const OutboxEntry& entry : entries) add_outbox_entry(entry);
    return {};
}

Result<void> MemoryStore::outbox_update(std::span<const OutboxEntry> entries) {
    std::lock_guard lock(mutex_);
    const OutboxEntry* missing = nullptr;
    for (const OutboxEntry& entry : entries) {
        auto it = outbox_.find(pair_key(entry.plan_id, entry.recipient.to_string()));
        if (it == outbox_.end()) {
            if (missing == nullptr) missing = &entry;
            continue;
        }
        OutboxEntry& stored = it->second.entry;
        stored.state = entry.state;
        stored.sent_message_id = entry.sent_message_id;
        stored.attempts = entry.attempts;
        stored.error = entry.error;
    }
    if (missing != nullptr) {
        return fail("outbox_entry_not_found", "no outbox entry for plan '" + missing->plan_id + "' and recipient '" +
                                                  missing->recipient.to_string() + "'; add it with outbox_add first");
    }
    return {};
}

Result<std::vector<OutboxEntry>> MemoryStore::outbox_pending() {
    std::lock_guard lock(mutex_);
    std::vector<const StoredEntry*> found;
    for (const auto& [key, stored] : outbox_) {
        if (stored.entry.state == OutboxState::pending) found.push_back(&stored);
    }
    std::sort(found.begin(), found.end(), [](const StoredEntry* a, const StoredEntry* b) {
        return std::tie(a->entry.created_ms, a->sequence) < std::tie(b->entry.created_ms, b->sequence);
    });
    std::vector<OutboxEntry> result;
    result.reserve(found.size());
    for (const StoredEntry* stored : found) result.push_back(stored->entry);
    return result;
}

Result<std::vector<OutboxEntry>> MemoryStore::outbox_plan(const std::string& plan_id) {
    std::lock_guard lock(mutex_);
    std::vector<const StoredEntry*> found;
    for (const auto& [key, stored] : outbox_) {
        if (stored.entry.plan_id == plan_id) found.push_back(&stored);
    }
    std::sort(found.begin(), found.end(),
              [](const StoredEntry* a, const StoredEntry* b) { return a->sequence < b->sequence; });
    std::vector<OutboxEntry> result;
    result.reserve(found.size());
    for (const StoredEntry* stored : found) result.push_back(stored->entry);
    return result;
}

Result<std::vector<Message>> MemoryStore::messages(const std::string& connection, const std::string& channel,
                                                   std::int64_t from_ms, std::int64_t to_ms, std::size_t limit) {
    std::lock_guard lock(mutex_);
    std::vector<Message> result;
    const Channel* found = find_channel(connection, channel);
    if (found == nullptr) return result;
    const auto& log = found->log;
    auto first = std::lower_bound(log.begin(), log.end(), from_ms,
                                  [](const Message& m, std::int64_t ts) { return m.timestamp_ms < ts; });
    for (auto it = first; it != log.end() && it->timestamp_ms < to_ms && result.size() < limit; ++it) {
        result.push_back(*it);
    }
    return result;
}

Result<std::size_t> MemoryStore::prune(std::int64_t before_ms) {
    std::lock_guard lock(mutex_);
    std::size_t removed = 0;
    for (auto& [key, channel] : channels_) {
        removed += boost::unordered::erase_if(channel.seen, [&](const auto& seen) { return seen.second < before_ms; });
        auto& log = channel.log;
        auto keep = std::lower_bound(log.begin(), log.end(), before_ms,
                                     [](const Message& m, std::int64_t ts) { return m.timestamp_ms < ts; });
        log.erase(log.begin(), keep);
    }
    return removed;
}

}  // namespace switchboard::stores
