// The behaviour every store shares (DESIGN §4), written once and run against each store: memory and sqlite in
// store_tests, redis (which needs a redis-server per case) in redis_store_tests, built with STORE_CONTRACT_REDIS.

#include <string>
#include <thread>
#include <vector>

#ifdef STORE_CONTRACT_REDIS
#include "redis_test_support.hpp"
#else
#include "store_test_support.hpp"
#endif

using namespace switchboard;
using namespace switchboard::store_tests;

#ifdef STORE_CONTRACT_REDIS
#define STORE_TEST_CASE(name) TEMPLATE_TEST_CASE(name, "[store]", RedisStoreFactory)
#else
#define STORE_TEST_CASE(name) TEMPLATE_TEST_CASE(name, "[store]", MemoryStoreFactory, SqliteStoreFactory)
#endif

STORE_TEST_CASE("a store remembers which messages it has processed") {
    TestType factory;
    auto store = factory.open();
    const MessageKey key{"irc", "#ops", "m1"};

    CHECK_FALSE(ok(store->is_processed(key)));
    const std::vector batch{processed(make_message("#ops", "m1", 100))};
    ok(store->commit(batch));

    CHECK(ok(store->is_processed(key)));
    CHECK_FALSE(ok(store->is_processed({"irc", "#ops", "m2"})));
    CHECK_FALSE(ok(store->is_processed({"irc", "#dev", "m1"})));
    CHECK_FALSE(ok(store->is_processed({"discord", "#ops", "m1"})));
}

STORE_TEST_CASE("a store answers for a whole batch which of its messages it has processed") {
    TestType factory;
    auto store = factory.open();
    ok(store->commit(std::vector{processed(make_message("#ops", "m1", 100)), processed(make_message("#dev", "m2", 100)),
                                 processed(make_message("#ops", "m3", 100))}));

    std::vector<Message> batch{make_message("#ops", "m1", 100), make_message("#ops", "m2", 100),
                               make_message("#dev", "m2", 100), make_message("#ops", "m3", 100),
                               make_message("#new", "m1", 100), make_message("#ops", "m1", 100)};
    batch[4].connection = "discord";
    Message other_connection = make_message("#ops", "m3", 100);
    other_connection.connection = "discord";
    batch.push_back(other_connection);
    const std::vector<bool> seen = ok(store->are_processed(batch));
    CHECK(seen == std::vector<bool>{true, false, true, true, false, true, false});
    CHECK(ok(store->are_processed(std::span<const Message>{})).empty());
}

STORE_TEST_CASE("a message already processed is skipped with its writes and outbox entries") {
    TestType factory;
    auto store = factory.open();
    const std::vector first{
        processed(make_message("#ops", "m1", 100), {{"echo", "count", "1"}}, {outbox_entry("plan-1", "#ops", 100)})};
    ok(store->commit(first));

    auto again = processed(make_message("#ops", "m1", 100), {{"echo", "count", "2"}, {"echo", "extra", "x"}},
                           {outbox_entry("plan-2", "#ops", 100)});
    again.message.text = "changed";
    ok(store->commit(std::vector{again}));

    CHECK(ok(store->get_value("echo", "count")) == "1");
    CHECK_FALSE(ok(store->get_value("echo", "extra")));
    CHECK(ok(store->outbox_plan("plan-2")).empty());
    const auto logged = ok(store->messages("irc", "#ops", 0, 1000, 10));
    REQUIRE(logged.size() == 1);
    CHECK(logged[0].text == "text of m1");
}

STORE_TEST_CASE("a retried batch is harmless") {
    TestType factory;
    auto store = factory.open();
    std::vector<ProcessedMessage> batch;
    for (int i = 0; i < 3; ++i) {
        const std::string id = "m" + std::to_string(i);
        batch.push_back(processed(make_message("#ops", id, 100 + i), {{"bot", "seen", id}},
                                  {outbox_entry("plan-" + id, "#ops", 100 + i)}));
    }
    ok(store->commit(batch));
    ok(store->put_values(std::vector<KeyValueWrite>{{"bot", "seen", "later"}}));

    ok(store->commit(batch));

    CHECK(ids(ok(store->messages("irc", "#ops", 0, 1000, 10))) == std::vector<std::string>{"m0", "m1", "m2"});
    CHECK(ok(store->get_value("bot", "seen")) == "later");
    CHECK(ok(store->outbox_pending()).size() == 3);
    CHECK(ok(store->cursor("irc", "#ops")) == Cursor{"m2", 102});
}

STORE_TEST_CASE("a message repeated within one batch is processed once") {
    TestType factory;
    auto store = factory.open();
    const std::vector batch{processed(make_message("#ops", "m1", 100), {{"bot", "n", "1"}}),
                            processed(make_message("#ops", "m1", 100), {{"bot", "n", "2"}})};
    ok(store->commit(batch));

    CHECK(ok(store->get_value("bot", "n")) == "1");
    CHECK(ok(store->messages("irc", "#ops", 0, 1000, 10)).size() == 1);
}

STORE_TEST_CASE("a cursor advances to the newest processed message of its channel") {
    TestType factory;
    auto store = factory.open();
    CHECK_FALSE(ok(store->cursor("irc", "#ops")));

    ok(store->commit(std::vector{processed(make_message("#ops", "a", 100))}));
    CHECK(ok(store->cursor("irc", "#ops")) == Cursor{"a", 100});

    ok(store->commit(std::vector{processed(make_message("#ops", "b", 200)), processed(make_message("#dev", "x", 150)),
                                 processed(make_message("#ops", "c", 300)),
                                 processed(make_message("#ops", "c2", 300, "discord"))}));
    CHECK(ok(store->cursor("irc", "#ops")) == Cursor{"c", 300});
    CHECK(ok(store->cursor("irc", "#dev")) == Cursor{"x", 150});
    CHECK(ok(store->cursor("discord", "#ops")) == Cursor{"c2", 300});

    SECTION("cursors lists one connection's channels, or every connection's") {
        const auto irc = ok(store->cursors("irc"));
        REQUIRE(irc.size() == 2);
        CHECK(irc[0].channel == "#dev");
        CHECK(irc[0].cursor == Cursor{"x", 150});
        CHECK(irc[1].channel == "#ops");
        CHECK(irc[1].cursor == Cursor{"c", 300});

        const auto all = ok(store->cursors(""));
        REQUIRE(all.size() == 3);
        CHECK(all[0].connection == "discord");
        CHECK(ok(store->cursors("telegram")).empty());
    }
}

STORE_TEST_CASE("a cursor never moves back to an older message") {
    TestType factory;
    auto store = factory.open();
    ok(store->commit(std::vector{processed(make_message("#ops", "b", 200))}));

    SECTION("an older message in a later batch (a recovered one) leaves the cursor") {
        ok(store->commit(std::vector{processed(make_message("#ops", "a", 100))}));
        CHECK(ok(store->cursor("irc", "#ops")) == Cursor{"b", 200});
        CHECK(ok(store->is_processed({"irc", "#ops", "a"})));
    }
    SECTION("within a batch the cursor keeps the newest message") {
        ok(store->commit(
            std::vector{processed(make_message("#ops", "d", 400)), processed(make_message("#ops", "c", 300))}));
        CHECK(ok(store->cursor("irc", "#ops")) == Cursor{"d", 400});
    }
    SECTION("messages with the same timestamp move it forward in batch order") {
        ok(store->commit(
            std::vector{processed(make_message("#ops", "b1", 200)), processed(make_message("#ops", "b2", 200))}));
        CHECK(ok(store->cursor("irc", "#ops")) == Cursor{"b2", 200});
    }
}

STORE_TEST_CASE("connection state is kept per connection and key") {
    TestType factory;
    auto store = factory.open();
    CHECK_FALSE(ok(store->connection_state("telegram", "offset")));

    ok(store->put_connection_state("telegram", "offset", "41"));
    ok(store->put_connection_state("telegram", "offset", "42"));
    ok(store->put_connection_state("discord", "session_id", "abc"));

    CHECK(ok(store->connection_state("telegram", "offset")) == "42");
    CHECK(ok(store->connection_state("discord", "session_id")) == "abc");
    CHECK_FALSE(ok(store->connection_state("discord", "offset")));
}

STORE_TEST_CASE("bot key-value entries can be written, overwritten and erased") {
    TestType factory;
    auto store = factory.open();
    CHECK_FALSE(ok(store->get_value("echo", "k")));

    SECTION("put_values applies writes in order") {
        ok(store->put_values(std::vector<KeyValueWrite>{{"echo", "k", "1"},
                                                        {"echo", "k", "2"},
                                                        {"relay", "k", "other"},
                                                        {"echo", "gone", "x"},
                                                        {"echo", "gone", std::nullopt},
                                                        {"echo", "empty", ""}}));
        CHECK(ok(store->get_value("echo", "k")) == "2");
        CHECK(ok(store->get_value("relay", "k")) == "other");
        CHECK_FALSE(ok(store->get_value("echo", "gone")));
        CHECK(ok(store->get_value("echo", "empty")) == "");
    }
    SECTION("writes made while handling a message are applied with it, in order") {
        ok(store->commit(std::vector{
            processed(make_message("#ops", "m1", 100),
                      {{"echo", "a", "1"}, {"echo", "a", std::nullopt}, {"echo", "b", "x"}, {"echo", "b", "y"}})}));
        CHECK_FALSE(ok(store->get_value("echo", "a")));
        CHECK(ok(store->get_value("echo", "b")) == "y");
    }
}

STORE_TEST_CASE("the outbox tracks each recipient of a plan") {
    TestType factory;
    auto store = factory.open();
    OutboxEntry to_user = outbox_entry("plan-1", "alice", 50);
    to_user.recipient = Address::user("irc", "alice");
    to_user.reply_to = "m0";
    ok(store->outbox_add(std::vector{outbox_entry("plan-2", "#b", 200), outbox_entry("plan-1", "#a", 100), to_user}));

    SECTION("entries are listed per plan, in the order they were added") {
        const auto plan = ok(store->outbox_plan("plan-1"));
        REQUIRE(plan.size() == 2);
        CHECK(plan[0].recipient == Address::channel("irc", "#a"));
        CHECK(plan[1].recipient == Address::user("irc", "alice"));
        CHECK(plan[1].reply_to == "m0");
        CHECK(plan[1].text == "to alice");
        CHECK(plan[1].created_ms == 50);
        CHECK(plan[1].state == OutboxState::pending);
        CHECK(ok(store->outbox_plan("plan-9")).empty());
    }
    SECTION("pending entries are listed oldest first") {
        const auto pending = ok(store->outbox_pending());
        REQUIRE(pending.size() == 3);
        CHECK(pending[0].recipient.target == "alice");
        CHECK(pending[1].recipient.target == "#a");
        CHECK(pending[2].recipient.target == "#b");
    }
    SECTION("an update records state, sent id, attempts and error, and a sent entry is no longer pending") {
        OutboxEntry sent = outbox_entry("plan-1", "#a", 100);
        sent.state = OutboxState::sent;
        sent.sent_message_id = "p-77";
        sent.attempts = 2;
        sent.error = "rate_limited";
        ok(store->outbox_update(std::vector{sent}));

        const auto plan = ok(store->outbox_plan("plan-1"));
        REQUIRE(plan.size() == 2);
        CHECK(plan[0].state == OutboxState::sent);
        CHECK(plan[0].sent_message_id == "p-77");
        CHECK(plan[0].attempts == 2);
        CHECK(plan[0].error == "rate_limited");
        CHECK(ok(store->outbox_pending()).size() == 2);
    }
    SECTION("adding an entry again keeps the existing one") {
        OutboxEntry sent = outbox_entry("plan-1", "#a", 100);
        sent.state = OutboxState::sent;
        ok(store->outbox_update(std::vector{sent}));

        OutboxEntry replayed = outbox_entry("plan-1", "#a", 999);
        replayed.text = "different";
        ok(store->outbox_add(std::vector{replayed}));

        const auto plan = ok(store->outbox_plan("plan-1"));
        REQUIRE(plan.size() == 2);
        CHECK(plan[0].state == OutboxState::sent);
        CHECK(plan[0].text == "to #a");
        CHECK(plan[0].created_ms == 100);
    }
    SECTION("updating an entry that does not exist is an error") {
        const auto result = store->outbox_update(std::vector{outbox_entry("plan-9", "#a", 100)});
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().code == "outbox_entry_not_found");
        CHECK(result.error().message.find("plan-9") != std::string::npos);
    }
    SECTION("one update call records entries of several plans") {
        OutboxEntry sent = outbox_entry("plan-1", "#a", 100);
        sent.state = OutboxState::sent;
        sent.sent_message_id = "p-1";
        OutboxEntry failed = outbox_entry("plan-2", "#b", 200);
        failed.state = OutboxState::failed;
        failed.attempts = 3;
        failed.error = "forbidden";
        ok(store->outbox_update(std::vector{sent, failed}));

        CHECK(ok(store->outbox_plan("plan-1"))[0].sent_message_id == "p-1");
        const auto plan_2 = ok(store->outbox_plan("plan-2"));
        REQUIRE(plan_2.size() == 1);
        CHECK(plan_2[0].state == OutboxState::failed);
        CHECK(plan_2[0].attempts == 3);
        CHECK(plan_2[0].error == "forbidden");
        CHECK(ok(store->outbox_pending()).size() == 1);
        CHECK(store->outbox_update(std::vector<OutboxEntry>{}).has_value());
    }
    SECTION("an update call with a missing entry fails naming it, and still records the others") {
        OutboxEntry sent = outbox_entry("plan-1", "#a", 100);
        sent.state = OutboxState::sent;
        OutboxEntry also_sent = outbox_entry("plan-2", "#b", 200);
        also_sent.state = OutboxState::sent;
        const auto result = store->outbox_update(
            std::vector{sent, outbox_entry("plan-9", "#a", 100), outbox_entry("plan-1", "#zzz", 100), also_sent});
        REQUIRE_FALSE(result.has_value());
        CHECK(result.error().code == "outbox_entry_not_found");
        CHECK(result.error().message.find("plan-9") != std::string::npos);
        CHECK(ok(store->outbox_plan("plan-1"))[0].state == OutboxState::sent);
        CHECK(ok(store->outbox_plan("plan-2"))[0].state == OutboxState::sent);
        CHECK(ok(store->outbox_plan("plan-9")).empty());
        CHECK(ok(store->outbox_pending()).size() == 1);
    }
    SECTION("replies produced while handling a message enter the outbox with it") {
        ok(store->commit(
            std::vector{processed(make_message("#ops", "m1", 100), {}, {outbox_entry("plan-3", "#ops", 300)})}));
        CHECK(ok(store->outbox_plan("plan-3")).size() == 1);
        CHECK(ok(store->outbox_pending()).size() == 4);
    }
}

STORE_TEST_CASE("a plan with many recipients keeps, finds and updates each one, and its texts") {
    TestType factory;
    auto store = factory.open();
    std::vector<OutboxEntry> entries;
    for (int i = 0; i < 300; ++i) {
        OutboxEntry entry = outbox_entry("big", "#c" + std::to_string(i), 10);
        entry.text = i % 100 == 7 ? "odd one out" : "to everyone";
        if (i % 2 == 1) entry.recipient = Address::user("irc", "#c" + std::to_string(i));
        entries.push_back(entry);
    }
    entries[5].reply_to = "m-5";
    ok(store->outbox_add(std::vector(entries.begin(), entries.begin() + 150)));
    ok(store->outbox_add(std::vector{outbox_entry("other", "#c1", 5)}));
    OutboxEntry replayed = entries[3];
    replayed.text = "changed";
    ok(store->outbox_add(std::vector{replayed}));  // kept as it was
    ok(store->outbox_add(std::vector(entries.begin() + 140, entries.end())));

    std::vector<OutboxEntry> updates;
    for (int i = 0; i < 300; i += 3) {
        OutboxEntry update = entries[i];
        update.state = OutboxState::sent;
        update.sent_message_id = "p-" + std::to_string(i);
        updates.push_back(update);
    }
    ok(store->outbox_update(updates));

    const auto plan = ok(store->outbox_plan("big"));
    REQUIRE(plan.size() == 300);
    for (int i = 0; i < 300; ++i) {
        INFO("entry " << i);
        CHECK(plan[i].recipient == entries[i].recipient);
        CHECK(plan[i].text == entries[i].text);
        CHECK(plan[i].reply_to == entries[i].reply_to);
        CHECK(plan[i].state == (i % 3 == 0 ? OutboxState::sent : OutboxState::pending));
        CHECK(plan[i].sent_message_id == (i % 3 == 0 ? "p-" + std::to_string(i) : ""));
    }
    CHECK(ok(store->outbox_plan("other")).size() == 1);
    CHECK(ok(store->outbox_pending()).size() == 201);
}

STORE_TEST_CASE("a plan's entries are added in one call that returns what the plan had before") {
    TestType factory;
    auto store = factory.open();
    std::vector<Address> addresses;
    for (int i = 0; i < 40; ++i) {
        addresses.push_back(i % 2 == 0 ? Address::channel("irc", "#r" + std::to_string(i))
                                       : Address::user("irc", "u" + std::to_string(i)));
    }
    const auto add = [&](std::size_t from, std::size_t to, std::string_view text,
                         std::optional<std::string_view> reply_to) {
        std::vector<OutboxRecipient> recipients;
        for (std::size_t i = from; i < to; ++i) {
            OutboxRecipient recipient;
            recipient.address = &addresses[i];
            if (i == 3) {
                recipient.state = OutboxState::failed;
                recipient.error = "unreachable";
            }
            recipients.push_back(recipient);
        }
        OutboxPlanAdd plan;
        plan.plan_id = "fan";
        plan.text = text;
        plan.reply_to = reply_to;
        plan.created_ms = 70;
        plan.recipients = recipients;
        return ok(store->outbox_add_plan(plan));
    };

    CHECK(add(0, 30, "hello all", "m-9").empty());  // a new plan had nothing
    const auto entries = ok(store->outbox_plan("fan"));
    REQUIRE(entries.size() == 30);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        INFO("entry " << i);
        CHECK(entries[i].plan_id == "fan");
        CHECK(entries[i].recipient == addresses[i]);
        CHECK(entries[i].text == "hello all");
        CHECK(entries[i].reply_to == "m-9");
        CHECK(entries[i].created_ms == 70);
        CHECK(entries[i].attempts == 0);
        CHECK(entries[i].sent_message_id.empty());
        CHECK(entries[i].state == (i == 3 ? OutboxState::failed : OutboxState::pending));
        CHECK(entries[i].error == (i == 3 ? "unreachable" : ""));
    }
    CHECK(ok(store->outbox_pending()).size() == 29);

    SECTION("adding again returns the entries as they were, keeps them, and adds only the new recipients") {
        OutboxEntry sent = entries[5];
        sent.state = OutboxState::sent;
        sent.sent_message_id = "p-5";
        ok(store->outbox_update(std::vector{sent}));

        const auto before = add(20, 40, "changed", std::nullopt);
        REQUIRE(before.size() == 30);
        CHECK(before[5].state == OutboxState::sent);
        CHECK(before[5].sent_message_id == "p-5");
        const auto after = ok(store->outbox_plan("fan"));
        REQUIRE(after.size() == 40);
        CHECK(after[25].text == "hello all");  // kept
        CHECK(after[25].reply_to == "m-9");
        CHECK(after[35].recipient == addresses[35]);  // added, with this call's message
        CHECK(after[35].text == "changed");
        CHECK_FALSE(after[35].reply_to.has_value());
        CHECK(ok(store->outbox_pending()).size() == 38);
    }
    SECTION("entries added for a plan are updated like any other") {
        std::vector<OutboxEntry> updates(entries.begin() + 10, entries.begin() + 20);
        for (OutboxEntry& update : updates) update.state = OutboxState::sent;
        ok(store->outbox_update(updates));
        CHECK(ok(store->outbox_pending()).size() == 19);
    }
}

// Most plans are one reply to one recipient, which a store may keep apart from larger plans (the memory store keeps
// it inline): such a plan must keep its entry, state and text when it grows.
STORE_TEST_CASE("a plan of one recipient keeps its entry when recipients and texts are added to it later") {
    TestType factory;
    auto store = factory.open();
    const Address first = Address::user("irc", "alice");
    const Address second = Address::channel("irc", "#ops");
    const auto add = [&](std::vector<const Address*> to, std::string_view text, std::int64_t created_ms) {
        std::vector<OutboxRecipient> recipients;
        for (const Address* address : to) recipients.push_back(OutboxRecipient{address, OutboxState::pending, {}});
        OutboxPlanAdd plan;
        plan.plan_id = "reply";
        plan.text = text;
        plan.created_ms = created_ms;
        plan.recipients = recipients;
        return ok(store->outbox_add_plan(plan));
    };

    CHECK(add({&first}, "hi alice", 100).empty());
    OutboxEntry sent = ok(store->outbox_plan("reply")).at(0);
    sent.state = OutboxState::sent;
    sent.sent_message_id = "p-1";
    sent.attempts = 2;
    ok(store->outbox_update(std::vector{sent}));

    const auto before = add({&first, &second}, "hi all", 300);  // alice is kept as she is, #ops added
    REQUIRE(before.size() == 1);
    CHECK(before[0].state == OutboxState::sent);
    CHECK(before[0].sent_message_id == "p-1");
    auto after = ok(store->outbox_plan("reply"));
    REQUIRE(after.size() == 2);
    CHECK(after[0].recipient == first);
    CHECK(after[0].text == "hi alice");
    CHECK(after[0].state == OutboxState::sent);
    CHECK(after[0].sent_message_id == "p-1");
    CHECK(after[0].attempts == 2);
    CHECK(after[1].recipient == second);
    CHECK(after[1].text == "hi all");
    CHECK(after[1].state == OutboxState::pending);

    // One entry at a time, through outbox_add, as a host stages replies.
    std::vector<OutboxEntry> singles;
    for (int i = 0; i < 20; ++i) {
        OutboxEntry entry = outbox_entry("reply", "#r" + std::to_string(i), 300);
        ok(store->outbox_add(std::vector{entry}));
        singles.push_back(entry);
    }
    after = ok(store->outbox_plan("reply"));
    REQUIRE(after.size() == 22);
    CHECK(after[21].recipient == singles.back().recipient);
    CHECK(after[21].text == "to #r19");
    singles.back().state = OutboxState::failed;
    singles.back().error = "gone";
    ok(store->outbox_update(std::vector{singles.back()}));
    CHECK(ok(store->outbox_plan("reply"))[21].error == "gone");
    CHECK(ok(store->outbox_pending()).size() == 20);

    // Prune takes alice (finished, older than the cutoff) and keeps the rest.
    ok(store->prune(200));
    after = ok(store->outbox_plan("reply"));
    REQUIRE(after.size() == 21);
    CHECK(after[0].recipient == second);
    CHECK(after[0].text == "hi all");
}

STORE_TEST_CASE("the message log returns a channel's messages in a time range, oldest first, up to a limit") {
    TestType factory;
    auto store = factory.open();
    std::vector<ProcessedMessage> batch;
    for (const auto& [id, ts] : std::vector<std::pair<std::string, std::int64_t>>{
             {"m30", 30}, {"m10", 10}, {"m20", 20}, {"m20b", 20}, {"m40", 40}}) {
        batch.push_back(processed(make_message("#ops", id, ts)));
    }
    batch.push_back(processed(make_message("#dev", "d20", 20)));
    batch.push_back(processed(make_message("#ops", "x20", 20, "discord")));
    ok(store->commit(batch));

    CHECK(ids(ok(store->messages("irc", "#ops", 0, 100, 100))) ==
          std::vector<std::string>{"m10", "m20", "m20b", "m30", "m40"});
    CHECK(ids(ok(store->messages("irc", "#ops", 20, 40, 100))) == std::vector<std::string>{"m20", "m20b", "m30"});
    CHECK(ids(ok(store->messages("irc", "#ops", 0, 100, 2))) == std::vector<std::string>{"m10", "m20"});
    CHECK(ok(store->messages("irc", "#ops", 0, 100, 0)).empty());
    CHECK(ids(ok(store->messages("irc", "#dev", 0, 100, 100))) == std::vector<std::string>{"d20"});
    CHECK(ok(store->messages("irc", "#none", 0, 100, 100)).empty());

    SECTION("every field of a logged message comes back") {
        Message full = make_message("#full", "f1", 5000);
        full.author = Author{"42", "Ada", true};
        full.text = "hello\nworld";
        full.kind = MessageKind::private_message;
        full.reply_to = "f0";
        full.recovered = true;
        full.raw = R"({"id":"f1"})";
        ok(store->commit(std::vector{processed(full)}));

        const auto logged = ok(store->messages("irc", "#full", 0, 10000, 1));
        REQUIRE(logged.size() == 1);
        const Message& got = logged[0];
        CHECK(got.id == "f1");
        CHECK(got.connection == "irc");
        CHECK(got.channel == "#full");
        CHECK(got.author.id == "42");
        CHECK(got.author.display_name == "Ada");
        CHECK(got.author.is_bot);
        CHECK(got.text == "hello\nworld");
        CHECK(got.timestamp_ms == 5000);
        CHECK(got.kind == MessageKind::private_message);
        CHECK(got.reply_to == "f0");
        CHECK(got.recovered);
        CHECK(got.raw == R"({"id":"f1"})");
        CHECK_FALSE(ok(store->messages("irc", "#ops", 10, 11, 1))[0].reply_to);
    }
}

STORE_TEST_CASE("prune forgets dedup entries and logged messages older than the cutoff") {
    TestType factory;
    auto store = factory.open();
    ok(store->commit(std::vector{processed(make_message("#ops", "old1", 100)),
                                 processed(make_message("#dev", "old2", 150)),
                                 processed(make_message("#ops", "new", 200))}));

    CHECK(ok(store->prune(200)) == 2);

    CHECK_FALSE(ok(store->is_processed({"irc", "#ops", "old1"})));
    CHECK_FALSE(ok(store->is_processed({"irc", "#dev", "old2"})));
    CHECK(ok(store->is_processed({"irc", "#ops", "new"})));
    CHECK(ids(ok(store->messages("irc", "#ops", 0, 1000, 10))) == std::vector<std::string>{"new"});
    CHECK(ok(store->messages("irc", "#dev", 0, 1000, 10)).empty());
    CHECK(ok(store->cursor("irc", "#dev")) == Cursor{"old2", 150});
    CHECK(ok(store->prune(200)) == 0);
}

STORE_TEST_CASE("prune forgets finished outbox entries created before the cutoff, never a pending one") {
    TestType factory;
    auto store = factory.open();
    const auto with_state = [](OutboxEntry entry, OutboxState state) {
        entry.state = state;
        return entry;
    };
    ok(store->outbox_add(std::vector{outbox_entry("old", "#sent", 100), outbox_entry("old", "#failed", 100),
                                     outbox_entry("old", "#pending", 100), outbox_entry("new", "#sent", 300),
                                     outbox_entry("gone", "#sent", 100)}));
    ok(store->outbox_update(std::vector{with_state(outbox_entry("old", "#sent", 100), OutboxState::sent),
                                        with_state(outbox_entry("old", "#failed", 100), OutboxState::failed),
                                        with_state(outbox_entry("new", "#sent", 300), OutboxState::sent),
                                        with_state(outbox_entry("gone", "#sent", 100), OutboxState::sent)}));

    ok(store->prune(200));

    const auto targets = [&](const std::string& plan) {
        std::vector<std::string> out;
        for (const OutboxEntry& entry : ok(store->outbox_plan(plan))) out.push_back(entry.recipient.target);
        return out;
    };
    CHECK(targets("old") == std::vector<std::string>{"#pending"});
    CHECK(targets("new") == std::vector<std::string>{"#sent"});
    CHECK(targets("gone").empty());
    CHECK(ok(store->outbox_pending()).size() == 1);
    // A plan emptied by prune is a new plan to the store: its id can be used again.
    ok(store->outbox_add(std::vector{outbox_entry("gone", "#again", 400)}));
    CHECK(targets("gone") == std::vector<std::string>{"#again"});
}

STORE_TEST_CASE("a store can be used from several threads at once") {
    TestType factory;
    auto store = factory.open();
    constexpr int kThreads = 4;
    constexpr int kBatches = 50;
    constexpr int kBatchSize = 8;
    std::vector<std::thread> threads;
    std::vector<std::string> errors(kThreads);
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            const std::string channel = "#t" + std::to_string(t);
            for (int b = 0; b < kBatches; ++b) {
                std::vector<ProcessedMessage> batch;
                for (int i = 0; i < kBatchSize; ++i) {
                    const int n = b * kBatchSize + i;
                    batch.push_back(
                        processed(make_message(channel, std::to_string(n), n), {{"bot", channel, std::to_string(n)}}));
                }
                auto committed = store->commit(batch);
                auto read = store->cursor("irc", channel);
                if (!committed || !read) {
                    errors[t] = !committed ? committed.error().to_string() : read.error().to_string();
                    return;
                }
            }
        });
    }
    for (auto& thread : threads) thread.join();

    for (int t = 0; t < kThreads; ++t) {
        INFO("thread " << t);
        CHECK(errors[t].empty());
        const std::string channel = "#t" + std::to_string(t);
        const std::string last = std::to_string(kBatches * kBatchSize - 1);
        CHECK(ok(store->cursor("irc", channel)) == Cursor{last, kBatches * kBatchSize - 1});
        CHECK(ok(store->get_value("bot", channel)) == last);
        CHECK(ok(store->messages("irc", channel, 0, 1'000'000, 100'000)).size() == kBatches * kBatchSize);
    }
}
