// A connection's saved state (ConnectorHost::load_state / save_state): written off the caller's thread, in order,
// the latest value of a key winning, and readable before it is written.

#include "host/host.hpp"
#include "memory_store.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <catch2/catch.hpp>

#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace switchboard;
using namespace std::chrono_literals;

namespace {

struct QuietLogger final : Logger {
    void log(LogLevel, std::string_view, const LogFields&) noexcept override {}
};

/// An executor the test runs by hand.
struct ManualExecutor {
    std::vector<std::function<void()>> tasks;
    host::ConnectionState::Executor executor() {
        return [this](std::function<void()> task) { tasks.push_back(std::move(task)); };
    }
    void run_all() {
        while (!tasks.empty()) {
            auto task = std::move(tasks.front());
            tasks.erase(tasks.begin());
            task();
        }
    }
};

std::optional<std::string> stored(Store& store, const std::string& key) {
    auto value = store.connection_state("discord", key);
    REQUIRE(value.has_value());
    return *value;
}

}  // namespace

TEST_CASE("saved state is written later by one writer, the latest value of a key winning", "[host][state]") {
    stores::MemoryStore store;
    QuietLogger logger;
    ManualExecutor executor;
    host::ConnectionState state("discord", store, executor.executor(), logger);

    state.save("session_id", "abc");
    state.save("sequence", "41");
    state.save("sequence", "42");

    CHECK(executor.tasks.size() == 1);  // one writer for the three saves, none running on the caller's thread
    CHECK_FALSE(stored(store, "sequence").has_value());
    CHECK(state.load("sequence") == std::optional<std::string>("42"));  // the latest, before it is written
    CHECK(state.load("session_id") == std::optional<std::string>("abc"));
    CHECK_FALSE(state.wait_written(0ms));

    executor.run_all();

    CHECK(state.wait_written(0ms));
    CHECK(stored(store, "session_id") == std::optional<std::string>("abc"));
    CHECK(stored(store, "sequence") == std::optional<std::string>("42"));
    CHECK(state.load("sequence") == std::optional<std::string>("42"));
    state.save("sequence", "43");
    CHECK(executor.tasks.size() == 1);  // a new writer once the last one finished
    executor.run_all();
    CHECK(stored(store, "sequence") == std::optional<std::string>("43"));
}

TEST_CASE("load_state reads what an earlier run saved, and nothing for a key never saved", "[host][state]") {
    stores::MemoryStore store;
    REQUIRE(store.put_connection_state("discord", "resume_url", "wss://gateway.example/").has_value());
    QuietLogger logger;
    ManualExecutor executor;
    host::ConnectionState state("discord", store, executor.executor(), logger);
    CHECK(state.load("resume_url") == std::optional<std::string>("wss://gateway.example/"));
    CHECK_FALSE(state.load("session_id").has_value());
    CHECK(executor.tasks.empty());
}

TEST_CASE("saves from several threads on a worker pool all end written with each key's last value", "[host][state]") {
    stores::MemoryStore store;
    QuietLogger logger;
    boost::asio::thread_pool workers(2);
    host::ConnectionState state(
        "discord", store, [&workers](std::function<void()> task) { boost::asio::post(workers, std::move(task)); },
        logger);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&state, t] {
            for (int i = 1; i <= 500; ++i) state.save("key" + std::to_string(t), std::to_string(i));
        });
    }
    for (auto& thread : threads) thread.join();
    REQUIRE(state.wait_written(10s));
    for (int t = 0; t < 4; ++t) CHECK(stored(store, "key" + std::to_string(t)) == std::optional<std::string>("500"));
    workers.join();
}
