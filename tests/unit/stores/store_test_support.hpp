#pragma once
// Helpers for the store tests: building messages, unwrapping results, and opening each store under test.

#include <catch2/catch.hpp>
#include <memory>
#include <memory_store.hpp>
#include <sqlite_store.hpp>
#include <string>
#include <test_support.hpp>
#include <utility>
#include <vector>

namespace switchboard::store_tests {

/// A group message on @p connection / @p channel.
inline Message make_message(const std::string& channel, const std::string& id, std::int64_t timestamp_ms,
                            const std::string& connection = "irc") {
    Message message;
    message.id = id;
    message.connection = connection;
    message.channel = channel;
    message.author = Author{"u-" + id, "User " + id, false};
    message.text = "text of " + id;
    message.timestamp_ms = timestamp_ms;
    return message;
}

inline ProcessedMessage processed(Message message, std::vector<KeyValueWrite> writes = {},
                                  std::vector<OutboxEntry> outbox = {}) {
    return ProcessedMessage{std::move(message), std::move(writes), std::move(outbox)};
}

inline OutboxEntry outbox_entry(const std::string& plan, const std::string& target, std::int64_t created_ms) {
    OutboxEntry entry;
    entry.plan_id = plan;
    entry.recipient = Address::channel("irc", target);
    entry.text = "to " + target;
    entry.created_ms = created_ms;
    return entry;
}

/// The value of a successful result; fails the test with the error's text otherwise.
template <class T>
T ok(Result<T> result) {
    if (!result) FAIL(result.error().to_string());
    return std::move(result).value();
}

inline void ok(Result<void> result) {
    if (!result) FAIL(result.error().to_string());
}

/// The error @p open throws; fails the test if it throws none.
template <class Open>
Error open_error(Open&& open) {
    try {
        open();
    } catch (const ErrorException& e) {
        return e.error();
    }
    FAIL("the store opened, but it should have been refused");
    return {};
}

/// The ids of @p messages, in order.
inline std::vector<std::string> ids(const std::vector<Message>& messages) {
    std::vector<std::string> result;
    for (const Message& message : messages) result.push_back(message.id);
    return result;
}

/// The store tests run once per store; each factory opens a fresh one.
struct MemoryStoreFactory {
    std::unique_ptr<Store> open() { return std::make_unique<stores::MemoryStore>(); }
};

struct SqliteStoreFactory {
    testing_support::TempDir dir;
    std::unique_ptr<Store> open() { return std::make_unique<stores::SqliteStore>(dir / "store.db"); }
};

}  // namespace switchboard::store_tests
