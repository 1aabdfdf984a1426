#pragma once
// Reads what the ledger bot (tests/support/plugins/ledger) recorded, straight from a sqlite store's file, read-only,
// so a test can watch progress while the host runs (WAL lets a reader in beside the writer). Link SQLiteCpp.
// This reads the sqlite store's `kv` table (space = the bot's name) and is the one place tests know that schema.

#include <SQLiteCpp/SQLiteCpp.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace switchboard::testing_support {

class LedgerReader {
public:
    /// Opens @p database (the sqlite store's file) read-only; the bot instance is named @p bot ("ledger").
    explicit LedgerReader(const std::filesystem::path& database, std::string bot = "ledger")
        : db_(database.string(), SQLite::OPEN_READONLY), bot_(std::move(bot)) {
        db_.setBusyTimeout(5000);
    }

    /// How many messages of `connection/channel` the bot handled.
    std::uint64_t count(const std::string& channel) { return number("count " + channel); }

    /// The texts of the messages of `connection/channel`, in the order the bot handled them.
    std::vector<std::string> texts(const std::string& channel) {
        std::vector<std::string> out;
        SQLite::Statement query(db_, "SELECT key, value FROM kv WHERE space = ? AND key >= ? AND key < ?");
        const std::string prefix = "at " + channel + " ";
        query.bind(1, bot_);
        query.bind(2, prefix);
        query.bind(3, prefix + "\x7f");
        std::vector<std::pair<std::uint64_t, std::string>> numbered;
        while (query.executeStep()) {
            const std::string key = query.getColumn(0).getString();
            numbered.emplace_back(std::stoull(key.substr(prefix.size())), query.getColumn(1).getString());
        }
        std::sort(numbered.begin(), numbered.end());
        for (auto& [n, text] : numbered) out.push_back(std::move(text));
        return out;
    }

    /// How many times message @p id of `connection/channel` reached the bot (0: never).
    std::uint64_t seen(const std::string& channel, const std::string& id) {
        return number("seen " + channel + "/" + id);
    }

    /// Messages that reached the bot more than once, as `connection/channel/id` (must stay empty).
    std::vector<std::string> seen_twice() {
        std::vector<std::string> out;
        SQLite::Statement query(db_, "SELECT key FROM kv WHERE space = ? AND key LIKE 'seen %' AND value <> '1'");
        query.bind(1, bot_);
        while (query.executeStep()) out.push_back(query.getColumn(0).getString().substr(5));
        return out;
    }

private:
    std::uint64_t number(const std::string& key) {
        SQLite::Statement query(db_, "SELECT value FROM kv WHERE space = ? AND key = ?");
        query.bind(1, bot_);
        query.bind(2, key);
        return query.executeStep() ? std::stoull(query.getColumn(0).getString()) : 0;
    }

    SQLite::Database db_;
    std::string bot_;
};

}  // namespace switchboard::testing_support
