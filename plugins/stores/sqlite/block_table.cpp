#include "block_table.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace switchboard::stores {

void put_varint(std::string& out, std::uint64_t value) {
    char bytes[10];
    std::size_t size = 0;
    while (value >= 0x80) {
        bytes[size++] = static_cast<char>((value & 0x7f) | 0x80);
        value >>= 7;
    }
    bytes[size++] = static_cast<char>(value);
    out.append(bytes, size);
}

std::optional<std::uint64_t> get_varint(std::string_view& in) {
    std::uint64_t value = 0;
    for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
        const auto byte = static_cast<unsigned char>(in.front());
        in.remove_prefix(1);
        value |= static_cast<std::uint64_t>(byte & 0x7f) << shift;
        if ((byte & 0x80) == 0) return value;
    }
    return std::nullopt;
}

void put_text(std::string& out, std::string_view text) {
    put_varint(out, text.size());
    out.append(text);
}

std::optional<std::string_view> get_text(std::string_view& in) {
    const auto size = get_varint(in);
    if (!size || *size > in.size()) return std::nullopt;
    const std::string_view text = in.substr(0, *size);
    in.remove_prefix(*size);
    return text;
}

std::size_t shared_prefix(std::string_view a, std::string_view b) {
    const std::size_t size = std::min(a.size(), b.size());
    std::size_t i = 0;
    while (i + 8 <= size && std::memcmp(a.data() + i, b.data() + i, 8) == 0) i += 8;
    while (i < size && a[i] == b[i]) ++i;
    return i;
}

namespace {

void bind_bytes(SQLite::Statement& statement, int index, std::string_view bytes) {
    statement.bindNoCopy(index, static_cast<const void*>(bytes.data()), static_cast<int>(bytes.size()));
}

SQLite::Statement& fresh(SQLite::Statement& statement) noexcept {
    statement.tryReset();
    return statement;
}

std::string_view blob(const SQLite::Column& column) {
    return {static_cast<const char*>(column.getBlob()), static_cast<std::size_t>(column.getBytes())};
}

std::string_view bytes_of(const SQLite::Column& column) { return blob(column); }

[[noreturn]] void corrupt() { throw std::runtime_error("a block of records is unreadable: the store file is corrupt"); }

bool key_less(const BlockTable::Record& record, std::string_view key) { return record.key < key; }

}  // namespace

BlockTable::BlockTable(SQLite::Database& db, std::string_view table, Summary summary, Combine combine)
    : db_(db),
      summary_(summary),
      combine_(combine),
      at_or_before_(db, "SELECT id, lo, hi, count, summary, records FROM " + std::string(table) +
                            " WHERE part = ?1 AND lo <= ?2 ORDER BY lo DESC LIMIT 1"),
      first_after_(db, "SELECT lo FROM " + std::string(table) + " WHERE part = ?1 AND lo > ?2 ORDER BY lo LIMIT 1"),
      insert_(db, "INSERT INTO " + std::string(table) +
                      " (part, lo, hi, count, summary, records) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
      update_(db, "UPDATE " + std::string(table) +
                      " SET lo = ?2, hi = ?3, count = ?4, summary = ?5, records = ?6 WHERE id = ?1"),
      // Writing lo (even unchanged) would rewrite the block's entry in the (part, lo) index: these leave it alone.
      grow_(db, "UPDATE " + std::string(table) + " SET hi = ?2, count = ?3, summary = ?4, records = ?5 WHERE id = ?1"),
      patch_(db, "UPDATE " + std::string(table) + " SET summary = ?2, records = ?3 WHERE id = ?1"),
      delete_(db, "DELETE FROM " + std::string(table) + " WHERE id = ?1"),
      range_(db, "SELECT records FROM " + std::string(table) + " WHERE part = ?1 AND lo > ?2 AND lo < ?3 ORDER BY lo"),
      positive_(db, "SELECT records FROM " + std::string(table) + " WHERE summary > 0"),
      below_(db, "SELECT id, part, lo, records FROM " + std::string(table) +
                     " WHERE summary < ?1 AND id > ?2 ORDER BY id LIMIT 256") {}

void BlockTable::forget() noexcept {
    known_.clear();
    known_count_ = 0;
    known_bytes_ = 0;
}

BlockTable::Known& BlockTable::remember(std::int64_t part, std::string_view lo, std::int64_t id, std::string_view hi,
                                        std::int64_t count, std::int64_t summary, std::string_view records,
                                        bool fresh) {
    if (known_count_ >= kMaxKnownBlocks || known_bytes_ + records.size() > kMaxKnownBytes) forget();
    Partition& partition = known_[part];
    auto it = partition.lower_bound(lo);
    if (it == partition.end() || it->first != lo) {
        Known entry;
        if (fresh && it != partition.begin()) {
            // The closest block before it that is known: if it was known to be followed by something past lo, it
            // is the block right before the new one.
            Known& before = std::prev(it)->second;
            if (before.next == Known::Next::none || (before.next == Known::Next::lo && before.next_lo > lo)) {
                entry.next = before.next;
                entry.next_lo = before.next_lo;
                before.next = Known::Next::lo;
                before.next_lo = lo;
            }
        }
        it = partition.emplace_hint(it, std::string(lo), std::move(entry));
        ++known_count_;
    }
    Known& known = it->second;
    known_bytes_ = known_bytes_ - known.records.size() + records.size();
    known.id = id;
    known.hi = hi;
    known.count = count;
    known.summary = summary;
    known.records = records;
    return known;
}

std::optional<BlockTable::Block> BlockTable::at_or_before(std::int64_t part, std::string_view key) {
    if (const auto partition = known_.find(part); partition != known_.end()) {
        auto it = partition->second.upper_bound(key);
        if (it != partition->second.begin()) {
            --it;
            const Known& known = it->second;
            // Blocks never overlap, so a known block holding the key, or followed by nothing up to past the key,
            // is the answer.
            if (key <= known.hi || known.next == Known::Next::none ||
                (known.next == Known::Next::lo && key < known.next_lo)) {
                loaded_ = known.records;
                return Block{known.id, it->first, known.hi, known.count, known.summary, known.records.size()};
            }
        }
    }
    auto& query = fresh(at_or_before_);
    query.bind(1, part);
    bind_bytes(query, 2, key);
    if (!query.executeStep()) return std::nullopt;
    Block block{query.getColumn(0).getInt64(),
                std::string(bytes_of(query.getColumn(1))),
                std::string(bytes_of(query.getColumn(2))),
                query.getColumn(3).getInt64(),
                query.getColumn(4).getInt64(),
                static_cast<std::size_t>(query.getColumn(5).getBytes())};
    loaded_.assign(blob(query.getColumn(5)));
    query.tryReset();
    remember(part, block.lo, block.id, block.hi, block.count, block.summary, loaded_, false);
    return block;
}

std::optional<std::string> BlockTable::first_after(std::int64_t part, std::string_view key,
                                                   const std::optional<Block>& before) {
    Known* known = nullptr;
    if (before) {
        if (const auto partition = known_.find(part); partition != known_.end()) {
            if (const auto it = partition->second.find(before->lo); it != partition->second.end()) {
                known = &it->second;
                if (known->next == Known::Next::none) return std::nullopt;
                if (known->next == Known::Next::lo) return known->next_lo;
            }
        }
    }
    auto& query = fresh(first_after_);
    query.bind(1, part);
    bind_bytes(query, 2, key);
    std::optional<std::string> lo;
    if (query.executeStep()) lo.emplace(bytes_of(query.getColumn(0)));
    query.tryReset();
    if (known != nullptr) {
        known->next = lo ? Known::Next::lo : Known::Next::none;
        known->next_lo = lo.value_or(std::string());
    }
    return lo;
}

// Stored: per record, the length its key shares with the previous key, the rest of the key, and the value (each
// with its length).
void BlockTable::decode_loaded() {
    block_.clear();
    offsets_.clear();
    loaded_keys_.clear();
    std::string_view in(loaded_);
    std::size_t previous = 0;  // where the previous key starts in loaded_keys_
    std::size_t previous_size = 0;
    while (!in.empty()) {
        const auto shared = get_varint(in);
        const auto rest = shared ? get_text(in) : std::nullopt;
        const auto value = rest ? get_text(in) : std::nullopt;
        if (!value || *shared > previous_size) corrupt();
        const std::size_t start = loaded_keys_.size();
        loaded_keys_.reserve(start + *shared + rest->size());  // so that the copy below does not move its source
        loaded_keys_.append(loaded_keys_.data() + previous, *shared);
        loaded_keys_.append(*rest);
        offsets_.push_back(start);
        block_.push_back({{}, *value});
        previous = start;
        previous_size = *shared + rest->size();
    }
    for (std::size_t i = 0; i < block_.size(); ++i) {
        const std::size_t end = i + 1 < offsets_.size() ? offsets_[i + 1] : loaded_keys_.size();
        block_[i].key = std::string_view(loaded_keys_).substr(offsets_[i], end - offsets_[i]);
    }
}

void BlockTable::encode(std::string_view previous_key, const Record& record) {
    const std::size_t shared = shared_prefix(previous_key, record.key);
    put_varint(encoded_, shared);
    put_text(encoded_, record.key.substr(shared));
    put_text(encoded_, record.value);
}

void BlockTable::grow(std::int64_t id, std::string_view hi, std::int64_t count, std::int64_t summary) {
    auto& statement = fresh(grow_);
    statement.bind(1, id);
    bind_bytes(statement, 2, hi);
    statement.bind(3, count);
    statement.bind(4, summary);
    bind_bytes(statement, 5, encoded_);
    statement.exec();
}

// The records go after the block's bytes as they are: nothing it holds is decoded or encoded again.
std::size_t BlockTable::append(std::int64_t part, const Block& block, std::span<const Record> sorted) {
    encoded_ = loaded_;
    std::size_t taken = 0;
    std::string_view previous = block.hi;
    while (taken < sorted.size() && encoded_.size() < kMaxBlockBytes) {
        encode(previous, sorted[taken]);
        previous = sorted[taken++].key;
    }
    const std::int64_t count = block.count + static_cast<std::int64_t>(taken);
    const std::int64_t summary = combine_(block.summary, summary_(sorted.first(taken)));
    grow(block.id, sorted[taken - 1].key, count, summary);
    remember(part, block.lo, block.id, sorted[taken - 1].key, count, summary, encoded_, false);
    return taken;
}

void BlockTable::store(std::int64_t part, std::int64_t id, std::string_view lo, std::span<const Record> records) {
    std::size_t first = 0;
    auto flush = [&](std::size_t end) {
        const auto chunk = records.subspan(first, end - first);
        const std::int64_t count = static_cast<std::int64_t>(chunk.size());
        const std::int64_t summary = summary_(chunk);
        if (id != 0 && chunk.front().key == lo) {
            grow(id, chunk.back().key, count, summary);  // the block keeps its lo: its index entry stays
        } else {
            SQLite::Statement& statement = fresh(id != 0 ? update_ : insert_);
            statement.bind(1, id != 0 ? id : part);
            bind_bytes(statement, 2, chunk.front().key);
            bind_bytes(statement, 3, chunk.back().key);
            statement.bind(4, count);
            statement.bind(5, summary);
            bind_bytes(statement, 6, encoded_);
            statement.exec();
        }
        const std::int64_t written = id != 0 ? id : db_.getLastInsertRowid();
        remember(part, chunk.front().key, written, chunk.back().key, count, summary, encoded_, id == 0);
        id = 0;  // the rest are new blocks
        first = end;
        encoded_.clear();
    };
    encoded_.clear();
    for (std::size_t i = 0; i < records.size(); ++i) {
        const std::size_t mark = encoded_.size();
        encode(i > first ? records[i - 1].key : std::string_view(), records[i]);
        if (encoded_.size() > kMaxBlockBytes && i > first) {
            encoded_.resize(mark);
            flush(i);
            encode({}, records[i]);
        }
    }
    flush(records.size());
}

std::string& BlockTable::scratch_value() {
    if (values_used_ == values_.size()) values_.emplace_back();
    std::string& value = values_[values_used_++];
    value.clear();
    return value;
}

void BlockTable::insert(std::int64_t part, std::span<const Record> sorted, std::vector<bool>& inserted) {
    const std::size_t n = sorted.size();
    inserted.assign(n, false);
    std::size_t i = 0;
    while (i < n) {
        const std::optional<Block> before = at_or_before(part, sorted[i].key);
        std::size_t j = i;
        merged_.clear();
        if (before && sorted[i].key <= before->hi) {
            // Inside a block: merge, keeping the records it has.
            while (j < n && sorted[j].key <= before->hi) ++j;
            decode_loaded();
            std::size_t r = 0;
            bool changed = false;
            for (std::size_t k = i; k < j; ++k) {
                while (r < block_.size() && block_[r].key < sorted[k].key) merged_.push_back(block_[r++]);
                if (r < block_.size() && block_[r].key == sorted[k].key) continue;  // already there
                merged_.push_back(sorted[k]);
                inserted[k] = true;
                changed = true;
            }
            merged_.insert(merged_.end(), block_.begin() + static_cast<std::ptrdiff_t>(r), block_.end());
            if (changed) store(part, before->id, before->lo, merged_);
        } else {
            // In the gap after `before`: everything up to the next block goes there, appended to `before` while it
            // has room, so that keys arriving in order fill blocks.
            const std::optional<std::string> next = first_after(part, sorted[i].key, before);
            while (j < n && (!next || sorted[j].key < *next)) ++j;
            for (std::size_t k = i; k < j; ++k) inserted[k] = true;
            std::size_t k = i;
            if (before && before->bytes < kMaxBlockBytes) k += append(part, *before, sorted.subspan(i, j - i));
            if (k < j) store(part, 0, {}, sorted.subspan(k, j - k));
        }
        i = j;
    }
}

void BlockTable::update(std::int64_t part, std::span<const std::string_view> sorted_keys, const Change& change,
                        std::vector<bool>& found) {
    const std::size_t n = sorted_keys.size();
    found.assign(n, false);
    std::size_t i = 0;
    while (i < n) {
        const std::optional<Block> block = at_or_before(part, sorted_keys[i]);
        if (!block || sorted_keys[i] > block->hi) {
            ++i;  // not in the table
            continue;
        }
        std::size_t j = i;
        while (j < n && sorted_keys[j] <= block->hi) ++j;
        decode_loaded();
        values_used_ = 0;
        bool changed = false;
        bool resized = false;  // a value changed its length: the block is encoded again, else patched in place
        std::size_t r = 0;
        for (std::size_t k = i; k < j; ++k) {
            while (r < block_.size() && block_[r].key < sorted_keys[k]) ++r;
            if (r == block_.size() || block_[r].key != sorted_keys[k]) continue;
            std::string& value = scratch_value();
            change(k, block_[r].value, value);
            const std::string_view old = block_[r].value;
            const bool in_loaded = old.data() >= loaded_.data() && old.data() < loaded_.data() + loaded_.size();
            if (value.size() == old.size() && in_loaded) {
                std::memcpy(loaded_.data() + (old.data() - loaded_.data()), value.data(), value.size());
            } else {
                block_[r].value = value;
                resized = true;
            }
            found[k] = true;
            changed = true;
        }
        if (resized) {
            store(part, block->id, block->lo, block_);
        } else if (changed) {
            const std::int64_t summary = summary_(block_);
            auto& patch = fresh(patch_);
            patch.bind(1, block->id);
            patch.bind(2, summary);
            bind_bytes(patch, 3, loaded_);
            patch.exec();
            remember(part, block->lo, block->id, block->hi, block->count, summary, loaded_, false);
        }
        i = j;
    }
}

void BlockTable::contains(std::int64_t part, std::span<const std::string_view> sorted_keys, std::vector<bool>& found) {
    found.assign(sorted_keys.size(), false);
    std::size_t i = 0;
    while (i < sorted_keys.size()) {
        const std::optional<Block> block = at_or_before(part, sorted_keys[i]);
        if (!block || sorted_keys[i] > block->hi) {
            // In the gap before the first block or after this one: none of the keys up to the next block is there.
            const std::optional<std::string> next = first_after(part, sorted_keys[i], block);
            if (!next) return;
            while (i < sorted_keys.size() && sorted_keys[i] < *next) ++i;
            continue;
        }
        decode_loaded();
        for (; i < sorted_keys.size() && sorted_keys[i] <= block->hi; ++i) {
            const auto it = std::lower_bound(block_.begin(), block_.end(), sorted_keys[i], key_less);
            found[i] = it != block_.end() && it->key == sorted_keys[i];
        }
    }
}

std::optional<std::string> BlockTable::find(std::int64_t part, std::string_view key) {
    const std::optional<Block> block = at_or_before(part, key);
    if (!block || key > block->hi) return std::nullopt;
    decode_loaded();
    const auto it = std::lower_bound(block_.begin(), block_.end(), key, key_less);
    if (it == block_.end() || it->key != key) return std::nullopt;
    return std::string(it->value);
}

std::vector<BlockTable::OwnedRecord> BlockTable::range(std::int64_t part, std::string_view from, std::string_view to,
                                                       std::size_t limit) {
    std::vector<OwnedRecord> result;
    auto take = [&] {
        for (const Record& record : block_) {
            if (result.size() == limit) return;
            if (record.key >= from && record.key < to) {
                result.push_back({std::string(record.key), std::string(record.value)});
            }
        }
    };
    if (limit == 0) return result;
    if (const std::optional<Block> first = at_or_before(part, from); first && first->hi >= from) {
        decode_loaded();
        take();
    }
    auto& query = fresh(range_);
    query.bind(1, part);
    bind_bytes(query, 2, from);
    bind_bytes(query, 3, to);
    while (result.size() < limit && query.executeStep()) {
        loaded_.assign(blob(query.getColumn(0)));
        decode_loaded();
        take();
    }
    query.tryReset();
    return result;
}

std::vector<BlockTable::OwnedRecord> BlockTable::with_positive_summary() {
    std::vector<OwnedRecord> result;
    auto& query = fresh(positive_);
    while (query.executeStep()) {
        loaded_.assign(blob(query.getColumn(0)));
        decode_loaded();
        for (const Record& record : block_) result.push_back({std::string(record.key), std::string(record.value)});
    }
    return result;
}

BlockTable::Removal BlockTable::remove_if(std::int64_t bound, const std::function<bool(const Record&)>& remove,
                                          std::int64_t after, std::size_t max_blocks) {
    struct Stored {
        std::int64_t id;
        std::int64_t part;
        std::string lo;
        std::string records;
    };
    forget();  // blocks change their lo and go away here
    Removal removal;
    removal.last_id = after;
    std::size_t looked = 0;
    while (true) {
        // A page of blocks at a time: memory stays bounded however many blocks are old.
        std::vector<Stored> page;
        auto& query = fresh(below_);
        query.bind(1, bound);
        query.bind(2, removal.last_id);
        while (query.executeStep()) {
            page.push_back({query.getColumn(0).getInt64(), query.getColumn(1).getInt64(),
                            std::string(bytes_of(query.getColumn(2))), std::string(blob(query.getColumn(3)))});
        }
        query.tryReset();
        if (page.empty()) return removal;
        for (Stored& stored : page) {
            if (looked++ == max_blocks) {
                removal.complete = false;
                return removal;
            }
            removal.last_id = stored.id;
            loaded_ = std::move(stored.records);
            decode_loaded();
            merged_.clear();
            for (const Record& record : block_) {
                if (!remove(record)) merged_.push_back(record);
            }
            if (merged_.size() == block_.size()) continue;
            removal.removed += block_.size() - merged_.size();
            if (merged_.empty()) {
                auto& erase = fresh(delete_);
                erase.bind(1, stored.id);
                erase.exec();
            } else {
                store(stored.part, stored.id, stored.lo, merged_);
            }
        }
    }
}

}  // namespace switchboard::stores
