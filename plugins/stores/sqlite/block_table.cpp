#include "block_table.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace switchboard::stores {

void put_varint(std::string& out, std::uint64_t value) {
    while (value >= 0x80) {
        out.push_back(static_cast<char>((value & 0x7f) | 0x80));
        value >>= 7;
    }
    out.push_back(static_cast<char>(value));
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

namespace {

void bind_bytes(SQLite::Statement& statement, int index, const std::string& bytes) {
    statement.bindNoCopy(index, static_cast<const void*>(bytes.data()), static_cast<int>(bytes.size()));
}

SQLite::Statement& fresh(SQLite::Statement& statement) noexcept {
    statement.tryReset();
    return statement;
}

std::vector<BlockTable::Record> decode(std::string_view in) {
    std::vector<BlockTable::Record> records;
    while (!in.empty()) {
        const auto key = get_text(in);
        const auto value = key ? get_text(in) : std::nullopt;
        if (!value) throw std::runtime_error("a block of records is truncated: the store file is corrupt");
        records.push_back({std::string(*key), std::string(*value)});
    }
    return records;
}

void decode_into(std::string_view in, std::vector<BlockTable::Record>& out) {
    for (auto& record : decode(in)) out.push_back(std::move(record));
}

}  // namespace

BlockTable::BlockTable(SQLite::Database& db, std::string_view table, Summary summary)
    : summary_(std::move(summary)),
      at_or_before_(db, "SELECT id, lo, hi, count FROM " + std::string(table) +
                            " WHERE part = ?1 AND lo <= ?2 ORDER BY lo DESC LIMIT 1"),
      first_after_(db,
                   "SELECT lo FROM " + std::string(table) + " WHERE part = ?1 AND lo > ?2 ORDER BY lo LIMIT 1"),
      load_(db, "SELECT records FROM " + std::string(table) + " WHERE id = ?1"),
      insert_(db, "INSERT INTO " + std::string(table) +
                      " (part, lo, hi, count, summary, records) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
      update_(db, "UPDATE " + std::string(table) +
                      " SET lo = ?2, hi = ?3, count = ?4, summary = ?5, records = ?6 WHERE id = ?1"),
      delete_(db, "DELETE FROM " + std::string(table) + " WHERE id = ?1"),
      range_(db, "SELECT records FROM " + std::string(table) +
                     " WHERE part = ?1 AND lo > ?2 AND lo < ?3 ORDER BY lo"),
      positive_(db, "SELECT records FROM " + std::string(table) + " WHERE summary > 0"),
      below_(db, "SELECT id, records FROM " + std::string(table) +
                     " WHERE summary < ?1 AND id > ?2 ORDER BY id LIMIT 256") {}

std::optional<BlockTable::Block> BlockTable::at_or_before(std::int64_t part, const std::string& key) {
    auto& query = fresh(at_or_before_);
    query.bind(1, part);
    bind_bytes(query, 2, key);
    if (!query.executeStep()) return std::nullopt;
    Block block{query.getColumn(0).getInt64(), query.getColumn(1).getString(), query.getColumn(2).getString(),
                query.getColumn(3).getInt64()};
    query.tryReset();
    return block;
}

std::optional<std::string> BlockTable::first_after(std::int64_t part, const std::string& key) {
    auto& query = fresh(first_after_);
    query.bind(1, part);
    bind_bytes(query, 2, key);
    if (!query.executeStep()) return std::nullopt;
    std::string lo = query.getColumn(0).getString();
    query.tryReset();
    return lo;
}

std::vector<BlockTable::Record> BlockTable::load(std::int64_t id) {
    auto& query = fresh(load_);
    query.bind(1, id);
    if (!query.executeStep()) throw std::runtime_error("a block of records vanished while it was read");
    const SQLite::Column column = query.getColumn(0);
    auto records = decode({static_cast<const char*>(column.getBlob()), static_cast<std::size_t>(column.getBytes())});
    query.tryReset();
    return records;
}

void BlockTable::write_row(SQLite::Statement& statement, std::span<const Record> records) {
    encoded_.clear();
    for (const Record& record : records) {
        put_text(encoded_, record.key);
        put_text(encoded_, record.value);
    }
    bind_bytes(statement, 2, records.front().key);
    bind_bytes(statement, 3, records.back().key);
    statement.bind(4, static_cast<std::int64_t>(records.size()));
    statement.bind(5, summary_(records));
    bind_bytes(statement, 6, encoded_);
    statement.exec();
}

void BlockTable::store(std::int64_t part, std::int64_t id, std::vector<Record>& records) {
    const std::span<const Record> all(records);
    for (std::size_t first = 0; first < all.size(); first += kMaxRecords) {
        const auto chunk = all.subspan(first, std::min(kMaxRecords, all.size() - first));
        if (first == 0 && id != 0) {
            auto& update = fresh(update_);
            update.bind(1, id);
            write_row(update, chunk);
        } else {
            auto& insert = fresh(insert_);
            insert.bind(1, part);
            write_row(insert, chunk);
        }
    }
}

void BlockTable::insert(std::int64_t part, std::span<Record> sorted, std::vector<bool>& inserted) {
    const std::size_t n = sorted.size();
    inserted.assign(n, false);
    std::size_t i = 0;
    while (i < n) {
        const std::optional<Block> before = at_or_before(part, sorted[i].key);
        std::size_t j = i;
        if (before && sorted[i].key <= before->hi) {
            // Inside a block: merge, keeping the records it has.
            while (j < n && sorted[j].key <= before->hi) ++j;
            std::vector<Record> old = load(before->id);
            std::vector<Record> merged;
            merged.reserve(old.size() + (j - i));
            std::size_t r = 0;
            bool changed = false;
            for (std::size_t k = i; k < j; ++k) {
                while (r < old.size() && old[r].key < sorted[k].key) merged.push_back(std::move(old[r++]));
                if (r < old.size() && old[r].key == sorted[k].key) continue;  // already there
                merged.push_back(std::move(sorted[k]));
                inserted[k] = true;
                changed = true;
            }
            while (r < old.size()) merged.push_back(std::move(old[r++]));
            if (changed) store(part, before->id, merged);
        } else {
            // In the gap after `before`: everything up to the next block goes there, appended to `before` while it
            // has room, so that keys arriving in order fill blocks.
            const std::optional<std::string> next = first_after(part, sorted[i].key);
            while (j < n && (!next || sorted[j].key < *next)) ++j;
            std::vector<Record> records;
            std::int64_t id = 0;
            if (before && before->count < static_cast<std::int64_t>(kMaxRecords)) {
                records = load(before->id);
                id = before->id;
            }
            records.reserve(records.size() + (j - i));
            for (std::size_t k = i; k < j; ++k) {
                records.push_back(std::move(sorted[k]));
                inserted[k] = true;
            }
            store(part, id, records);
        }
        i = j;
    }
}

void BlockTable::update(std::int64_t part, std::span<const std::string> sorted_keys,
                        const std::function<void(std::size_t, std::string&)>& change, std::vector<bool>& found) {
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
        std::vector<Record> records = load(block->id);
        bool changed = false;
        std::size_t r = 0;
        for (std::size_t k = i; k < j; ++k) {
            while (r < records.size() && records[r].key < sorted_keys[k]) ++r;
            if (r == records.size() || records[r].key != sorted_keys[k]) continue;
            change(k, records[r].value);
            found[k] = true;
            changed = true;
        }
        if (changed) store(part, block->id, records);
        i = j;
    }
}

std::optional<std::string> BlockTable::find(std::int64_t part, const std::string& key) {
    const std::optional<Block> block = at_or_before(part, key);
    if (!block || key > block->hi) return std::nullopt;
    std::vector<Record> records = load(block->id);
    const auto it = std::lower_bound(records.begin(), records.end(), key,
                                     [](const Record& record, const std::string& k) { return record.key < k; });
    if (it == records.end() || it->key != key) return std::nullopt;
    return std::move(it->value);
}

std::vector<BlockTable::Record> BlockTable::range(std::int64_t part, const std::string& from, const std::string& to) {
    std::vector<Record> candidates;
    if (const std::optional<Block> first = at_or_before(part, from); first && first->hi >= from) {
        candidates = load(first->id);
    }
    auto& query = fresh(range_);
    query.bind(1, part);
    bind_bytes(query, 2, from);
    bind_bytes(query, 3, to);
    while (query.executeStep()) {
        const SQLite::Column column = query.getColumn(0);
        decode_into({static_cast<const char*>(column.getBlob()), static_cast<std::size_t>(column.getBytes())},
                    candidates);
    }
    std::vector<Record> result;
    for (Record& record : candidates) {
        if (record.key >= from && record.key < to) result.push_back(std::move(record));
    }
    return result;
}

std::vector<BlockTable::Record> BlockTable::with_positive_summary() {
    std::vector<Record> result;
    auto& query = fresh(positive_);
    while (query.executeStep()) {
        const SQLite::Column column = query.getColumn(0);
        decode_into({static_cast<const char*>(column.getBlob()), static_cast<std::size_t>(column.getBytes())},
                    result);
    }
    return result;
}

std::size_t BlockTable::remove_if(std::int64_t bound, const std::function<bool(const Record&)>& remove) {
    std::size_t removed = 0;
    std::int64_t after = 0;
    while (true) {
        // A page of blocks at a time: memory stays bounded however many blocks are old.
        std::vector<std::pair<std::int64_t, std::vector<Record>>> page;
        auto& query = fresh(below_);
        query.bind(1, bound);
        query.bind(2, after);
        while (query.executeStep()) {
            const SQLite::Column column = query.getColumn(1);
            page.emplace_back(query.getColumn(0).getInt64(),
                              decode({static_cast<const char*>(column.getBlob()),
                                      static_cast<std::size_t>(column.getBytes())}));
        }
        query.tryReset();
        if (page.empty()) return removed;
        for (auto& [id, records] : page) {
            after = id;
            const auto kept = std::remove_if(records.begin(), records.end(), remove);
            const auto gone = static_cast<std::size_t>(records.end() - kept);
            if (gone == 0) continue;
            removed += gone;
            records.erase(kept, records.end());
            if (records.empty()) {
                auto& erase = fresh(delete_);
                erase.bind(1, id);
                erase.exec();
            } else {
                auto& update = fresh(update_);
                update.bind(1, id);
                write_row(update, records);
            }
        }
    }
}

}  // namespace switchboard::stores
