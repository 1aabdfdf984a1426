// Helper process for the sqlite store's process tests.
//
//   store_crash_child run DB N BATCH   handles messages 0..N-1 of one channel, resuming after the stored cursor,
//                                      and commits them in batches; prints a line at each step (see below)
//   store_crash_child hold DB          opens the store, prints "ready PID", and keeps it open until stdin closes
//
// "Handling" message i writes two bot key-value entries in the same ProcessedMessage: handled:<i> = 1, and a
// counter kept in this process (loaded from the store at start) and incremented per handled message. Where to
// resume comes from the cursor alone — no is_processed() check — so a cursor that lagged behind what was committed
// would make this process handle a message twice, and the counter would then overshoot N.
//
// Lines printed by `run`, each flushed: "begin FIRST" before a batch is handled, "commit LAST" just before it is
// committed, "committed LAST" after, "done COUNTER" at the end; "error CODE: MESSAGE" on failure (exit 2).

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <sqlite_store.hpp>
#include <string>
#include <vector>

using namespace switchboard;

namespace {

constexpr const char* kConnection = "crash";
constexpr const char* kChannel = "general";
constexpr std::int64_t kEpochMs = 1'700'000'000'000;

int report(const Error& error) {
    std::cout << "error " << error.to_string() << std::endl;
    return 2;
}

int run(stores::SqliteStore& store, std::int64_t count, std::int64_t batch_size) {
    auto stored_counter = store.get_value("bot", "counter");
    if (!stored_counter) return report(stored_counter.error());
    std::int64_t counter = *stored_counter ? std::stoll(**stored_counter) : 0;

    for (;;) {
        const auto cursor = store.cursor(kConnection, kChannel);
        if (!cursor) return report(cursor.error());
        const std::int64_t next = *cursor ? std::stoll((*cursor)->message_id) + 1 : 0;
        if (next >= count) break;

        std::cout << "begin " << next << std::endl;
        std::vector<ProcessedMessage> batch;
        for (std::int64_t i = next; i < std::min(count, next + batch_size); ++i) {
            ProcessedMessage item;
            item.message.id = std::to_string(i);
            item.message.connection = kConnection;
            item.message.channel = kChannel;
            item.message.author = Author{"user", "User", false};
            item.message.text = "message " + item.message.id;
            item.message.timestamp_ms = kEpochMs + i;
            ++counter;
            item.writes.push_back({"bot", "handled:" + item.message.id, "1"});
            item.writes.push_back({"bot", "counter", std::to_string(counter)});
            batch.push_back(std::move(item));
        }
        const std::string last = batch.back().message.id;
        std::cout << "commit " << last << std::endl;
        if (auto committed = store.commit(batch); !committed) return report(committed.error());
        std::cout << "committed " << last << std::endl;
    }
    std::cout << "done " << counter << std::endl;
    return 0;
}

int hold() {
    std::cout << "ready " << ::getpid() << std::endl;
    std::string line;
    while (std::getline(std::cin, line)) {
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.size() == 4 && args[0] == "run") {
            stores::SqliteStore store(args[1]);
            return run(store, std::stoll(args[2]), std::stoll(args[3]));
        }
        if (args.size() == 2 && args[0] == "hold") {
            stores::SqliteStore store(args[1]);
            return hold();
        }
    } catch (const ErrorException& e) {
        return report(e.error());
    }
    std::cerr << "usage: store_crash_child run DB N BATCH | hold DB\n";
    return 64;
}
