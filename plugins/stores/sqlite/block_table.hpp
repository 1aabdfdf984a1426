#pragma once
// Records packed into blocks, several to a SQLite row: how the sqlite store keeps its dedup ledger and its outbox.
//
// A row costs SQLite about the same whether it holds one record or sixty (a few microseconds on a small VM, mostly
// B-tree work and statement overhead), so the store writes rows per block, not per record. A table of blocks is
// split into partitions (the ledger: one per channel; the outbox: one); within a partition each block holds up to
// kMaxRecords records sorted by key, and blocks never overlap: a key is in the block whose [lo, hi] holds it, or
// nowhere. Finding a key is one indexed look-up of the last block with lo <= key; a sorted batch of keys costs
// one or two look-ups per block (or gap between blocks) it touches, not one per key. Keys arriving in order (the
// message ids of a channel, the plan ids a channel's messages produce) fill the partition's last block and then
// start new ones.
//
// Every call runs inside the caller's transaction; nothing is cached between calls.

#include <SQLiteCpp/SQLiteCpp.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace switchboard::stores {

class BlockTable {
public:
    /// Records per block at most.
    static constexpr std::size_t kMaxRecords = 64;

    struct Record {
        std::string key;    // compared bytewise (as memcmp)
        std::string value;  // opaque
    };

    /// Computes a block's summary column from its records (the ledger: the oldest timestamp; the outbox: how many
    /// entries are pending).
    using Summary = std::function<std::int64_t(std::span<const Record>)>;

    /// Prepares the statements over @p table, which must exist.
    BlockTable(SQLite::Database& db, std::string_view table, Summary summary);

    /// Inserts each record of @p sorted (sorted by key, keys unique) whose key is not in @p part yet, and sets
    /// inserted[i] to whether sorted[i] was. The records are moved from.
    void insert(std::int64_t part, std::span<Record> sorted, std::vector<bool>& inserted);

    /// For each key of @p sorted_keys (sorted; equal keys allowed, applied in order) found in @p part, calls
    /// change(i, value) to rewrite its value in place; found[i] says whether it was found.
    void update(std::int64_t part, std::span<const std::string> sorted_keys,
                const std::function<void(std::size_t, std::string&)>& change, std::vector<bool>& found);

    /// The value of @p key in @p part, if it is there.
    [[nodiscard]] std::optional<std::string> find(std::int64_t part, const std::string& key);

    /// Every record of @p part with from <= key < to, in key order.
    [[nodiscard]] std::vector<Record> range(std::int64_t part, const std::string& from, const std::string& to);

    /// Every record of the blocks whose summary is above zero.
    [[nodiscard]] std::vector<Record> with_positive_summary();

    /// Removes the records for which @p remove is true from the blocks whose summary is below @p bound; returns how
    /// many were removed.
    std::size_t remove_if(std::int64_t bound, const std::function<bool(const Record&)>& remove);

private:
    struct Block {
        std::int64_t id = 0;
        std::string lo;
        std::string hi;
        std::int64_t count = 0;
    };

    std::optional<Block> at_or_before(std::int64_t part, const std::string& key);
    std::optional<std::string> first_after(std::int64_t part, const std::string& key);
    std::vector<Record> load(std::int64_t id);
    // Writes @p records (sorted, non-empty) as block @p id (0: new), split into blocks of at most kMaxRecords.
    void store(std::int64_t part, std::int64_t id, std::vector<Record>& records);
    void write_row(SQLite::Statement& statement, std::span<const Record> records);

    Summary summary_;
    SQLite::Statement at_or_before_;
    SQLite::Statement first_after_;
    SQLite::Statement load_;
    SQLite::Statement insert_;
    SQLite::Statement update_;
    SQLite::Statement delete_;
    SQLite::Statement range_;
    SQLite::Statement positive_;
    SQLite::Statement below_;
    std::string encoded_;  // scratch: a block's records as stored
};

/// Appends @p value to @p out as a varint; reads one back from @p in (advancing it), nullopt if @p in is too short.
void put_varint(std::string& out, std::uint64_t value);
[[nodiscard]] std::optional<std::uint64_t> get_varint(std::string_view& in);
/// Appends @p text with its length; reads it back.
void put_text(std::string& out, std::string_view text);
[[nodiscard]] std::optional<std::string_view> get_text(std::string_view& in);

}  // namespace switchboard::stores
