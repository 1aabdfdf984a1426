#pragma once
// The `memory` store: every Store call served from standard containers behind one mutex. Nothing survives the
// process; it exists for tests and benchmarks, and as the reference for the semantics the other stores share.

#include <boost/container/vector.hpp>
#include <boost/unordered/unordered_flat_map.hpp>
#include <boost/unordered/unordered_flat_set.hpp>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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
    [[nodiscard]] Result<std::vector<OutboxEntry>> outbox_add_plan(const OutboxPlanAdd& plan) override;
    [[nodiscard]] Result<void> outbox_update(std::span<const OutboxEntry> entries) override;
    [[nodiscard]] Result<void> outbox_update_plans(std::span<const OutboxPlanUpdate> plans) override;
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
    // The outbox is kept per plan, so a plan's entries are found without looking at any other plan's. A plan keeps
    // its entries in the order they were added, each text (with its reply_to) once, and, once it has more than
    // kLinearEntries entries, an index by recipient. Plans live in fixed chunks (they never move; a table by plan id
    // gives their number), so a plan is one table slot of eight bytes plus its own storage. A plan's id, texts,
    // reply_tos and targets are pieces of one string (`bytes`), so a plan of one reply costs one allocation for all of
    // them; an entry's recipient is its connection's number (connections_), is_user, and its target's piece. The
    // platform's message id and the last error are rare (most platforms here give no id, most sends do not fail): an
    // entry holds them apart, allocated only when one is set, which keeps an entry at 48 bytes for a 100,000-member
    // fan-out.
    struct Piece {
        std::uint32_t offset = 0;  // into PlanOutbox::bytes
        std::uint32_t size = 0;
    };
    struct EntryDetail {
        std::string sent_message_id;
        std::string error;
    };
    struct StoredEntry {
        Piece target;
        std::uint16_t connection = 0;  // index into connections_
        bool is_user = false;
        OutboxState state = OutboxState::pending;
        std::uint32_t message = 0;  // index into PlanOutbox::messages
        std::int32_t attempts = 0;
        std::int64_t created_ms = 0;
        std::uint64_t sequence = 0;           // insertion order over the whole outbox, the tie-break for "oldest first"
        std::unique_ptr<EntryDetail> detail;  // null while sent_message_id and error are both empty
    };
    struct PlanMessage {
        Piece text;
        Piece reply_to;
        bool has_reply_to = false;
    };
    // What a plan holds beyond one message and one entry (a fan-out, a plan added to again), allocated only then:
    // every message once there are two, every entry once there are two (the plan's inline one moved here), and,
    // once the plan has more than kLinearEntries entries, an index by recipient: open addressing over entry positions
    // (position + 1; 0 is empty), a power of two at most half full, covering entries[0, indexed), brought up to date
    // by the first lookup that needs it (update_index).
    struct PlanMore {
        std::vector<PlanMessage> messages;
        std::vector<StoredEntry> entries;
        std::vector<std::uint32_t> index;
        std::uint32_t indexed = 0;
        std::uint32_t next_find = 0;  // the entry after the one last found
    };
    // A plan's bytes: a vector whose size and capacity are 32 bits (Pieces are), 16 bytes where a std::string takes 32.
    using Bytes =
        boost::container::vector<char, void,
                                 boost::container::vector_options_t<boost::container::stored_size<std::uint32_t>>>;
    // Most plans are one reply to one recipient: their message and entry live inline, and the plan takes 96 bytes
    // here plus its bytes (every byte a store keeps per message is memory the process touches for the first time).
    // message_count(), message_at() and entries() give a plan's messages and entries wherever they are.
    struct PlanOutbox {
        Bytes bytes;                // the id, then texts, reply_tos and targets, one after another
        std::uint32_t id_size = 0;  // the plan id is bytes[0, id_size)
        Piece text;                 // the only message (while has_message): its text,
        Piece reply_to;             // its reply_to,
        bool has_reply_to = false;  // if it has one
        bool has_message = false;   // false once `more` holds the messages (or there is none)
        bool has_entry = false;     // false once `more` holds the entries (or there is none)
        StoredEntry entry;          // the only entry, while has_entry
        std::unique_ptr<PlanMore> more;
    };
    static_assert(sizeof(PlanOutbox) <= 96, "a plan's slot is touched once per message: keep it from growing");
    // An address as entries hold it, for looking one up.
    struct Recipient {
        std::uint16_t connection = 0;
        bool is_user = false;
        std::string_view target;
        [[nodiscard]] std::uint64_t hash() const noexcept;
    };
    // The plans by id: each slot holds a plan's number and its id's hash, 8 bytes, so that the table of a million
    // plans stays within the last-level cache (a slot holding the id as a std::string took 40 bytes, and an
    // allocation for an id of over 15 bytes); the id itself is in the plan's bytes.
    struct PlanSlot {
        std::uint32_t number = 0;
        std::uint32_t hash = 0;
    };
    // What a plan is looked up by: its id with the id's hash, computed once for a look-up and the insert after it.
    struct PlanKey {
        explicit PlanKey(std::string_view plan_id) noexcept;
        std::string_view id;
        std::uint32_t hash;
    };
    struct PlanHash {
        using is_transparent = void;
        std::size_t operator()(PlanSlot slot) const noexcept { return slot.hash; }
        std::size_t operator()(const PlanKey& key) const noexcept { return key.hash; }
    };
    struct PlanEqual {
        using is_transparent = void;
        const MemoryStore* store = nullptr;
        bool operator()(PlanSlot a, PlanSlot b) const noexcept { return a.number == b.number; }
        // The plan's bytes are read only when the hashes agree.
        bool operator()(const PlanKey& key, PlanSlot slot) const noexcept {
            if (key.hash != slot.hash) return false;
            const PlanOutbox& plan = store->plan_at(slot.number);
            return plan_id(plan) == key.id;
        }
        bool operator()(PlanSlot slot, const PlanKey& key) const noexcept { return (*this)(key, slot); }
    };
    static constexpr std::size_t kLinearEntries = 8;
    static constexpr std::uint32_t kPlanChunkBits = 8;  // plans per chunk: 256
    static constexpr std::size_t kRecentPlans = 4096;   // recent_ at most: 64 KB of slots
    static constexpr std::size_t kPlansPerFilterWord = 8;  // 8 bits per plan: ~3 % false positives

    // The caller holds mutex_. The first two use key_ as scratch space, so the key is built without allocating.
    Channel* find_channel(const std::string& connection, const std::string& channel);
    Channel& channel_for(const std::string& connection, const std::string& channel);
    void apply_write(const KeyValueWrite& write);
    void add_outbox_entries(std::span<const OutboxEntry> entries);
    static std::uint32_t message_for(PlanOutbox& plan, std::string_view text, std::optional<std::string_view> reply_to);
    void add_entry(PlanOutbox& plan, bool check, const Address& recipient, std::uint32_t message, OutboxState state,
                   std::int32_t attempts, std::string_view sent_message_id, std::string_view error,
                   std::int64_t created_ms);
    const std::string& pair_key(const std::string& first, const std::string& second);
    PlanOutbox& plan_at(std::uint32_t number) {
        return plan_chunks_[number >> kPlanChunkBits][number & ((1U << kPlanChunkBits) - 1)];
    }
    const PlanOutbox& plan_at(std::uint32_t number) const {
        return plan_chunks_[number >> kPlanChunkBits][number & ((1U << kPlanChunkBits) - 1)];
    }
    PlanOutbox* find_plan(const PlanKey& key);
    [[nodiscard]] bool may_hold(std::uint32_t hash) const noexcept;  // false: the hash is in no slot of plan_numbers_
    [[nodiscard]] std::size_t filter_word(std::uint32_t hash) const noexcept;
    void add_to_filter(std::uint32_t hash) noexcept;
    void rebuild_filter(std::size_t plans);  // sized for @p plans, from plan_numbers_
    void merge_recent();
    // The plan @p plan_id, made (with room for @p bytes more in its bytes) if there is none.
    PlanOutbox& plan_for(std::string_view plan_id, std::size_t bytes);
    static StoredEntry* find_entry(PlanOutbox& plan, const Recipient& recipient);
    static void update_index(PlanOutbox& plan);
    static bool matches(const PlanOutbox& plan, const StoredEntry& stored, const Recipient& recipient) noexcept;
    static std::string_view piece(const PlanOutbox& plan, Piece piece) noexcept;
    static std::string_view plan_id(const PlanOutbox& plan) noexcept;
    static std::span<StoredEntry> entries(PlanOutbox& plan) noexcept;
    static std::span<const StoredEntry> entries(const PlanOutbox& plan) noexcept;
    static std::size_t message_count(const PlanOutbox& plan) noexcept;
    static PlanMessage message_at(const PlanOutbox& plan, std::size_t m) noexcept;
    static PlanMore& more(PlanOutbox& plan);
    // Room for @p adding more entries; a plan that will hold two or more keeps them all in `more`.
    static void reserve_entries(PlanOutbox& plan, std::size_t adding);
    // A new entry, in the room reserve_entries() made for it.
    static StoredEntry& new_entry(PlanOutbox& plan);
    // Room for @p adding more bytes in a plan that has some.
    static void reserve_bytes(PlanOutbox& plan, std::size_t adding);
    static Piece append_piece(PlanOutbox& plan, std::string_view text);
    static void set_detail(StoredEntry& stored, std::string_view sent_message_id, std::string_view error);
    std::optional<Recipient> find_recipient(const Address& address) const;
    Recipient recipient_for(const Address& address);
    bool update_entry(PlanOutbox* plan, const Address& address, OutboxState state, std::int32_t attempts,
                      std::string_view sent_message_id, std::string_view error);
    static Result<void> not_found(std::string_view plan_id, const Address& recipient);
    OutboxEntry to_entry(const PlanOutbox& plan, const StoredEntry& stored) const;

    std::mutex mutex_;
    std::string key_;
    std::unordered_map<std::string, Channel> channels_;    // by pair_key(connection, channel); nodes stay put
    FlatMap<std::string> connection_state_;                // by pair_key(connection, key)
    FlatMap<std::string> values_;                          // by pair_key(space, key)
    // The plans by id (PlanSlot), in two tables. A new plan goes to recent_, which stays small enough for the
    // processor's caches; every kRecentPlans plans it is merged into plan_numbers_, whose slots for a million plans
    // (8 MB) are mostly out of cache. filter_ (a Bloom filter over plan_numbers_' hashes, about a byte per plan) tells
    // when an id cannot be in plan_numbers_, so looking up a new plan id, the common case, reads recent_ and one
    // word of filter_ instead of missing the cache in plan_numbers_; and a merge inserts its plans together, their
    // cache misses overlapping, instead of one miss per message.
    using PlanTable = boost::unordered_flat_set<PlanSlot, PlanHash, PlanEqual>;
    PlanTable recent_{0, PlanHash{}, PlanEqual{this}};
    PlanTable plan_numbers_{0, PlanHash{}, PlanEqual{this}};
    std::vector<std::uint64_t> filter_;  // a power of two of words; each hash sets three bits of one word
    int filter_shift_ = 64;              // 64 - log2(filter_.size()): a hash's word is its mix's top bits
    std::vector<std::unique_ptr<PlanOutbox[]>> plan_chunks_;
    std::uint32_t plan_count_ = 0;
    std::vector<std::uint32_t> free_plans_;  // numbers of plans prune() emptied, taken again first, lowest first
    std::uint64_t outbox_sequence_ = 0;
    std::vector<std::string> connections_;  // the connection names of outbox entries, numbered
    Channel* last_channel_ = nullptr;  // the channel of the last committed message (channels are never erased)
};

}  // namespace switchboard::stores
