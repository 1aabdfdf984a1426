// What only the redis store does: expiry after the dedup window, waiting for a server that went away (and giving
// up after reconnect_timeout with an error naming it), a commit whose reply was lost or that raced a restart
// recorded exactly once, passwords, URLs, key prefixes.

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <future>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "redis_test_support.hpp"

using namespace switchboard;
using namespace switchboard::store_tests;
using stores::RedisOptions;
using stores::RedisStore;
using testing_support::RedisServer;
using testing_support::RedisServerOptions;
using testing_support::wait_until;

namespace {

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Lines the store logs, for waiting on "it noticed the server is gone".
class RecordingLogger final : public Logger {
public:
    void log(LogLevel, std::string_view text, const LogFields&) noexcept override {
        std::lock_guard lock(mutex_);
        lines_.emplace_back(text);
    }
    bool saw(std::string_view part) const {
        std::lock_guard lock(mutex_);
        for (const std::string& line : lines_) {
            if (line.find(part) != std::string::npos) return true;
        }
        return false;
    }

private:
    mutable std::mutex mutex_;
    std::vector<std::string> lines_;
};

// A store made the way the host makes it: from settings, with a logger.
struct HostedStore {
    boost::asio::io_context io;
    RecordingLogger logger;
    std::unique_ptr<RedisStore> store;

    HostedStore(const std::string& url, std::int64_t reconnect_timeout_ms, std::int64_t command_timeout_ms = 5000) {
        PluginConfig config;
        config.set("url", url);
        config.set("dedup_window", std::int64_t{kCenturyWindow.count()});
        config.set("reconnect_timeout", reconnect_timeout_ms);
        config.set("command_timeout", command_timeout_ms);
        store = std::make_unique<RedisStore>(PluginContext("store", logger, io), config);
    }
};

// A server that keeps what it acknowledged across SIGKILL and restart (append-only file, fsync always).
RedisServerOptions persistent() {
    RedisServerOptions options;
    options.persistent = true;
    return options;
}

RedisServerOptions with_password(std::string password) {
    RedisServerOptions options;
    options.password = std::move(password);
    return options;
}

void start(RedisServer& server) {
    if (!server.start()) FAIL(server.why());
}

// Messages "<tag>-<n>" for n in [first, first + count) on #ops, timestamps n, each with an outbox entry (its reply).
std::vector<ProcessedMessage> numbered_batch(const std::string& tag, int first, int count) {
    std::vector<ProcessedMessage> batch;
    for (int n = first; n < first + count; ++n) {
        const std::string id = tag + "-" + std::to_string(n);
        batch.push_back(
            processed(make_message("#ops", id, n), {{"bot", "last", id}}, {outbox_entry("reply-" + id, "#ops", n)}));
    }
    return batch;
}

// Every id in @p log once, and how many there were.
std::multiset<std::string> id_counts(const std::vector<Message>& log) {
    std::multiset<std::string> counts;
    for (const Message& message : log) counts.insert(message.id);
    return counts;
}

}  // namespace

TEST_CASE("the redis store forgets a processed message once the dedup window has passed", "[redis]") {
    RedisServer server;
    start(server);
    RedisOptions options;
    options.dedup_window = std::chrono::seconds(3);
    RedisStore store(server.url(), options);

    SECTION("a message older than the window counts as expired at once; a recent one is remembered") {
        const std::int64_t now = now_ms();
        ok(store.commit(std::vector{processed(make_message("#ops", "old", now - 60'000)),
                                    processed(make_message("#ops", "new", now))}));
        CHECK_FALSE(ok(store.is_processed({"irc", "#ops", "old"})));
        CHECK(ok(store.is_processed({"irc", "#ops", "new"})));
        const std::vector batch{make_message("#ops", "old", now - 60'000), make_message("#ops", "new", now)};
        CHECK(ok(store.are_processed(batch)) == std::vector<bool>{false, true});
        CHECK(ids(ok(store.messages("irc", "#ops", 0, now + 1, 10))) == std::vector<std::string>{"new"});
        CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"new", now});
    }
    SECTION("once the window has passed, the entry is gone, and Redis has dropped the keys") {
        const std::int64_t now = now_ms();
        ok(store.commit(std::vector{processed(make_message("#ops", "m1", now))}));
        CHECK(ok(store.is_processed({"irc", "#ops", "m1"})));
        CHECK(server.command({"EXISTS", "switchboard:seen:irc:#ops"}) == "1");

        CHECK(wait_until([&] { return !ok(store.is_processed({"irc", "#ops", "m1"})); }, std::chrono::seconds(20)));
        CHECK(wait_until(
            [&] {
                return server.command({"EXISTS", "switchboard:seen:irc:#ops"}) == "0";
            },
            std::chrono::seconds(20)));
        CHECK(server.command({"EXISTS", "switchboard:log:irc:#ops"}) == "0");
        CHECK(ok(store.messages("irc", "#ops", 0, now + 1, 10)).empty());
        // The cursor is not part of the ledger: it stays, as in every store.
        CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m1", now});
    }
}

TEST_CASE("the redis store waits for a server that went away and carries on when it is back", "[redis]") {
    RedisServer server(persistent());
    start(server);
    HostedStore hosted(server.url(), 60'000);
    RedisStore& store = *hosted.store;
    ok(store.commit(numbered_batch("before", 0, 10)));

    server.kill();
    auto committed = std::async(std::launch::async, [&] { return store.commit(numbered_batch("during", 10, 10)); });
    REQUIRE(wait_until([&] { return hosted.logger.saw("reconnecting"); }, std::chrono::seconds(30)));
    REQUIRE(server.restart());

    ok(committed.get());
    const auto log = ok(store.messages("irc", "#ops", 0, 1000, 100));
    CHECK(log.size() == 20);
    CHECK(id_counts(log).size() == 20);
    CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"during-19", 19});
    CHECK(ok(store.outbox_pending()).size() == 20);
    CHECK(ok(store.is_processed({"irc", "#ops", "before-3"})));
}

TEST_CASE("past reconnect_timeout a call fails with an error naming the server, and the store recovers later",
          "[redis]") {
    RedisServer server(persistent());
    start(server);
    HostedStore hosted(server.url(), 300);
    RedisStore& store = *hosted.store;
    ok(store.commit(numbered_batch("m", 0, 5)));

    server.kill();
    const auto result = store.commit(numbered_batch("m", 5, 5));
    REQUIRE_FALSE(result.has_value());
    CHECK(result.error().code == "store_unavailable");
    CHECK(result.error().retryable);
    CHECK(result.error().message.find("redis at 127.0.0.1:" + std::to_string(server.port()) + "/0") !=
          std::string::npos);
    CHECK(result.error().message.find("did not answer for 300 ms while committing a batch of 5") != std::string::npos);
    CHECK_FALSE(store.is_processed({"irc", "#ops", "m-6"}).has_value());

    REQUIRE(server.restart());
    ok(store.commit(numbered_batch("m", 5, 5)));  // what the host does: the same batch again
    CHECK(ok(store.messages("irc", "#ops", 0, 1000, 100)).size() == 10);
    CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m-9", 9});
}

TEST_CASE("a commit whose reply was lost is sent again and recorded once", "[redis]") {
    RedisServer server;
    start(server);
    // A short command timeout: a frozen server is taken for a lost one quickly, while the commit already sent
    // sits in its socket and runs when it wakes up.
    HostedStore hosted(server.url(), 60'000, 300);
    RedisStore& store = *hosted.store;
    ok(store.commit(numbered_batch("m", 0, 3)));

    server.pause();
    auto committed = std::async(std::launch::async, [&] { return store.commit(numbered_batch("m", 3, 20)); });
    REQUIRE(wait_until([&] { return hosted.logger.saw("reconnecting"); }, std::chrono::seconds(30)));
    server.resume();

    ok(committed.get());
    const auto log = ok(store.messages("irc", "#ops", 0, 1000, 100));
    CHECK(log.size() == 23);
    CHECK(id_counts(log).size() == 23);
    CHECK(ok(store.outbox_pending()).size() == 23);
    CHECK(server.command({"GET", "switchboard:outbox-seq"}) == "23");
    CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m-22", 22});
}

TEST_CASE("commits racing redis-server restarts lose nothing and double nothing", "[redis]") {
    RedisServer server(persistent());
    start(server);
    HostedStore hosted(server.url(), 60'000);
    RedisStore& store = *hosted.store;
    constexpr int kBatchSize = 25;
    constexpr int kAfterRestarts = 10;  // batches committed once both restarts are over
    constexpr int kMaxBatches = 4000;

    // The pipeline's way: a batch that failed is committed again, never dropped. It keeps committing until both
    // restarts are behind it, so they happen while commits are in flight.
    std::atomic<int> done{0};
    std::atomic<bool> restarted{false};
    std::thread committer([&] {
        for (int b = 0, end = kMaxBatches; b < end; ++b) {
            if (restarted && end == kMaxBatches) end = std::min(kMaxBatches, b + kAfterRestarts);
            const auto batch = numbered_batch("m", b * kBatchSize, kBatchSize);
            for (int attempt = 0; attempt < 50 && !store.commit(batch); ++attempt) {
            }
            done = b + 1;
        }
    });
    for (const int at : {5, 15}) {
        REQUIRE(wait_until([&] { return done >= at; }, std::chrono::seconds(60)));
        server.kill();
        REQUIRE(server.restart());
    }
    restarted = true;
    committer.join();

    const int total = done * kBatchSize;
    INFO("messages committed: " << total);
    CHECK(done > 15);
    CHECK(hosted.logger.saw("reconnecting"));  // a commit was in flight when the server went
    const auto log = ok(store.messages("irc", "#ops", 0, 1'000'000, 1'000'000));
    const auto counts = id_counts(log);
    CHECK(log.size() == static_cast<std::size_t>(total));
    CHECK(counts.size() == static_cast<std::size_t>(total));
    for (int n = 0; n < total; n += 7) {
        INFO("message " << n);
        CHECK(counts.count("m-" + std::to_string(n)) == 1);
    }
    CHECK(ok(store.outbox_pending()).size() == static_cast<std::size_t>(total));
    CHECK(server.command({"GET", "switchboard:outbox-seq"}) == std::to_string(total));
    const int last = total - 1;
    CHECK(ok(store.cursor("irc", "#ops")) == Cursor{"m-" + std::to_string(last), last});
    CHECK(ok(store.get_value("bot", "last")) == "m-" + std::to_string(last));
}

TEST_CASE("the redis store refuses a wrong or missing password with an error saying so", "[redis]") {
    RedisServer server(with_password("right-password"));
    start(server);
    const std::string address = "127.0.0.1:" + std::to_string(server.port());

    SECTION("the right password opens it") {
        RedisStore store(server.url());
        ok(store.put_connection_state("c", "k", "v"));
        CHECK(ok(store.connection_state("c", "k")) == "v");
    }
    SECTION("a wrong password") {
        const Error error = open_error([&] { RedisStore("redis://:wrong@" + address + "/0"); });
        CHECK(error.code == "store_auth_failed");
        CHECK_FALSE(error.retryable);
        CHECK(error.message.find("redis at " + address + "/0 refused the password") != std::string::npos);
        CHECK(error.message.find("store.url") != std::string::npos);
        CHECK(error.message.find("wrong") == std::string::npos);  // the password itself is never shown
    }
    SECTION("no password") {
        const Error error = open_error([&] { RedisStore("redis://" + address + "/0"); });
        CHECK(error.code == "store_auth_failed");
        CHECK(error.message.find("requires a password") != std::string::npos);
    }
}

TEST_CASE("a database the server does not have is refused at once", "[redis]") {
    RedisServer server;
    start(server);
    const Error error = open_error([&] { RedisStore(server.url(99)); });
    CHECK(error.code == "store_bad_database");
    CHECK(error.message.find("has no database 99") != std::string::npos);
}

TEST_CASE("redis URLs are parsed, and a bad one is an error naming the setting", "[redis]") {
    SECTION("host, port, password and database") {
        const auto endpoint = ok(stores::parse_redis_url("redis://:s%40cret@10.0.0.5:6380/2"));
        CHECK(endpoint.host == "10.0.0.5");
        CHECK(endpoint.port == 6380);
        CHECK(endpoint.database == 2);
        CHECK(endpoint.password == "s@cret");
        CHECK(endpoint.username.empty());
        CHECK(endpoint.describe() == "redis at 10.0.0.5:6380/2");
    }
    SECTION("defaults, an ACL user, IPv6") {
        const auto plain = ok(stores::parse_redis_url("redis://cache.internal"));
        CHECK(plain.host == "cache.internal");
        CHECK(plain.port == 6379);
        CHECK(plain.database == 0);
        CHECK(plain.password.empty());
        const auto user = ok(stores::parse_redis_url("redis://bot:pw@[::1]:7000/1"));
        CHECK(user.username == "bot");
        CHECK(user.password == "pw");
        CHECK(user.host == "::1");
        CHECK(user.describe() == "redis at [::1]:7000/1");
    }
    SECTION("bad URLs, each with its reason") {
        const auto reason = [](const std::string& url) {
            auto parsed = stores::parse_redis_url(url);
            return parsed ? std::string("parsed") : parsed.error().message;
        };
        CHECK(reason("rediss://10.0.0.5:6380").find("TLS") != std::string::npos);
        CHECK(reason("http://10.0.0.5").find("scheme must be redis://") != std::string::npos);
        CHECK(reason("redis://10.0.0.5:99999").find("port") != std::string::npos);
        CHECK(reason("redis://10.0.0.5/zero").find("database 'zero'") != std::string::npos);
        CHECK(reason("10.0.0.5:6379").find("redis://") != std::string::npos);
        CHECK(reason("redis:///0").find("names no host") != std::string::npos);
        CHECK(reason("redis://:hunter2@10.0.0.5/0?x=1").find("hunter2") == std::string::npos);
        CHECK(reason("redis://:hunter2@10.0.0.5/zero").find("hunter2") == std::string::npos);
    }
    SECTION("check_config reports the problem at its key; the constructor names store.url") {
        PluginConfig config;
        config.set("url", std::string("redis://10.0.0.5/zero"));
        config.set("pool_size", std::int64_t{0});
        const auto problems = RedisStore::check_config(config);
        REQUIRE(problems.size() == 2);
        CHECK(problems[0].key == "url");
        CHECK(problems[1].key == "pool_size");

        boost::asio::io_context io;
        RecordingLogger logger;
        const Error error = open_error([&] { RedisStore(PluginContext("store", logger, io), config); });
        CHECK(error.code == "config_invalid");
        CHECK(error.message.starts_with("store.url: "));
    }
}

TEST_CASE("the redis store runs its script again after the server forgot it", "[redis]") {
    RedisServer server;
    start(server);
    RedisStore store(server.url());
    REQUIRE(server.command({"SCRIPT", "FLUSH"}) == "OK");
    ok(store.commit(std::vector{processed(make_message("#ops", "m1", now_ms()))}));
    CHECK(ok(store.is_processed({"irc", "#ops", "m1"})));
    CHECK(ok(store.outbox_pending()).empty());
}

TEST_CASE("stores with different prefixes share a server without seeing each other", "[redis]") {
    RedisServer server;
    start(server);
    RedisOptions blue_options;
    blue_options.prefix = "blue:";
    RedisStore blue(server.url(), blue_options);
    RedisStore standard(server.url());
    const std::int64_t now = now_ms();
    ok(blue.commit(std::vector{processed(make_message("#ops", "m1", now), {{"bot", "k", "blue"}})}));

    CHECK(ok(blue.is_processed({"irc", "#ops", "m1"})));
    CHECK_FALSE(ok(standard.is_processed({"irc", "#ops", "m1"})));
    CHECK_FALSE(ok(standard.get_value("bot", "k")));
    CHECK(ok(standard.cursors("")).empty());
    std::istringstream keys(server.command({"KEYS", "*"}));
    for (std::string key; std::getline(keys, key);) {
        INFO(key);
        CHECK(key.starts_with("blue:"));
    }
}

TEST_CASE("names with colons, percent signs and newlines stay apart in the key layout", "[redis]") {
    RedisServer server;
    start(server);
    RedisStore store(server.url());
    const std::int64_t now = now_ms();
    ok(store.commit(std::vector{processed(make_message("a:b", "m1", now, "x")),
                                processed(make_message("b", "m2", now, "x:a")),
                                processed(make_message("50%\nnew", "m3", now, "x"))}));

    CHECK(ok(store.cursor("x", "a:b")) == Cursor{"m1", now});
    CHECK(ok(store.cursor("x:a", "b")) == Cursor{"m2", now});
    CHECK(ok(store.cursor("x", "50%\nnew")) == Cursor{"m3", now});
    CHECK_FALSE(ok(store.cursor("x", "a")));
    CHECK_FALSE(ok(store.is_processed({"x", "a:b", "m2"})));
    const auto all = ok(store.cursors(""));
    REQUIRE(all.size() == 3);
    CHECK(all[0].connection == "x");
    CHECK(all[2].connection == "x:a");
    CHECK(server.command({"EXISTS", "switchboard:seen:x:a%3Ab"}) == "1");
}

TEST_CASE(
    "one prune forgets more finished outbox entries than one script call may, those an earlier release left "
    "outside outbox-done included, and keeps pending ones",
    "[redis]") {
    RedisServer server;
    start(server);
    RedisStore store(server.url());
    // 24,000 entries of 2,400 plans (ten recipients each), all sent but one plan's.
    std::vector<OutboxEntry> entries;
    for (int plan = 0; plan < 2400; ++plan) {
        for (int r = 0; r < 10; ++r) {
            entries.push_back(outbox_entry("plan-" + std::to_string(plan), "#room-" + std::to_string(r), 100));
        }
    }
    ok(store.outbox_add(entries));
    for (OutboxEntry& entry : entries) {
        if (entry.plan_id != "plan-7") entry.state = OutboxState::sent;
    }
    ok(store.outbox_update(entries));
    CHECK(server.command({"ZCARD", "switchboard:outbox-done"}) == "23990");
    // What a store of the release before outbox-done holds: finished entries in no set.
    REQUIRE(server.command({"DEL", "switchboard:outbox-done", "switchboard:outbox-done-scan"}) == "1");

    ok(store.prune(200));
    CHECK(server.command({"GET", "switchboard:outbox-done-scan"}) == "done");
    CHECK(server.command({"ZCARD", "switchboard:outbox-done"}) == "0");
    CHECK(ok(store.outbox_plan("plan-1")).empty());
    CHECK(ok(store.outbox_plan("plan-2399")).empty());
    CHECK(ok(store.outbox_plan("plan-7")).size() == 10);
    CHECK(ok(store.outbox_pending()).size() == 10);
    CHECK(server.command({"EXISTS", "switchboard:outbox:plan-1", "switchboard:outbox-state:plan-1"}) == "0");

    // Later finished entries go through outbox-done as before: a second prune forgets them.
    for (OutboxEntry& entry : entries) {
        if (entry.plan_id == "plan-7") entry.state = OutboxState::failed;
    }
    ok(store.outbox_update(std::span(entries).subspan(70, 10)));
    ok(store.prune(200));
    CHECK(ok(store.outbox_plan("plan-7")).empty());
    CHECK(ok(store.outbox_pending()).empty());
}
