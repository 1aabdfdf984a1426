#pragma once
// Records packed into blocks, several to a SQLite row: how the sqlite store keeps its dedup ledger and its outbox.
//
// A row costs SQLite about the same whether it holds one record or forty (a few microseconds on a small VM: B-tree
// work, statement overhead, and a page written to the WAL), so the store writes rows per block, not per record. A
// table of blocks is split into partitions (the ledger: one per channel; the outbox: one); within a partition each
// block holds records sorted by key, up to about kMaxBlockBytes (one 4 KB page with the row's other columns), keys
// stored as the length they share with the previous key and the rest. Blocks never overlap: a key is in the block
// whose [lo, hi] holds it, or nowhere. Finding a key is one indexed look-up of the last block with lo <= key; a
// sorted batch of keys costs one or two look-ups per block (or gap between blocks) it touches, not one per key.
// Keys arriving in order (the message ids of a channel, the plan ids its messages produce) fill the partition's
// last block and then start new ones.
//
// Every call runs inside the caller's transaction. The table remembers the blocks it read or wrote last (up to
// kMaxKnownBlocks or kMaxKnownBytes, then it starts again), with, where it learned it, where the next block starts: a
// batch whose keys go after what the previous batch wrote, and an update of what a batch just wrote, then need no
// look-up. Only this object writes the table (the store holds the file's lock), so what it remembers stays true until a
// transaction is rolled back: then the store calls forget(). Scratch buffers are kept, so a warm table allocates
// little.

#include <SQLiteCpp/SQLiteCpp.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace switchboard::stores {

class BlockTable {
public:
    /// A block is cut once its records take this many bytes.
    static constexpr std::size_t kMaxBlockBytes = 3000;

    /// A record whose key and value live elsewhere (the caller's, or the table's scratch).
    struct Record {
        std::string_view key;  // compared bytewise (as memcmp)
        std::string_view value;
    };
    /// A record that owns its bytes.
    struct OwnedRecord {
        std::string key;
        std::string value;
    };

    /// Computes a block's summary column from its records (the ledger: the oldest timestamp; the outbox: how many
    /// entries are pending), and the summary of two runs of records from theirs (min, sum).
    using Summary = std::int64_t (*)(std::span<const Record>);
    using Combine = std::int64_t (*)(std::int64_t, std::int64_t);
    /// Writes the new value of the i-th key, whose value is @p old, into @p out (empty when called).
    using Change = std::function<void(std::size_t i, std::string_view old, std::string& out)>;

    /// Prepares the statements over @p table, which must exist.
    BlockTable(SQLite::Database& db, std::string_view table, Summary summary, Combine combine);

    /// Inserts each record of @p sorted (keys strictly increasing) whose key is not in @p part yet, and sets
    /// inserted[i] to whether sorted[i] was.
    void insert(std::int64_t part, std::span<const Record> sorted, std::vector<bool>& inserted);

    /// For each key of @p sorted_keys (increasing; equal keys allowed, changed in order) found in @p part, rewrites
    /// its value with @p change; found[i] says whether the i-th key was found.
    void update(std::int64_t part, std::span<const std::string_view> sorted_keys, const Change& change,
                std::vector<bool>& found);

    /// For each key of @p sorted_keys (increasing; equal keys allowed) whether it is in @p part: one look-up per
    /// block (or gap between blocks) the keys fall in, each block decoded once.
    void contains(std::int64_t part, std::span<const std::string_view> sorted_keys, std::vector<bool>& found);

    /// The value of @p key in @p part, if it is there.
    [[nodiscard]] std::optional<std::string> find(std::int64_t part, std::string_view key);

    /// The first @p limit records of @p part with from <= key < to, in key order.
    [[nodiscard]] std::vector<OwnedRecord> range(std::int64_t part, std::string_view from, std::string_view to,
                                                 std::size_t limit = static_cast<std::size_t>(-1));

    /// Every record of the blocks whose summary is above zero.
    [[nodiscard]] std::vector<OwnedRecord> with_positive_summary();

    /// Forgets what the table remembers of its blocks (after a rollback).
    void forget() noexcept;

    /// How far a remove_if() got.
    struct Removal {
        std::size_t removed = 0;   // records removed
        std::int64_t last_id = 0;  // the last block looked at (0: none)
        bool complete = true;      // every block after `after` was looked at
    };

    /// Removes the records for which @p remove is true from the blocks whose summary is below @p bound, in block id
    /// order after block @p after, looking at @p max_blocks blocks at most (a call then ends, and the next one goes on
    /// from Removal::last_id).
    Removal remove_if(std::int64_t bound, const std::function<bool(const Record&)>& remove, std::int64_t after = 0,
                      std::size_t max_blocks = static_cast<std::size_t>(-1));

private:
    struct Block {
        std::int64_t id = 0;
        std::string lo;
        std::string hi;
        std::int64_t count = 0;
        std::int64_t summary = 0;
        std::size_t bytes = 0;
    };

    // The last block of @p part with lo <= @p key; its records' bytes are then in loaded_.
    std::optional<Block> at_or_before(std::int64_t part, std::string_view key);
    // The lo of the first block after @p key, which is in the gap after @p before (nullopt: the partition's first).
    std::optional<std::string> first_after(std::int64_t part, std::string_view key, const std::optional<Block>& before);
    // Appends the first of @p sorted (all after its last key) to @p block, whose bytes are in loaded_, while it has
    // room; returns how many.
    std::size_t append(std::int64_t part, const Block& block, std::span<const Record> sorted);
    // Decodes loaded_ into block_.
    void decode_loaded();
    // Writes @p records (sorted, non-empty) as block @p id (0: a new one), whose lo is @p lo, cut into blocks of
    // kMaxBlockBytes.
    void store(std::int64_t part, std::int64_t id, std::string_view lo, std::span<const Record> records);
    // Rewrites block @p id, its lo unchanged, with encoded_ as its records (grow_: the (part, lo) index is left alone).
    void grow(std::int64_t id, std::string_view hi, std::int64_t count, std::int64_t summary);
    void encode(std::string_view previous_key, const Record& record);
    std::string& scratch_value();

    SQLite::Database& db_;
    Summary summary_;
    Combine combine_;
    SQLite::Statement at_or_before_;
    SQLite::Statement first_after_;
    SQLite::Statement insert_;
    SQLite::Statement update_;
    SQLite::Statement grow_;
    SQLite::Statement patch_;
    SQLite::Statement delete_;
    SQLite::Statement range_;
    SQLite::Statement positive_;
    SQLite::Statement below_;

    std::string loaded_;              // the loaded block's records as stored
    std::string loaded_keys_;         // its keys, whole
    std::vector<Record> block_;       // its records: keys in loaded_keys_, values in loaded_ or values_
    std::vector<Record> merged_;      // scratch: a block being rebuilt
    std::deque<std::string> values_;  // scratch: values rewritten by update() (a deque: they never move)
    std::size_t values_used_ = 0;
    std::vector<std::size_t> offsets_;  // scratch: where each key starts in loaded_keys_
    std::string encoded_;               // scratch: a block's records as stored

    // A block as last read or written, and what follows it.
    struct Known {
        std::int64_t id = 0;
        std::string hi;
        std::int64_t count = 0;
        std::int64_t summary = 0;
        std::string records;
        enum class Next { unknown, none, lo } next = Next::unknown;
        std::string next_lo;
    };
    using Partition = std::map<std::string, Known, std::less<>>;  // by lo
    static constexpr std::size_t kMaxKnownBlocks = 1024;
    static constexpr std::size_t kMaxKnownBytes = 4 << 20;  // blocks of one large record can exceed kMaxBlockBytes

    // Records the row of a block read or rewritten (lo unchanged), or written new (@p fresh: the block before it,
    // if known to be followed by what now follows this one, is now followed by this one).
    Known& remember(std::int64_t part, std::string_view lo, std::int64_t id, std::string_view hi, std::int64_t count,
                    std::int64_t summary, std::string_view records, bool fresh);

    std::map<std::int64_t, Partition> known_;
    std::size_t known_count_ = 0;
    std::size_t known_bytes_ = 0;
};

/// Appends @p value to @p out as a varint; reads one back from @p in (advancing it), nullopt if @p in is too short.
void put_varint(std::string& out, std::uint64_t value);
[[nodiscard]] std::optional<std::uint64_t> get_varint(std::string_view& in);
/// Appends @p text with its length; reads it back.
void put_text(std::string& out, std::string_view text);
[[nodiscard]] std::optional<std::string_view> get_text(std::string_view& in);
/// How many bytes @p a and @p b share at their start.
[[nodiscard]] std::size_t shared_prefix(std::string_view a, std::string_view b);

}  // namespace switchboard::stores
