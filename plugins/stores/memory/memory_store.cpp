#include "memory_store.hpp"

#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>
#include <string_view>
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

MemoryStore::PlanOutbox* MemoryStore::find_plan(const std::string& plan_id) {
    auto it = plan_numbers_.find(plan_id);
    return it == plan_numbers_.end() ? nullptr : &plan_at(it->second);
}

MemoryStore::PlanOutbox& MemoryStore::plan_for(const std::string& plan_id) {
    auto [it, inserted] = plan_numbers_.try_emplace(plan_id, plan_count_);
    if (inserted) {
        if ((plan_count_ >> kPlanChunkBits) == plan_chunks_.size()) {
            plan_chunks_.push_back(std::make_unique<PlanOutbox[]>(std::size_t{1} << kPlanChunkBits));
        }
        ++plan_count_;
    }
    return plan_at(it->second);
}

MemoryStore::StoredEntry* MemoryStore::find_entry(PlanOutbox& plan, const Address& recipient) {
    if (plan.index.empty()) {
        for (StoredEntry& stored : plan.entries) {
            if (stored.recipient == recipient) return &stored;
        }
        return nullptr;
    }
    const std::uint32_t slot = *index_slot(plan, recipient);
    return slot == 0 ? nullptr : &plan.entries[slot - 1];
}

// Makes room for @p more entries: storage, and an index big enough for all of them (built once, not grown).
void MemoryStore::reserve_entries(PlanOutbox& plan, std::size_t more) {
    const std::size_t count = plan.entries.size() + more;
    plan.entries.reserve(count);
    if (count <= kLinearEntries || plan.index.size() >= count * 2) return;
    plan.index.assign(std::bit_ceil(count * 2), 0);
    const std::size_t mask = plan.index.size() - 1;
    for (std::uint32_t p = 0; p < plan.entries.size(); ++p) {
        std::size_t i = hash_address(plan.entries[p].recipient) & mask;
        while (plan.index[i] != 0) i = (i + 1) & mask;
        plan.index[i] = p + 1;
    }
}

// The index slot holding @p recipient's entry, or the empty slot where it would go. The plan has an index.
std::uint32_t* MemoryStore::index_slot(PlanOutbox& plan, const Address& recipient) {
    const std::size_t mask = plan.index.size() - 1;
    for (std::size_t i = hash_address(recipient) & mask;; i = (i + 1) & mask) {
        std::uint32_t& slot = plan.index[i];
        if (slot == 0 || plan.entries[slot - 1].recipient == recipient) return &slot;
    }
}

OutboxEntry MemoryStore::to_entry(const std::string& plan_id, const PlanOutbox& plan, const StoredEntry& stored) {
    const PlanMessage& message = plan.messages[stored.message];
    OutboxEntry entry;
    entry.plan_id = plan_id;
    entry.recipient = stored.recipient;
    entry.text = message.text;
    entry.reply_to = message.reply_to;
    entry.state = stored.state;
    entry.sent_message_id = stored.sent_message_id;
    entry.attempts = stored.attempts;
    entry.error = stored.error;
    entry.created_ms = stored.created_ms;
    return entry;
}

// The caller holds mutex_. Entries of one plan come in runs (a fan-out is one long run): the plan is looked up
// and its storage reserved once per run.
void MemoryStore::add_outbox_entries(std::span<const OutboxEntry> entries) {
    std::size_t i = 0;
    while (i < entries.size()) {
        const std::string& plan_id = entries[i].plan_id;
        std::size_t end = i + 1;
        while (end < entries.size() && entries[end].plan_id == plan_id) ++end;
        PlanOutbox& plan = plan_for(plan_id);
        reserve_entries(plan, end - i);
        for (; i < end; ++i) {
            const OutboxEntry& entry = entries[i];
            std::uint32_t* slot = nullptr;  // where the new entry goes in the index, if the plan has one
            if (plan.index.empty()) {
                if (find_entry(plan, entry.recipient) != nullptr) continue;  // kept as it is
            } else {
                slot = index_slot(plan, entry.recipient);
                if (*slot != 0) continue;
            }

            // Entries of one plan normally share one text: look for it from the last one added.
            auto message = static_cast<std::uint32_t>(plan.messages.size());
            for (std::uint32_t m = message; m-- > 0;) {
                if (plan.messages[m].text == entry.text && plan.messages[m].reply_to == entry.reply_to) {
                    message = m;
                    break;
                }
            }
            if (message == plan.messages.size()) {
                PlanMessage& added = plan.messages.emplace_back();
                added.text = entry.text;
                added.reply_to = entry.reply_to;
            }

            StoredEntry& stored = plan.entries.emplace_back();
            stored.recipient = entry.recipient;
            stored.message = message;
            stored.state = entry.state;
            stored.attempts = entry.attempts;
            if (!entry.sent_message_id.empty()) stored.sent_message_id = entry.sent_message_id;  // new: empty
            if (!entry.error.empty()) stored.error = entry.error;
            stored.created_ms = entry.created_ms;
            stored.sequence = outbox_sequence_++;
            if (slot != nullptr) *slot = static_cast<std::uint32_t>(plan.entries.size());
        }
    }
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
        add_outbox_entries(item.outbox);
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
    add_outbox_entries(entries);
    return {};
}

Result<void> MemoryStore::outbox_update(std::span<const OutboxEntry> entries) {
    std::lock_guard lock(mutex_);
    const OutboxEntry* missing = nullptr;
    PlanOutbox* plan = nullptr;
    const std::string* plan_id = nullptr;
    for (const OutboxEntry& entry : entries) {
        if (plan_id == nullptr || *plan_id != entry.plan_id) {
            plan = find_plan(entry.plan_id);
            plan_id = &entry.plan_id;
        }
        StoredEntry* stored = nullptr;
        if (plan != nullptr) {
            // A fan-out's completions come mostly in plan order: try the entry after the last one updated first.
            const std::uint32_t next = plan->next_update;
            if (next < plan->entries.size() && plan->entries[next].recipient == entry.recipient) {
                stored = &plan->entries[next];
            } else {
                stored = find_entry(*plan, entry.recipient);
            }
            if (stored != nullptr) plan->next_update = static_cast<std::uint32_t>(stored - plan->entries.data()) + 1;
        }
        if (stored == nullptr) {
            if (missing == nullptr) missing = &entry;
            continue;
        }
        stored->state = entry.state;
        stored->sent_message_id = entry.sent_message_id;
        stored->attempts = entry.attempts;
        stored->error = entry.error;
    }
    if (missing != nullptr) {
        return fail("outbox_entry_not_found", "no outbox entry for plan '" + missing->plan_id + "' and recipient '" +
                                                  missing->recipient.to_string() + "'; add it with outbox_add first");
    }
    return {};
}

Result<std::vector<OutboxEntry>> MemoryStore::outbox_pending() {
    std::lock_guard lock(mutex_);
    struct Found {
        const std::string* plan_id;
        const PlanOutbox* plan;
        const StoredEntry* stored;
    };
    std::vector<Found> found;
    for (const auto& [plan_id, number] : plan_numbers_) {
        const PlanOutbox& plan = plan_at(number);
        for (const StoredEntry& stored : plan.entries) {
            if (stored.state == OutboxState::pending) found.push_back(Found{&plan_id, &plan, &stored});
        }
    }
    std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
        return std::tie(a.stored->created_ms, a.stored->sequence) < std::tie(b.stored->created_ms, b.stored->sequence);
    });
    std::vector<OutboxEntry> result;
    result.reserve(found.size());
    for (const Found& f : found) result.push_back(to_entry(*f.plan_id, *f.plan, *f.stored));
    return result;
}

Result<std::vector<OutboxEntry>> MemoryStore::outbox_plan(const std::string& plan_id) {
    std::lock_guard lock(mutex_);
    std::vector<OutboxEntry> result;
    const PlanOutbox* plan = find_plan(plan_id);
    if (plan == nullptr) return result;
    result.reserve(plan->entries.size());
    for (const StoredEntry& stored : plan->entries) result.push_back(to_entry(plan_id, *plan, stored));
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
