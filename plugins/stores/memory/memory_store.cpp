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

MemoryStore::PlanKey::PlanKey(std::string_view plan_id) noexcept
    : id(plan_id), hash(static_cast<std::uint32_t>(std::hash<std::string_view>{}(plan_id))) {}  // the table mixes it

MemoryStore::PlanOutbox* MemoryStore::find_plan(const PlanKey& key) {
    // The filter's word is mostly out of cache: its load starts now and overlaps the look-up in recent_.
    if (!filter_.empty()) __builtin_prefetch(&filter_[filter_word(key.hash)]);
    if (auto it = recent_.find(key); it != recent_.end()) return &plan_at(it->number);
    if (!may_hold(key.hash)) return nullptr;
    auto it = plan_numbers_.find(key);
    return it == plan_numbers_.end() ? nullptr : &plan_at(it->number);
}

namespace {

// Three bits of a 64-bit word, from bits of the hash that do not choose the word.
std::uint64_t filter_bits(std::uint32_t hash) noexcept {
    const std::uint32_t mixed = hash * 0x9E3779B1U;
    return (std::uint64_t{1} << (mixed & 63)) | (std::uint64_t{1} << ((mixed >> 6) & 63)) |
           (std::uint64_t{1} << ((mixed >> 12) & 63));
}

}  // namespace

std::size_t MemoryStore::filter_word(std::uint32_t hash) const noexcept {
    return static_cast<std::size_t>((std::uint64_t{hash} * 0x9E3779B97F4A7C15ULL) >> filter_shift_);
}

bool MemoryStore::may_hold(std::uint32_t hash) const noexcept {
    if (filter_.empty()) return false;  // plan_numbers_ is empty until the first merge
    const std::uint64_t bits = filter_bits(hash);
    return (filter_[filter_word(hash)] & bits) == bits;
}

void MemoryStore::add_to_filter(std::uint32_t hash) noexcept { filter_[filter_word(hash)] |= filter_bits(hash); }

void MemoryStore::rebuild_filter(std::size_t plans) {
    const std::size_t words = std::bit_ceil(std::max<std::size_t>(plans / kPlansPerFilterWord, 64));
    filter_.assign(words, 0);
    filter_shift_ = 64 - std::countr_zero(words);
    for (const PlanSlot slot : plan_numbers_) add_to_filter(slot.hash);
}

void MemoryStore::merge_recent() {
    const std::size_t total = plan_numbers_.size() + recent_.size();
    if (total > filter_.size() * kPlansPerFilterWord) rebuild_filter(total * 2);
    plan_numbers_.reserve(total);
    for (const PlanSlot slot : recent_) {
        plan_numbers_.insert(slot);
        add_to_filter(slot.hash);
    }
    recent_.clear();
}

MemoryStore::PlanOutbox& MemoryStore::plan_for(std::string_view plan_id, std::size_t bytes) {
    const PlanKey key(plan_id);
    if (PlanOutbox* found = find_plan(key)) return *found;
    if (recent_.size() >= kRecentPlans) merge_recent();
    // A number prune() freed, else the next one, its chunk made first: a failed allocation leaves no number without
    // a plan.
    const bool reuse = !free_plans_.empty();
    const std::uint32_t number = reuse ? free_plans_.back() : plan_count_;
    if (!reuse && (plan_count_ >> kPlanChunkBits) == plan_chunks_.size()) {
        plan_chunks_.push_back(std::make_unique<PlanOutbox[]>(std::size_t{1} << kPlanChunkBits));
    }
    PlanOutbox& plan = plan_at(number);  // empty: never used, or emptied by prune()
    try {
        plan.bytes.reserve(plan_id.size() + bytes);
        plan.bytes.insert(plan.bytes.end(), plan_id.begin(), plan_id.end());
        plan.id_size = static_cast<std::uint32_t>(plan_id.size());
        recent_.insert(PlanSlot{number, key.hash});
    } catch (...) {
        plan = PlanOutbox{};  // a failed allocation leaves the number free
        throw;
    }
    if (reuse) {
        free_plans_.pop_back();
    } else {
        ++plan_count_;
    }
    return plan;
}

std::uint64_t MemoryStore::Recipient::hash() const noexcept {
    std::uint64_t h = detail::hash_add((static_cast<std::uint64_t>(connection) << 1) | (is_user ? 1U : 0U), target);
    h ^= h >> 33;  // murmur3's finaliser
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

std::optional<MemoryStore::Recipient> MemoryStore::find_recipient(const Address& address) const {
    // A handful of connections: a scan beats hashing the name.
    for (std::size_t c = 0; c < connections_.size(); ++c) {
        if (connections_[c] == address.connection) {
            return Recipient{static_cast<std::uint16_t>(c), address.is_user, address.target};
        }
    }
    return std::nullopt;  // no entry was ever added for this connection
}

MemoryStore::Recipient MemoryStore::recipient_for(const Address& address) {
    if (auto found = find_recipient(address)) return *found;
    connections_.push_back(address.connection);
    return Recipient{static_cast<std::uint16_t>(connections_.size() - 1), address.is_user, address.target};
}

bool MemoryStore::matches(const PlanOutbox& plan, const StoredEntry& stored, const Recipient& recipient) noexcept {
    return stored.connection == recipient.connection && stored.is_user == recipient.is_user &&
           piece(plan, stored.target) == recipient.target;
}

std::string_view MemoryStore::piece(const PlanOutbox& plan, Piece piece) noexcept {
    return std::string_view(plan.bytes.data() + piece.offset, piece.size);
}

std::string_view MemoryStore::plan_id(const PlanOutbox& plan) noexcept {
    return std::string_view(plan.bytes.data(), plan.id_size);
}

std::span<MemoryStore::StoredEntry> MemoryStore::entries(PlanOutbox& plan) noexcept {
    if (plan.has_entry) return std::span(&plan.entry, 1);
    if (plan.more) return plan.more->entries;
    return {};
}

std::span<const MemoryStore::StoredEntry> MemoryStore::entries(const PlanOutbox& plan) noexcept {
    if (plan.has_entry) return std::span(&plan.entry, 1);
    if (plan.more) return plan.more->entries;
    return {};
}

std::size_t MemoryStore::message_count(const PlanOutbox& plan) noexcept {
    if (plan.has_message) return 1;
    return plan.more ? plan.more->messages.size() : 0;
}

MemoryStore::PlanMessage MemoryStore::message_at(const PlanOutbox& plan, std::size_t m) noexcept {
    if (plan.has_message) return PlanMessage{plan.text, plan.reply_to, plan.has_reply_to};
    return plan.more->messages[m];
}

MemoryStore::PlanMore& MemoryStore::more(PlanOutbox& plan) {
    if (!plan.more) plan.more = std::make_unique<PlanMore>();
    return *plan.more;
}

void MemoryStore::reserve_entries(PlanOutbox& plan, std::size_t adding) {
    const std::size_t total = entries(plan).size() + adding;
    if (total <= 1) return;
    PlanMore& extra = more(plan);
    // Exactly what a new plan needs; a plan added to again and again grows geometrically.
    if (extra.entries.capacity() < total) extra.entries.reserve(std::max(total, extra.entries.capacity() * 2));
    if (plan.has_entry) {
        extra.entries.push_back(std::move(plan.entry));
        plan.entry = StoredEntry{};
        plan.has_entry = false;
    }
}

MemoryStore::StoredEntry& MemoryStore::new_entry(PlanOutbox& plan) {
    if (plan.more && plan.more->entries.capacity() > 0) return plan.more->entries.emplace_back();
    plan.has_entry = true;
    return plan.entry;
}

void MemoryStore::reserve_bytes(PlanOutbox& plan, std::size_t adding) {
    const std::size_t total = plan.bytes.size() + adding;
    // A plan added to again and again grows geometrically (reserve() alone would make it exactly as large).
    if (plan.bytes.capacity() < total) plan.bytes.reserve(std::max<std::size_t>(total, plan.bytes.capacity() * 2));
}

MemoryStore::Piece MemoryStore::append_piece(PlanOutbox& plan, std::string_view text) {
    const Piece added{static_cast<std::uint32_t>(plan.bytes.size()), static_cast<std::uint32_t>(text.size())};
    plan.bytes.insert(plan.bytes.end(), text.begin(), text.end());
    return added;
}

void MemoryStore::set_detail(StoredEntry& stored, std::string_view sent_message_id, std::string_view error) {
    if (sent_message_id.empty() && error.empty()) {
        stored.detail.reset();
        return;
    }
    if (!stored.detail) stored.detail = std::make_unique<EntryDetail>();
    stored.detail->sent_message_id = sent_message_id;
    stored.detail->error = error;
}

MemoryStore::StoredEntry* MemoryStore::find_entry(PlanOutbox& plan, const Recipient& recipient) {
    // A fan-out's completions come mostly in plan order: the entry after the last one found is tried first.
    const std::span<StoredEntry> stored_entries = entries(plan);
    if (stored_entries.size() <= 1) {  // inline, or none
        return !stored_entries.empty() && matches(plan, stored_entries[0], recipient) ? stored_entries.data() : nullptr;
    }
    std::uint32_t& next_find = plan.more->next_find;
    if (next_find < stored_entries.size() && matches(plan, stored_entries[next_find], recipient)) {
        return &stored_entries[next_find++];
    }
    StoredEntry* found = nullptr;
    if (stored_entries.size() <= kLinearEntries) {
        for (StoredEntry& stored : stored_entries) {
            if (matches(plan, stored, recipient)) {
                found = &stored;
                break;
            }
        }
    } else {
        update_index(plan);  // more than kLinearEntries entries: they are in `more`
        const std::vector<std::uint32_t>& index = plan.more->index;
        const std::size_t mask = index.size() - 1;
        for (std::size_t i = recipient.hash() & mask;; i = (i + 1) & mask) {
            const std::uint32_t slot = index[i];
            if (slot == 0) break;
            if (matches(plan, stored_entries[slot - 1], recipient)) {
                found = &stored_entries[slot - 1];
                break;
            }
        }
    }
    if (found != nullptr) next_find = static_cast<std::uint32_t>(found - stored_entries.data()) + 1;
    return found;
}

// Brings the plan's index up to date with its entries. It is built at the first lookup that needs it, not as entries
// are added: most plans are only appended to once, then updated in order (which needs no index).
void MemoryStore::update_index(PlanOutbox& plan) {
    PlanMore& extra = more(plan);
    const std::size_t count = extra.entries.size();
    if (extra.index.size() < count * 2) {
        extra.index.assign(std::bit_ceil(std::max<std::size_t>(count, extra.entries.capacity()) * 2), 0);
        extra.indexed = 0;
    }
    const std::size_t mask = extra.index.size() - 1;
    for (; extra.indexed < count; ++extra.indexed) {
        const StoredEntry& stored = extra.entries[extra.indexed];
        const Recipient recipient{stored.connection, stored.is_user, piece(plan, stored.target)};
        std::size_t i = recipient.hash() & mask;
        while (extra.index[i] != 0) i = (i + 1) & mask;
        extra.index[i] = extra.indexed + 1;
    }
}

OutboxEntry MemoryStore::to_entry(const PlanOutbox& plan, const StoredEntry& stored) const {
    const PlanMessage message = message_at(plan, stored.message);
    OutboxEntry entry;
    entry.plan_id = plan_id(plan);
    entry.recipient = Address{connections_[stored.connection], std::string(piece(plan, stored.target)), stored.is_user};
    entry.text = piece(plan, message.text);
    if (message.has_reply_to) entry.reply_to.emplace(piece(plan, message.reply_to));
    entry.state = stored.state;
    if (stored.detail) entry.sent_message_id = stored.detail->sent_message_id;
    entry.attempts = stored.attempts;
    if (stored.detail) entry.error = stored.detail->error;
    entry.created_ms = stored.created_ms;
    return entry;
}

// The index of the plan's message with @p text and @p reply_to, added if it has none. Entries of one plan normally
// share one text: it is looked for from the last one added.
std::uint32_t MemoryStore::message_for(PlanOutbox& plan, std::string_view text,
                                       std::optional<std::string_view> reply_to) {
    const std::size_t count = message_count(plan);
    for (auto m = static_cast<std::uint32_t>(count); m-- > 0;) {
        const PlanMessage stored = message_at(plan, m);
        if (piece(plan, stored.text) == text && stored.has_reply_to == reply_to.has_value() &&
            (!reply_to || piece(plan, stored.reply_to) == *reply_to)) {
            return m;
        }
    }
    PlanMessage added;
    added.text = append_piece(plan, text);
    if (reply_to) {
        added.reply_to = append_piece(plan, *reply_to);
        added.has_reply_to = true;
    }
    if (count == 0) {
        plan.text = added.text;
        plan.reply_to = added.reply_to;
        plan.has_reply_to = added.has_reply_to;
        plan.has_message = true;
        return 0;
    }
    PlanMore& extra = more(plan);
    if (plan.has_message) {
        extra.messages.push_back(message_at(plan, 0));
        plan.has_message = false;
    }
    extra.messages.push_back(added);
    return static_cast<std::uint32_t>(extra.messages.size() - 1);
}

// Adds an entry for @p address to @p plan unless @p check finds one there already: that one is kept as it is.
// Without @p check the caller knows the plan has none. The caller holds mutex_.
void MemoryStore::add_entry(PlanOutbox& plan, bool check, const Address& address, std::uint32_t message,
                            OutboxState state, std::int32_t attempts, std::string_view sent_message_id,
                            std::string_view error, std::int64_t created_ms) {
    const Recipient recipient = recipient_for(address);
    if (check && find_entry(plan, recipient) != nullptr) return;
    StoredEntry& stored = new_entry(plan);
    stored.target = append_piece(plan, address.target);
    stored.connection = recipient.connection;
    stored.is_user = address.is_user;
    stored.message = message;
    stored.state = state;
    stored.attempts = attempts;
    set_detail(stored, sent_message_id, error);
    stored.created_ms = created_ms;
    stored.sequence = outbox_sequence_++;
}

// The caller holds mutex_. Entries of one plan come in runs (a fan-out is one long run): the plan is looked up
// and its storage reserved once per run.
void MemoryStore::add_outbox_entries(std::span<const OutboxEntry> entries) {
    std::size_t i = 0;
    while (i < entries.size()) {
        const std::string& plan_id = entries[i].plan_id;
        std::size_t end = i + 1;
        while (end < entries.size() && entries[end].plan_id == plan_id) ++end;
        std::size_t bytes = 0;  // room for every text and target, when the plan is new
        for (std::size_t k = i; k < end; ++k) {
            bytes += entries[k].text.size() + entries[k].recipient.target.size() +
                     (entries[k].reply_to ? entries[k].reply_to->size() : 0);
        }
        PlanOutbox& plan = plan_for(plan_id, bytes);
        reserve_bytes(plan, bytes);  // a new plan has its room already
        reserve_entries(plan, end - i);
        for (; i < end; ++i) {
            const OutboxEntry& entry = entries[i];
            std::optional<std::string_view> reply_to;
            if (entry.reply_to) reply_to = *entry.reply_to;
            add_entry(plan, true, entry.recipient, message_for(plan, entry.text, reply_to), entry.state, entry.attempts,
                      entry.sent_message_id, entry.error, entry.created_ms);
        }
    }
}

// Records the new state of the entry of @p plan for @p address; false if there is none. The caller holds mutex_.
bool MemoryStore::update_entry(PlanOutbox* plan, const Address& address, OutboxState state, std::int32_t attempts,
                               std::string_view sent_message_id, std::string_view error) {
    if (plan == nullptr) return false;
    const auto recipient = find_recipient(address);
    StoredEntry* stored = recipient ? find_entry(*plan, *recipient) : nullptr;
    if (stored == nullptr) return false;
    stored->state = state;
    stored->attempts = attempts;
    set_detail(*stored, sent_message_id, error);
    return true;
}

Result<bool> MemoryStore::is_processed(const MessageKey& key) {
    std::lock_guard lock(mutex_);
    const Channel* channel = find_channel(key.connection, key.channel);
    return channel != nullptr && channel->seen.contains(key.message_id);
}

Result<std::vector<bool>> MemoryStore::are_processed(std::span<const Message> messages) {
    std::lock_guard lock(mutex_);
    std::vector<bool> seen(messages.size());
    const Channel* channel = nullptr;
    for (std::size_t i = 0; i < messages.size(); ++i) {
        const Message& message = messages[i];
        // Consecutive messages are mostly of one channel: look it up only when it changes.
        if (i == 0 || message.channel != messages[i - 1].channel || message.connection != messages[i - 1].connection) {
            channel = find_channel(message.connection, message.channel);
        }
        seen[i] = channel != nullptr && channel->seen.contains(message.id);
    }
    return seen;
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

Result<std::vector<OutboxEntry>> MemoryStore::outbox_add_plan(const OutboxPlanAdd& add) {
    std::lock_guard lock(mutex_);
    // Room for the id, text, reply_to and every target at once: one allocation for a plan of one recipient.
    std::size_t bytes = add.text.size() + (add.reply_to ? add.reply_to->size() : 0);
    for (const OutboxRecipient& recipient : add.recipients) bytes += recipient.address->target.size();
    PlanOutbox& plan = plan_for(add.plan_id, bytes);
    std::vector<OutboxEntry> existing;
    const std::span<const StoredEntry> earlier = entries(plan);
    if (!earlier.empty()) {
        existing.reserve(earlier.size());
        for (const StoredEntry& stored : earlier) existing.push_back(to_entry(plan, stored));
        reserve_bytes(plan, bytes);
    }
    // The recipients of one call are distinct (OutboxPlanAdd): only those of an earlier call are looked for.
    const bool check = !earlier.empty();
    reserve_entries(plan, add.recipients.size());
    const std::uint32_t message = message_for(plan, add.text, add.reply_to);
    for (const OutboxRecipient& recipient : add.recipients) {
        add_entry(plan, check, *recipient.address, message, recipient.state, 0, {}, recipient.error, add.created_ms);
    }
    return existing;
}

Result<void> MemoryStore::outbox_update(std::span<const OutboxEntry> entries) {
    std::lock_guard lock(mutex_);
    const OutboxEntry* missing = nullptr;
    PlanOutbox* plan = nullptr;
    const std::string* plan_id = nullptr;
    for (const OutboxEntry& entry : entries) {
        if (plan_id == nullptr || *plan_id != entry.plan_id) {
            plan = find_plan(PlanKey(entry.plan_id));
            plan_id = &entry.plan_id;
        }
        if (!update_entry(plan, entry.recipient, entry.state, entry.attempts, entry.sent_message_id, entry.error) &&
            missing == nullptr) {
            missing = &entry;
        }
    }
    if (missing != nullptr) return not_found(missing->plan_id, missing->recipient);
    return {};
}

Result<void> MemoryStore::outbox_update_plans(std::span<const OutboxPlanUpdate> plans) {
    std::lock_guard lock(mutex_);
    std::optional<Result<void>> missing;
    for (const OutboxPlanUpdate& updates : plans) {
        PlanOutbox* plan = find_plan(PlanKey(updates.plan_id));
        for (const OutboxRecipientUpdate& update : updates.recipients) {
            if (!update_entry(plan, *update.address, update.state, update.attempts, update.sent_message_id,
                              update.error) &&
                !missing) {
                missing = not_found(updates.plan_id, *update.address);
            }
        }
    }
    if (missing) return *missing;
    return {};
}

Result<void> MemoryStore::not_found(std::string_view plan_id, const Address& recipient) {
    return fail("outbox_entry_not_found", "no outbox entry for plan '" + std::string(plan_id) + "' and recipient '" +
                                              recipient.to_string() + "'; add it with outbox_add first");
}

Result<std::vector<OutboxEntry>> MemoryStore::outbox_pending() {
    std::lock_guard lock(mutex_);
    struct Found {
        const PlanOutbox* plan;
        const StoredEntry* stored;
    };
    std::vector<Found> found;
    for (const PlanTable* table : {&recent_, &plan_numbers_}) {
        for (const PlanSlot slot : *table) {
            const PlanOutbox& plan = plan_at(slot.number);
            for (const StoredEntry& stored : entries(plan)) {
                if (stored.state == OutboxState::pending) found.push_back(Found{&plan, &stored});
            }
        }
    }
    std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) {
        return std::tie(a.stored->created_ms, a.stored->sequence) < std::tie(b.stored->created_ms, b.stored->sequence);
    });
    std::vector<OutboxEntry> result;
    result.reserve(found.size());
    for (const Found& f : found) result.push_back(to_entry(*f.plan, *f.stored));
    return result;
}

Result<std::vector<OutboxEntry>> MemoryStore::outbox_plan(const std::string& plan_id) {
    std::lock_guard lock(mutex_);
    std::vector<OutboxEntry> result;
    const PlanOutbox* plan = find_plan(PlanKey(plan_id));
    if (plan == nullptr) return result;
    const std::span<const StoredEntry> stored_entries = entries(*plan);
    result.reserve(stored_entries.size());
    for (const StoredEntry& stored : stored_entries) result.push_back(to_entry(*plan, stored));
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
    // Finished outbox entries (sent, failed, withdrawn) created before the bound; a plan left without entries goes,
    // and its number is used again.
    const auto finished = [&](const StoredEntry& stored) {
        return stored.state != OutboxState::pending && stored.created_ms < before_ms;
    };
    std::vector<std::uint32_t> gone;  // the plans left without entries
    const auto emptied = [&](const PlanSlot slot) {
        PlanOutbox& plan = plan_at(slot.number);
        const std::span<const StoredEntry> stored_entries = entries(plan);
        if (std::none_of(stored_entries.begin(), stored_entries.end(), finished)) return false;
        if (plan.has_entry) {
            plan.entry = StoredEntry{};
            plan.has_entry = false;
        } else {
            std::erase_if(plan.more->entries, finished);
            plan.more->index.clear();  // positions moved: built again by the first look-up that needs it
            plan.more->indexed = 0;
        }
        if (plan.more) plan.more->next_find = 0;
        if (!entries(plan).empty()) return false;
        gone.push_back(slot.number);
        return true;
    };
    boost::unordered::erase_if(recent_, emptied);
    if (boost::unordered::erase_if(plan_numbers_, emptied) > 0) rebuild_filter(plan_numbers_.size() * 2);
    // The plans go in the order they were made, not in the tables' (hash) order: their memory goes back to the
    // allocator in address order, and the numbers are taken again lowest first, so the plans that follow fill their
    // slots and that memory in order, as a new store does, not at random (a cache miss or two each: 944k instead of
    // 1,179k messages/s in routing_bench's private/memory/steady).
    std::sort(gone.begin(), gone.end());
    for (const std::uint32_t number : gone) plan_at(number) = PlanOutbox{};
    free_plans_.insert(free_plans_.end(), gone.begin(), gone.end());
    std::sort(free_plans_.begin(), free_plans_.end(), std::greater<>());  // back() is the lowest
    return removed;
}

}  // namespace switchboard::stores
