#include "host/pipeline.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/thread_pool.hpp>
#include <catch2/catch.hpp>
#include <mutex>
#include <thread>

#include "memory_store.hpp"
#include "test_support.hpp"

using namespace switchboard;
using switchboard::host::BotBinding;
using switchboard::host::Pipeline;
using switchboard::testing_support::wait_until;

namespace {

struct NullLogger final : Logger {
    void log(LogLevel, std::string_view, const LogFields&) noexcept override {}
};

/// Records what it sees; replies "re: TEXT"; counts in its key-value space; throws on "boom".
class RecordingBot final : public Bot {
public:
    std::vector<Command> commands() const override { return {{"!count", "", "counts"}}; }
    void on_message(const Message& message, BotContext& context) override {
        {
            std::lock_guard lock(mutex);
            seen.push_back(message.connection + ":" + message.text);
        }
        if (message.text == "boom") throw std::runtime_error("boom");
        const auto count = context.state().get("count");
        context.state().put("count", std::to_string(count ? std::stoi(*count) + 1 : 1));
        context.reply("re: " + message.text);
    }
    std::vector<std::string> snapshot() {
        std::lock_guard lock(mutex);
        return seen;
    }
    std::mutex mutex;
    std::vector<std::string> seen;
};

/// A memory store whose next `failures` commits fail, and whose next `lost_replies` commits are recorded but
/// answered with a failure (as a commit whose reply the network lost).
class FlakyStore final : public Store {
public:
    std::atomic<int> failures{0};
    std::atomic<int> lost_replies{0};
    std::atomic<int> commits{0};  // commits recorded (a message already in the ledger is skipped, as in every store)
    std::atomic<bool> fenced{false};  // another host holds the lease: every commit is refused
    Result<void> commit(std::span<const ProcessedMessage> batch) override {
        if (fenced) return fail("lease_lost", "this host no longer holds the lease of connection 'a'");
        if (failures > 0) {
            --failures;
            return fail_retryable("store_busy", "injected failure");
        }
        auto committed = inner_.commit(batch);
        ++commits;
        if (committed && lost_replies > 0) {
            --lost_replies;
            return fail_retryable("store_unavailable", "injected: the reply to a recorded commit was lost");
        }
        return committed;
    }
    Result<bool> is_processed(const MessageKey& key) override { return inner_.is_processed(key); }
    Result<std::optional<Cursor>> cursor(const std::string& c, const std::string& ch) override {
        return inner_.cursor(c, ch);
    }
    Result<std::vector<ChannelCursor>> cursors(const std::string& c) override { return inner_.cursors(c); }
    Result<void> put_connection_state(const std::string& c, const std::string& k, const std::string& v) override {
        return inner_.put_connection_state(c, k, v);
    }
    Result<std::optional<std::string>> connection_state(const std::string& c, const std::string& k) override {
        return inner_.connection_state(c, k);
    }
    Result<std::optional<std::string>> get_value(const std::string& s, const std::string& k) override {
        return inner_.get_value(s, k);
    }
    Result<void> put_values(std::span<const KeyValueWrite> w) override { return inner_.put_values(w); }
    Result<void> outbox_add(std::span<const OutboxEntry> e) override { return inner_.outbox_add(e); }
    Result<void> outbox_update(std::span<const OutboxEntry> e) override { return inner_.outbox_update(e); }
    Result<std::vector<OutboxEntry>> outbox_pending() override { return inner_.outbox_pending(); }
    Result<std::vector<OutboxEntry>> outbox_plan(const std::string& p) override { return inner_.outbox_plan(p); }
    Result<std::vector<Message>> messages(const std::string& c, const std::string& ch, std::int64_t from,
                                          std::int64_t to, std::size_t limit) override {
        return inner_.messages(c, ch, from, to, limit);
    }
    Result<std::size_t> prune(std::int64_t before) override { return inner_.prune(before); }

private:
    stores::MemoryStore inner_;
};

Message message(std::string connection, int n, std::string text = {}) {
    Message m;
    m.connection = std::move(connection);
    m.channel = "lobby";
    m.id = std::to_string(100000 + n);
    m.timestamp_ms = n;
    m.author = Author{"alice", "Alice", false};
    m.text = text.empty() ? "m" + std::to_string(n) : std::move(text);
    return m;
}

/// Plans private envelopes to `connection/@target`; a target "nobody" fails as recipient_not_found. Routes every
/// message of channel "relay" to group "ops" with two recipients.
class FakePlanner final : public routing::Planner {
public:
    std::variant<routing::PlannedDelivery, DeliveryReport> plan(Envelope envelope,
                                                                const std::string& strategy) const override {
        if (envelope.target == "nobody") return routing::Router::report_for(fail("recipient_not_found", "no one"));
        routing::PlannedDelivery delivery;
        delivery.plan_id = envelope.idempotency_key;
        delivery.text = envelope.text;
        if (strategy == "group") {
            delivery.plan.recipients = {{"x", Address::channel("a", "x")}, {"y", Address::channel("b", "y")}};
        } else {
            delivery.plan.recipients = {{envelope.target, Address::user("a", envelope.target)}};
        }
        return delivery;
    }
    std::vector<routing::RoutedEnvelope> routes_for(const Message& message) const override {
        if (message.channel != "relay") return {};
        Envelope envelope;
        envelope.target = "ops";
        envelope.text = "<" + message.author.display_name + "> " + message.text;
        return {{envelope, "group"}};
    }
};

/// Routes "!tell NAME" privately to NAME and records the report.
class RoutingBot final : public Bot {
public:
    std::vector<Command> commands() const override { return {}; }
    void on_message(const Message& message, BotContext& context) override {
        if (message.text.rfind("!tell ", 0) != 0) return;
        Envelope envelope;
        envelope.kind = MessageKind::private_message;
        envelope.target = message.text.substr(6);
        envelope.text = "psst";
        context.route(envelope, [this](DeliveryReport report) {
            std::lock_guard lock(mutex);
            reports.push_back(std::move(report));
        });
    }
    std::mutex mutex;
    std::vector<DeliveryReport> reports;
};

struct Fixture {
    boost::asio::thread_pool workers{2};
    NullLogger logger;
    FlakyStore store;
    FakePlanner planner;
    std::shared_ptr<RecordingBot> bot = std::make_shared<RecordingBot>();
    std::shared_ptr<RoutingBot> router_bot = std::make_shared<RoutingBot>();
    std::mutex sent_mutex;
    std::vector<routing::PlannedDelivery> sent;
    std::vector<bool> sent_persisted;  // what the pipeline said of each plan's outbox entries
    Pipeline pipeline{store,
                      {BotBinding{"recorder", bot, {}}, BotBinding{"router", router_bot, {}}},
                      {"a", "b"},
                      workers,
                      logger,
                      std::shared_ptr<const routing::Planner>(std::shared_ptr<void>(), &planner),  // not owned
                      [this](std::vector<host::StagedDelivery> staged, bool persisted) {
                          std::lock_guard lock(sent_mutex);
                          for (auto& s : staged) {
                              sent.push_back(std::move(s.delivery));
                              sent_persisted.push_back(persisted);
                          }
                      }};
    ~Fixture() {
        pipeline.wait_idle(std::chrono::seconds(10));
        workers.join();
    }
};

}  // namespace

TEST_CASE("one connection's messages reach the bots in order, across batches", "[pipeline]") {
    Fixture f;
    constexpr int kCount = 2000;
    for (int i = 0; i < kCount; ++i) {
        f.pipeline.submit(message("a", i));
        f.pipeline.submit(message("b", i));
    }
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(20)));
    std::vector<std::string> a, b;
    for (const auto& seen : f.bot->snapshot()) (seen[0] == 'a' ? a : b).push_back(seen.substr(2));
    REQUIRE(a.size() == kCount);
    REQUIRE(b.size() == kCount);
    for (int i = 0; i < kCount; ++i) {
        REQUIRE(a[i] == "m" + std::to_string(i));
        REQUIRE(b[i] == "m" + std::to_string(i));
    }
    CHECK(f.pipeline.stats().processed == 2 * kCount);
    auto cursor = f.store.cursor("a", "lobby");
    REQUIRE(cursor.has_value());
    REQUIRE(cursor->has_value());
    CHECK((*cursor)->message_id == message("a", kCount - 1).id);
}

TEST_CASE("a message seen before is dropped, in the same batch or later", "[pipeline]") {
    Fixture f;
    f.pipeline.submit(message("a", 1));
    f.pipeline.submit(message("a", 1));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    f.pipeline.submit(message("a", 1));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(f.bot->snapshot().size() == 1);
    CHECK(f.pipeline.stats().duplicates == 2);
}

TEST_CASE("replies reach the outbox only after the message is durable, with state written in the same step",
          "[pipeline]") {
    Fixture f;
    for (int i = 0; i < 5; ++i) f.pipeline.submit(message("a", i));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    {
        std::lock_guard lock(f.sent_mutex);
        REQUIRE(f.sent.size() == 5);
        CHECK(f.sent[0].text == "re: m0");
        REQUIRE(f.sent[0].plan.recipients.size() == 1);
        CHECK(f.sent[0].plan.recipients[0].address == Address::channel("a", "lobby"));
        CHECK(f.sent[0].reply_to == message("a", 0).id);
    }
    // later messages of one batch read what earlier ones wrote
    auto count = f.store.get_value("recorder", "count");
    REQUIRE(count.has_value());
    CHECK(*count == std::optional<std::string>("5"));
    auto pending = f.store.outbox_pending();
    REQUIRE(pending.has_value());
    CHECK(pending->size() == 5);
}

TEST_CASE("a failing bot does not stop the others and its message counts as handled", "[pipeline]") {
    Fixture f;
    f.pipeline.submit(message("a", 1, "boom"));
    f.pipeline.submit(message("a", 2));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(f.bot->snapshot().size() == 2);
    CHECK(f.pipeline.stats().processed == 2);
}

TEST_CASE("bots do not answer messages written by bots", "[pipeline]") {
    Fixture f;
    Message from_bot = message("a", 1);
    from_bot.author.is_bot = true;
    f.pipeline.submit(from_bot);
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(f.bot->snapshot().empty());
    CHECK(f.pipeline.stats().processed == 1);
}

TEST_CASE("when the store fails the batch is committed again as handled, in order, and nothing is lost", "[pipeline]") {
    Fixture f;
    f.store.failures = 2;
    for (int i = 0; i < 10; ++i) f.pipeline.submit(message("a", i));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(20)));
    CHECK(f.pipeline.stats().store_failures == 2);
    CHECK(f.pipeline.stats().processed == 10);
    // The bots handled each message once: a failed commit is tried again with what they staged.
    const auto seen = f.bot->snapshot();
    REQUIRE(seen.size() == 10);
    for (int i = 0; i < 10; ++i) CHECK(seen[i] == "a:m" + std::to_string(i));
    auto cursor = f.store.cursor("a", "lobby");
    REQUIRE(cursor.has_value());
    CHECK((*cursor)->message_id == message("a", 9).id);
    std::lock_guard lock(f.sent_mutex);
    REQUIRE(f.sent.size() == 10);
    for (int i = 0; i < 10; ++i) CHECK(f.sent[i].text == "re: m" + std::to_string(i));
}

TEST_CASE("a batch retried after a failed commit has every message back in its place, duplicates included",
          "[pipeline]") {
    Fixture f;
    f.store.failures = 1;
    for (int i = 0; i < 6; ++i) {
        f.pipeline.submit(message("a", i));
        if (i % 2 == 0) f.pipeline.submit(message("a", i));  // the same message again in the batch
    }
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(20)));
    CHECK(f.pipeline.stats().store_failures == 1);
    CHECK(f.pipeline.stats().processed == 6);
    std::lock_guard lock(f.sent_mutex);
    REQUIRE(f.sent.size() == 6);
    for (int i = 0; i < 6; ++i) CHECK(f.sent[i].text == "re: m" + std::to_string(i));
}

TEST_CASE(
    "a commit recorded although the store said it failed (its reply lost) is handed on when committed again: "
    "its plans go out, marked for the engine to read the outbox first",
    "[pipeline]") {
    Fixture f;
    f.store.lost_replies = 1;
    // The lane's first task holds it until the three messages are queued: they are handled as one batch.
    std::atomic<bool> go{false};
    f.pipeline.post("a", [&] { wait_until([&] { return go.load(); }); });
    f.pipeline.submit(message("a", 1));
    f.pipeline.submit(message("a", 2, "!tell bob"));
    f.pipeline.submit(message("a", 3));
    go = true;
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(20)));
    CHECK(f.pipeline.stats().store_failures == 1);
    CHECK(f.pipeline.stats().processed == 3);
    CHECK(f.pipeline.stats().duplicates == 0);
    CHECK(f.store.commits == 2);
    CHECK(f.bot->snapshot().size() == 3);  // handled once, not again when the commit was tried again
    {
        std::lock_guard lock(f.sent_mutex);
        REQUIRE(f.sent.size() == 4);  // three replies and the routed envelope
        for (const bool persisted : f.sent_persisted) CHECK_FALSE(persisted);
    }
    // The second commit changed nothing: each plan's entry is in the outbox once, pending until the engine sends it.
    auto pending = f.store.outbox_pending();
    REQUIRE(pending.has_value());
    CHECK(pending->size() == 4);
    CHECK(f.store.get_value("recorder", "count").value() == std::optional<std::string>("3"));
}

TEST_CASE(
    "at stop, a batch whose commit keeps failing is given up: nothing more is tried, and what its bots routed "
    "is reported shutting_down once the pipeline goes",
    "[pipeline]") {
    boost::asio::thread_pool workers{2};
    NullLogger logger;
    FlakyStore store;
    store.failures = 1'000'000;
    FakePlanner planner;
    auto router_bot = std::make_shared<RoutingBot>();
    std::atomic<int> handed_on{0};
    {
        Pipeline pipeline{store,
                          {BotBinding{"router", router_bot, {}}},
                          {"a"},
                          workers,
                          logger,
                          std::shared_ptr<const routing::Planner>(std::shared_ptr<void>(), &planner),
                          [&](std::vector<host::StagedDelivery>, bool) { ++handed_on; }};
        pipeline.submit(message("a", 1, "!tell bob"));
        REQUIRE(wait_until([&] { return pipeline.stats().store_failures >= 2; }));
        pipeline.close();
        CHECK_FALSE(pipeline.wait_idle(std::chrono::milliseconds(50)));
        pipeline.give_up();
        workers.join();  // returns: the lane no longer waits to try the store again
        const auto failures = pipeline.stats().store_failures;
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        CHECK(pipeline.stats().store_failures == failures);
        std::lock_guard lock(router_bot->mutex);
        CHECK(router_bot->reports.empty());  // the batch still waits, as handled
    }
    CHECK(handed_on == 0);
    CHECK(store.commits == 0);
    std::lock_guard lock(router_bot->mutex);
    REQUIRE(router_bot->reports.size() == 1);
    CHECK(router_bot->reports[0].status == DeliveryStatus::retryable);
    CHECK(router_bot->reports[0].error_code == "shutting_down");
}

TEST_CASE("a batch whose commit is fenced (lease lost) is dropped, not retried; what bots routed is reported "
          "retryable and never sent",
          "[pipeline]") {
    Fixture f;
    f.store.fenced = true;
    for (int i = 0; i < 5; ++i) f.pipeline.submit(message("a", i));
    f.pipeline.submit(message("a", 5, "!tell bob"));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(20)));
    CHECK(f.pipeline.stats().fenced == 6);
    CHECK(f.pipeline.stats().processed == 0);
    CHECK(f.pipeline.stats().store_failures == 0);
    CHECK_FALSE(f.store.cursor("a", "lobby").value());
    CHECK_FALSE(f.store.is_processed({"a", "lobby", message("a", 0).id}).value());
    {
        std::lock_guard lock(f.sent_mutex);
        CHECK(f.sent.empty());
    }
    std::lock_guard lock(f.router_bot->mutex);
    REQUIRE(f.router_bot->reports.size() == 1);
    CHECK(f.router_bot->reports[0].status == DeliveryStatus::retryable);
    CHECK(f.router_bot->reports[0].error_code == "lease_lost");

    // Once the lease is back, the same messages (fetched again by recovery) are handled as usual.
    f.store.fenced = false;
    f.pipeline.submit(message("a", 0));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(20)));
    CHECK(f.pipeline.stats().processed == 1);
}

TEST_CASE("a connection event runs after every message delivered before it", "[pipeline]") {
    Fixture f;
    std::atomic<std::size_t> seen_at_event{0};
    for (int i = 0; i < 500; ++i) f.pipeline.submit(message("a", i));
    f.pipeline.post("a", [&] { seen_at_event = f.bot->snapshot().size(); });
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(seen_at_event == 500);
}

TEST_CASE("a bot's routed envelope is planned, staged in the outbox with the message, and handed on after commit",
          "[pipeline]") {
    Fixture f;
    f.pipeline.submit(message("a", 1, "!tell carol"));
    f.pipeline.submit(message("a", 2, "!tell nobody"));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    std::lock_guard lock(f.sent_mutex);
    // replies of the recording bot for both, plus one routed plan to carol
    REQUIRE(f.sent.size() == 3);
    const auto routed = std::find_if(f.sent.begin(), f.sent.end(), [](const auto& d) { return d.text == "psst"; });
    REQUIRE(routed != f.sent.end());
    CHECK(routed->plan.recipients[0].address == Address::user("a", "carol"));
    // a key derived from the message: handling it again would produce the same one
    CHECK(routed->plan_id == "a/lobby/" + message("a", 1).id + "#router.0");
    auto entries = f.store.outbox_plan(routed->plan_id);
    REQUIRE(entries.has_value());
    CHECK(entries->size() == 1);
    // the failed plan reports at once, after commit, and sends nothing
    std::lock_guard report_lock(f.router_bot->mutex);
    REQUIRE(f.router_bot->reports.size() == 1);
    CHECK(f.router_bot->reports[0].status == DeliveryStatus::recipient_not_found);
}

TEST_CASE("a message on a routed channel is relayed to the route's target with the author named", "[pipeline]") {
    Fixture f;
    Message relayed = message("a", 1, "deploy done");
    relayed.channel = "relay";
    f.pipeline.submit(relayed);
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    std::lock_guard lock(f.sent_mutex);
    const auto route = std::find_if(f.sent.begin(), f.sent.end(),
                                    [](const auto& d) { return d.text == "<Alice> deploy done"; });
    REQUIRE(route != f.sent.end());
    CHECK(route->plan.recipients.size() == 2);
    CHECK(route->plan_id == "a/relay/" + relayed.id + "#route.0");
    auto entries = f.store.outbox_plan(route->plan_id);
    REQUIRE(entries.has_value());
    REQUIRE(entries->size() == 2);
    // Each entry has its recipient and the whole message, and the plan has its recipients back after the commit
    // (staging lent them to the entries).
    std::vector<Address> staged;
    for (const OutboxEntry& entry : *entries) {
        CHECK(entry.text == "<Alice> deploy done");
        staged.push_back(entry.recipient);
    }
    std::vector<Address> planned;
    for (const Recipient& recipient : route->plan.recipients) planned.push_back(recipient.address);
    const auto by_text = [](const Address& a, const Address& b) { return a.to_string() < b.to_string(); };
    std::sort(staged.begin(), staged.end(), by_text);
    std::sort(planned.begin(), planned.end(), by_text);
    CHECK(planned == staged);
    CHECK_FALSE(planned.front().target.empty());
}

TEST_CASE("while a channel recovers its live messages wait, and follow the recovered ones in order", "[pipeline]") {
    Fixture f;
    f.pipeline.submit(message("a", 1));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    f.pipeline.hold("a", "lobby");
    // live messages 5 and 6 arrive while recovery still fetches 2..5
    f.pipeline.submit(message("a", 5));
    f.pipeline.submit(message("a", 6));
    Message other = message("a", 7);
    other.channel = "elsewhere";  // another channel is not held
    f.pipeline.submit(other);
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(f.bot->snapshot() == std::vector<std::string>{"a:m1", "a:m7"});
    auto cursor = f.store.cursor("a", "lobby");
    REQUIRE(cursor.has_value());
    CHECK((*cursor)->message_id == message("a", 1).id);  // not moved past what recovery has not handled yet
    for (int n = 2; n <= 5; ++n) {
        Message recovered = message("a", n);
        recovered.recovered = true;
        f.pipeline.submit(recovered);
    }
    f.pipeline.release("a", "lobby");
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(f.bot->snapshot() == std::vector<std::string>{"a:m1", "a:m7", "a:m2", "a:m3", "a:m4", "a:m5", "a:m6"});
    CHECK(f.pipeline.stats().held == 2);
    CHECK(f.pipeline.stats().duplicates == 1);  // 5 came live and recovered
    // released: live messages flow again
    f.pipeline.submit(message("a", 8));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(f.bot->snapshot().back() == "a:m8");
}

TEST_CASE("after reconfigure the next messages reach the new bots and routes, and the old bots are let go",
          "[pipeline]") {
    Fixture f;
    f.pipeline.submit(message("a", 1));
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    auto replacement = std::make_shared<RecordingBot>();
    std::weak_ptr<RecordingBot> old_bot = f.bot;
    f.bot.reset();
    f.pipeline.reconfigure({BotBinding{"recorder", replacement, {}}}, nullptr);  // no planner: routes stop
    // It goes with the last batch that used it (the worker lets go of it just after that batch went idle).
    CHECK(wait_until([&] { return old_bot.expired(); }, std::chrono::seconds(5)));

    f.pipeline.submit(message("a", 2));
    Message relayed = message("a", 3);
    relayed.channel = "relay";
    f.pipeline.submit(relayed);
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(replacement->snapshot() == std::vector<std::string>{"a:m2", "a:m3"});
    std::lock_guard lock(f.sent_mutex);
    CHECK(f.sent.size() == 3);  // the three replies, and no relay
    for (const auto& delivery : f.sent) CHECK(delivery.plan.recipients.size() == 1);
}

TEST_CASE("drop_holds ends a connection's holds and drops what they parked, unhandled", "[pipeline]") {
    Fixture f;
    f.pipeline.post("a", [&] { f.pipeline.hold("a", "lobby"); });
    f.pipeline.submit(message("a", 1));  // parked
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(f.bot->snapshot().empty());
    f.pipeline.drop_holds("a");
    f.pipeline.submit(message("a", 2));  // no hold any more
    f.pipeline.release("a", "lobby");    // nothing held: nothing comes back
    REQUIRE(f.pipeline.wait_idle(std::chrono::seconds(10)));
    CHECK(f.bot->snapshot() == std::vector<std::string>{"a:m2"});
}
