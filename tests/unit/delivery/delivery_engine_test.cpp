// The delivery engine (DESIGN §3): statuses and per-recipient outcomes, atomic vs best effort, compensation, retries,
// deadlines, per-connection limits, the outbox as the memory of a plan, and resume after a restart.

#include <algorithm>
#include <boost/asio/thread_pool.hpp>
#include <catch2/catch.hpp>
#include <set>

#include "harness.hpp"
#include "test_support.hpp"

using namespace switchboard;
using namespace switchboard::delivery_test;
using switchboard::testing_support::wait_until;
using namespace std::chrono_literals;

namespace {

OutboxEntry entry(std::string plan_id, Address to, std::string text, OutboxState state = OutboxState::pending,
                  std::string sent_id = {}, std::optional<std::string> reply_to = {}) {
    OutboxEntry e;
    e.plan_id = std::move(plan_id);
    e.recipient = std::move(to);
    e.text = std::move(text);
    e.reply_to = std::move(reply_to);
    e.state = state;
    e.sent_message_id = std::move(sent_id);
    return e;
}

const Address kAlice = Address::user("irc", "alice");
const Address kOps = Address::channel("irc", "#ops");
const Address kDev = Address::channel("irc", "#dev");
const Address kDiscord = Address::channel("discord", "123");

// Engine options for retry tests: @p attempts per recipient, backing off from 1 ms.
routing::EngineOptions retries(std::uint32_t attempts) {
    routing::EngineOptions options;
    options.max_attempts = attempts;
    options.initial_backoff = 1ms;
    return options;
}

// Waits for the report of a plan the deadline cut before anything went out on @p connector.
void check_cut_before_sending(ReportSink& sink, const FakeConnector& connector) {
    const auto report = sink.wait(1s);
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(report->error_code == "deadline_exceeded");
    CHECK(connector.send_count() == 0);
}

std::vector<Address> channels(const std::string& connection, int n) {
    std::vector<Address> to;
    to.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) to.push_back(Address::channel(connection, "#c" + std::to_string(i)));
    return to;
}

}  // namespace

TEST_CASE("A plan whose every recipient accepts the message is reported delivered with each platform message id",
          "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SinkConnector>();
    auto discord = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    h.engine->add_connection("discord", discord, {});
    ReportSink sink;

    h.engine->execute(planned("p1", {kOps, kAlice, kDiscord}, "hi all"), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(report->error_code.empty());
    REQUIRE(report->recipients.size() == 3);
    CHECK(report->recipients[0].address == kOps);  // in plan order
    CHECK(report->recipients[0].name == "irc/#ops");
    const auto outbox = outbox_of(h.store(), "p1");
    for (const RecipientOutcome& outcome : report->recipients) {
        INFO(outcome.address.to_string());
        CHECK(outcome.delivered);
        CHECK(outcome.error_code.empty());
        CHECK_FALSE(outcome.message_id.empty());
        const OutboxEntry& entry = outbox.at(outcome.address.to_string());
        CHECK(entry.state == OutboxState::sent);
        CHECK(entry.sent_message_id == outcome.message_id);
        CHECK(entry.attempts == 1);
        CHECK(entry.text == "hi all");
    }
    const auto sent = irc->sends();
    REQUIRE(sent.size() == 2);
    CHECK(sent[0].text == "hi all");
    CHECK(sent[0].idempotency_key == "p1|irc/#ops");
    CHECK(sent[1].idempotency_key == "p1|irc/@alice");
    CHECK(discord->send_count() == 1);
    CHECK(h.engine->wait_idle(1s));
}

TEST_CASE("An inline connector, an inline store and a private plan report before execute returns", "[delivery]") {
    Harness h;
    h.engine->add_connection("irc", std::make_shared<SinkConnector>(), {});
    ReportSink sink;
    h.engine->execute(planned("p1", {kAlice}), true, sink.callback());
    CHECK(sink.calls() == 1);  // no hop through the io_context, no timer
}

TEST_CASE("execute_all records what inline sends did in one store call per round of 256, before the reports",
          "[delivery]") {
    ThreadNotingStore store;
    Harness h({}, {}, &store);
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    std::vector<routing::Execution> executions;
    std::vector<OutboxEntry> persisted;
    ReportSink first_report;
    int reports = 0;
    int recorded_before_report = 0;
    for (int i = 0; i < 300; ++i) {
        routing::Execution& execution = executions.emplace_back();
        execution.delivery = planned("reply-" + std::to_string(i), {kOps});
        execution.delivery.plan.batch_size = 1;
        persisted.push_back(entry(execution.delivery.plan_id, kOps, "hello"));
        if (i == 0) {
            execution.done = first_report.callback();
        } else if (i != 1) {  // the second one has no callback at all
            execution.done = [&, plan_id = execution.delivery.plan_id](DeliveryReport report) {
                ++reports;
                const auto outbox = outbox_of(store, plan_id);
                if (report.status == DeliveryStatus::delivered && outbox.at("irc/#ops").state == OutboxState::sent) {
                    ++recorded_before_report;
                }
            };
        }
    }
    REQUIRE(store.outbox_add(persisted).has_value());  // as the pipeline's commit does

    h.engine->execute_all(std::move(executions), true);

    CHECK(irc->send_count() == 300);
    CHECK(store.update_sizes() == std::vector<std::size_t>{256, 44});
    CHECK(reports == 298);
    CHECK(recorded_before_report == 298);
    REQUIRE(first_report.wait(0ms));
    CHECK(first_report.wait(0ms)->status == DeliveryStatus::delivered);
    CHECK(store.outbox_pending()->empty());
    CHECK(h.engine->wait_idle(1s));
}

TEST_CASE("An inline fan-out is recorded in rounds: never more sends unrecorded than the concurrency limit",
          "[delivery]") {
    ThreadNotingStore store;
    Harness h({}, {}, &store);
    auto irc = std::make_shared<SinkConnector>();
    routing::ConnectionLimits limits;
    limits.concurrency = 4;
    h.engine->add_connection("irc", irc, limits);
    std::size_t recorded = 0;
    std::size_t most_unrecorded = 0;
    store.on_update = [&](std::span<const OutboxEntry> entries) {
        most_unrecorded = std::max(most_unrecorded, irc->send_count() - recorded);
        recorded += entries.size();
    };
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 100));
    delivery.plan.batch_size = 10;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait(0ms);
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(recorded == 100);
    CHECK(most_unrecorded <= 4);
    CHECK(store.update_sizes().size() >= 25);
    CHECK(store.outbox_pending()->empty());
}

TEST_CASE("A best-effort plan skips unreachable members and reports partial naming them", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    h.directory.set_unreachable(kDev);
    ReportSink sink;

    h.engine->execute(planned("p1", {kOps, kDev, kAlice}), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::partial);
    CHECK(report->error_code == "unreachable");
    const auto outcomes = outcomes_of(*report);
    CHECK(outcomes.at("irc/#ops").delivered);
    CHECK(outcomes.at("irc/@alice").delivered);
    CHECK_FALSE(outcomes.at("irc/#dev").delivered);
    CHECK(outcomes.at("irc/#dev").error_code == "unreachable");
    CHECK(irc->send_count() == 2);
    for (const auto& send : irc->sends()) CHECK_FALSE(send.to == kDev);
    const auto outbox = outbox_of(h.store(), "p1");
    CHECK(outbox.at("irc/#dev").state == OutboxState::failed);
    CHECK(outbox.at("irc/#dev").error == "unreachable");
}

TEST_CASE("A best-effort plan where nobody is reachable is rejected", "[delivery]") {
    Harness h;
    h.engine->add_connection("irc", std::make_shared<SinkConnector>(), {});
    h.directory.set_unreachable(kOps);
    ReportSink sink;
    h.engine->execute(planned("p1", {kOps}), false, sink.callback());
    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::rejected);
    CHECK(report->error_code == "unreachable");
}

TEST_CASE("An atomic plan with an unreachable member sends nothing, writes nothing and is rejected", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    h.directory.set_unreachable(kDev);
    ReportSink sink;
    auto delivery = planned("p1", {kOps, kDev, kAlice});
    delivery.plan.mode = DeliveryMode::atomic;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::rejected);
    CHECK(report->error_code == "atomic_unreachable");
    REQUIRE(report->recipients.size() == 3);  // everyone is listed
    const auto outcomes = outcomes_of(*report);
    CHECK(outcomes.at("irc/#dev").error_code == "unreachable");
    CHECK(outcomes.at("irc/#ops").error_code == "atomic_unreachable");
    CHECK(outcomes.at("irc/@alice").error_code == "atomic_unreachable");
    for (const auto& outcome : report->recipients) CHECK_FALSE(outcome.delivered);
    CHECK(irc->send_count() == 0);
    CHECK(outbox_of(h.store(), "p1").empty());
}

TEST_CASE("An atomic plan persisted with its inbound message marks its entries failed when a member is unreachable",
          "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    h.directory.set_unreachable(kDev);
    std::vector<OutboxEntry> entries;
    for (const Address& to : {kOps, kDev}) entries.push_back(entry("p1", to, "hello"));
    REQUIRE(h.store().outbox_add(entries).has_value());
    ReportSink sink;
    auto delivery = planned("p1", {kOps, kDev});
    delivery.plan.mode = DeliveryMode::atomic;

    h.engine->execute(std::move(delivery), true, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::rejected);
    CHECK(irc->send_count() == 0);
    // A restart must not send them.
    CHECK(h.store().outbox_pending()->empty());
    CHECK(outbox_of(h.store(), "p1").at("irc/#ops").error == "atomic_unreachable");
}

TEST_CASE("A recipient on a connection without a connector ends unknown_connection", "[delivery]") {
    Harness h;
    h.engine->add_connection("irc", std::make_shared<SinkConnector>(), {});
    ReportSink sink;
    h.engine->execute(planned("p1", {kOps, Address::channel("nowhere", "#x")}), false, sink.callback());
    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::partial);
    CHECK(report->error_code == "unknown_connection");
    CHECK(outcomes_of(*report).at("nowhere/#x").error_code == "unknown_connection");
}

TEST_CASE("Permanent failures are reported with the connector's code", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<FailingConnector>(std::set<std::string>{"irc/#dev"}, "forbidden");
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;

    SECTION("partial when others got it") {
        h.engine->execute(planned("p1", {kOps, kDev}), false, sink.callback());
        const auto report = sink.wait();
        REQUIRE(report);
        CHECK(report->status == DeliveryStatus::partial);
        CHECK(report->error_code == "forbidden");
        const auto outcomes = outcomes_of(*report);
        CHECK(outcomes.at("irc/#ops").delivered);
        CHECK(outcomes.at("irc/#dev").error_code == "forbidden");
        const auto outbox = outbox_of(h.store(), "p1");
        CHECK(outbox.at("irc/#dev").state == OutboxState::failed);
        CHECK(outbox.at("irc/#dev").error == "forbidden");
        CHECK(outbox.at("irc/#dev").attempts == 1);  // a permanent failure is not retried
    }
    SECTION("rejected when nobody did") {
        irc->set_failing({"irc/#ops", "irc/#dev"}, "blocked");
        h.engine->execute(planned("p1", {kOps, kDev}), false, sink.callback());
        const auto report = sink.wait();
        REQUIRE(report);
        CHECK(report->status == DeliveryStatus::rejected);
        CHECK(report->error_code == "blocked");
        CHECK(irc->send_count() == 2);
    }
}

TEST_CASE("A retryable failure is retried after the connector's retry_after and then delivered", "[delivery]") {
    routing::EngineOptions options;
    options.initial_backoff = 5ms;
    Harness h(options);
    auto irc = std::make_shared<FlakyConnector>(2, 60);
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;

    h.engine->execute(planned("p1", {kOps}), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(report->recipients.at(0).message_id == "late-#ops");
    const auto sends = irc->sends();
    REQUIRE(sends.size() == 3);
    for (std::size_t i = 1; i < sends.size(); ++i) {
        CHECK(sends[i].at - sends[i - 1].at >= 60ms);  // the platform's retry_after beats the 5 ms backoff
        CHECK(sends[i].idempotency_key == sends[0].idempotency_key);
    }
    const auto entry = outbox_of(h.store(), "p1").at("irc/#ops");
    CHECK(entry.state == OutboxState::sent);
    CHECK(entry.attempts == 3);
}

TEST_CASE("Without a retry_after, retries back off exponentially from the initial backoff", "[delivery]") {
    routing::EngineOptions options;
    options.initial_backoff = 20ms;
    Harness h(options);
    auto irc = std::make_shared<FlakyConnector>(3, 0);
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;

    h.engine->execute(planned("p1", {kOps}), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    const auto sends = irc->sends();
    REQUIRE(sends.size() == 4);
    CHECK(sends[1].at - sends[0].at >= 20ms);
    CHECK(sends[2].at - sends[1].at >= 40ms);
    CHECK(sends[3].at - sends[2].at >= 80ms);
}

TEST_CASE("A recipient still failing after max_attempts ends retryable with its code and the largest retry-after",
          "[delivery]") {
    Harness h(retries(3));
    auto irc = std::make_shared<FlakyConnector>(100, 30);
    h.engine->add_connection("irc", irc, {});
    h.engine->add_connection("discord", std::make_shared<SinkConnector>(), {});
    ReportSink sink;

    h.engine->execute(planned("p1", {kOps, kDiscord}), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(report->error_code == "rate_limited");
    CHECK(report->retry_after_ms >= 30);
    const auto outcomes = outcomes_of(*report);
    CHECK(outcomes.at("discord/123").delivered);
    CHECK(outcomes.at("irc/#ops").error_code == "rate_limited");
    CHECK(irc->send_count() == 3);
    // Still pending, so a retry of the envelope or a restart finishes it.
    const auto entry = outbox_of(h.store(), "p1").at("irc/#ops");
    CHECK(entry.state == OutboxState::pending);
    CHECK(entry.error == "rate_limited");
    CHECK(entry.attempts == 3);
}

TEST_CASE("Recipients left retryable wait for their connection and go out once when it is back", "[delivery]") {
    Harness h(retries(3));
    auto irc = std::make_shared<FlakyConnector>(3, 1);  // down for three attempts
    h.engine->add_connection("irc", irc, {});
    h.engine->add_connection("discord", std::make_shared<SinkConnector>(), {});
    ReportSink sink;

    h.engine->execute(planned("p1", {kOps, kDev, kDiscord}), false, sink.callback());
    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 2);

    h.engine->retry_parked("discord");  // another connection: nothing of irc goes out
    CHECK(h.engine->parked() == 2);
    const std::size_t sends_before = irc->send_count();

    h.engine->retry_parked("irc");
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 0);
    CHECK(irc->send_count() == sends_before + 2);
    const auto outbox = outbox_of(h.store(), "p1");
    CHECK(outbox.at("irc/#ops").state == OutboxState::sent);
    CHECK(outbox.at("irc/#dev").state == OutboxState::sent);
    CHECK(outbox.at("irc/#ops").attempts == 4);  // counted over both runs
    CHECK(h.logger.count_containing("'irc' is back; sending again 2 recipient(s)") == 1);

    h.engine->retry_parked("irc");  // nothing is left: nobody gets it twice
    CHECK(h.engine->wait_idle(5s));
    CHECK(irc->send_count() == sends_before + 2);
}

TEST_CASE("What waits for a connection that never drops goes out again by itself, at growing delays", "[delivery]") {
    auto options = retries(2);
    options.parked_retry = 100ms;
    Harness h(options);
    auto irc = std::make_shared<FlakyConnector>(4, 1);  // the first run's two attempts and the first sweep's fail
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;

    const auto start = std::chrono::steady_clock::now();
    h.engine->execute(planned("p1", {kOps}), false, sink.callback());
    REQUIRE(sink.wait());
    CHECK(sink.wait()->status == DeliveryStatus::retryable);

    // Nobody calls retry_parked(): the connection stays up, so it never comes back.
    CHECK(wait_until([&] { return outbox_of(h.store(), "p1").at("irc/#ops").state == OutboxState::sent; }, 5s));
    CHECK(h.engine->wait_idle(5s));
    CHECK(outbox_of(h.store(), "p1").at("irc/#ops").state == OutboxState::sent);
    CHECK(std::chrono::steady_clock::now() - start >= 300ms);  // a sweep after 100 ms, the next 200 ms later
    CHECK(irc->send_count() == 5);
    CHECK(h.engine->parked() == 0);
    CHECK(h.logger.count_containing("sending again 1 recipient(s) on 'irc' that plans left pending (it did not drop") ==
          2);

    std::this_thread::sleep_for(500ms);  // nothing waits any more: no sweep sends it again
    CHECK(irc->send_count() == 5);
}

TEST_CASE("A sweep sends one plan's waiting recipients first, and the rest once that plan is no longer retryable",
          "[delivery]") {
    auto options = retries(2);
    options.parked_retry = 200ms;
    Harness h(options);
    auto irc = std::make_shared<FlakyConnector>(4, 1);  // each one's first run (two attempts) and two more fail
    h.engine->add_connection("irc", irc, {});
    ReportSink first;
    ReportSink second;
    h.engine->execute(planned("p1", {kOps}), false, first.callback());
    h.engine->execute(planned("p2", {kDev}), false, second.callback());
    REQUIRE(first.wait());
    REQUIRE(second.wait());
    CHECK(h.engine->wait_idle(5s));
    CHECK(irc->send_count() == 4);
    CHECK(h.engine->parked() == 2);

    // The first sweep (after 200 ms) tries one plan: its two attempts fail, and the other plan is not sent at all.
    CHECK(wait_until([&] { return irc->send_count() >= 6; }, 5s));
    CHECK(h.engine->wait_idle(5s));
    CHECK(irc->send_count() == 6);  // the next sweep is 400 ms later
    CHECK(h.engine->parked() == 2);
    CHECK(h.logger.count_containing("the other 1 waiting there follow once these are no longer retryable") == 1);

    // The next sweeps: the plan tried gets through, so the other goes out at once (and fails twice more, then
    // gets through at the sweep after). Everyone has the message once.
    CHECK(wait_until([&] { return h.engine->parked() == 0 && irc->send_count() == 10; }, 5s));
    CHECK(h.engine->wait_idle(5s));
    CHECK(outbox_of(h.store(), "p1").at("irc/#ops").state == OutboxState::sent);
    CHECK(outbox_of(h.store(), "p2").at("irc/#dev").state == OutboxState::sent);
    const auto sent = irc->sends();
    CHECK(std::count_if(sent.begin(), sent.end(), [](const SendRecord& m) { return m.to == kOps; }) == 5);
    CHECK(std::count_if(sent.begin(), sent.end(), [](const SendRecord& m) { return m.to == kDev; }) == 5);
}

TEST_CASE("Successive sweeps try the waiting plans in turn: one that keeps failing does not hold back the others",
          "[delivery]") {
    auto options = retries(2);
    options.parked_retry = 100ms;
    Harness h(options);
    auto irc = std::make_shared<FakeConnector>(FakeConnector::Mode::inline_completion);
    irc->set_behaviour([](const OutboundMessage& message, int attempt) -> Result<SentMessage> {
        if (message.to == kOps || attempt <= 2) return fail_retryable("rate_limited", "the fake is rate limited", 1);
        return SentMessage{"ok-" + message.to.target};
    });
    h.engine->add_connection("irc", irc, {});
    ReportSink first;
    ReportSink second;
    h.engine->execute(planned("p1", {kOps}), false, first.callback());  // never gets through
    h.engine->execute(planned("p2", {kDev}), false, second.callback());
    REQUIRE(first.wait());
    REQUIRE(second.wait());
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 2);

    // The first sweep tries p1 and fails; the next one tries p2, which gets through.
    CHECK(wait_until([&] { return outbox_of(h.store(), "p2").at("irc/#dev").state == OutboxState::sent; }, 5s));
    CHECK(h.engine->wait_idle(5s));
    const auto sent = irc->sends();
    CHECK(std::count_if(sent.begin(), sent.end(), [](const SendRecord& m) { return m.to == kDev; }) == 3);
    CHECK(outbox_of(h.store(), "p1").at("irc/#ops").state == OutboxState::pending);
    CHECK(wait_until([&] { return h.engine->parked() == 1; }, 5s));  // p1, still waiting
}

TEST_CASE("The sweep leaves what waits for an unreachable connection until the directory finds it reachable",
          "[delivery]") {
    auto options = retries(2);
    options.parked_retry = 50ms;
    Harness h(options);
    auto irc = std::make_shared<FlakyConnector>(2, 1);  // the first run's two attempts fail, the next succeeds
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    h.engine->execute(planned("p1", {kOps}), false, sink.callback());
    REQUIRE(sink.wait());
    CHECK(h.engine->wait_idle(5s));
    h.directory.set_unreachable(kOps);  // the connection went down: it says when it is back

    std::this_thread::sleep_for(400ms);  // sweeps at 50, 150 and 350 ms
    CHECK(irc->send_count() == 2);
    CHECK(h.engine->parked() == 1);

    h.directory.set_unreachable(kOps, false);  // up again, though nobody called retry_parked()
    CHECK(wait_until([&] { return irc->send_count() >= 3; }, 5s));
    CHECK(h.engine->wait_idle(5s));
    CHECK(irc->send_count() == 3);
    CHECK(h.engine->parked() == 0);
    CHECK(outbox_of(h.store(), "p1").at("irc/#ops").state == OutboxState::sent);
}

TEST_CASE("A plan run again under the same id takes over what its earlier run left waiting", "[delivery]") {
    Harness h(retries(2));
    auto irc = std::make_shared<FlakyConnector>(2, 1);
    h.engine->add_connection("irc", irc, {});
    ReportSink first;
    h.engine->execute(planned("p1", {kOps}), false, first.callback());
    REQUIRE(first.wait());
    CHECK(first.wait()->status == DeliveryStatus::retryable);
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 1);

    ReportSink second;  // the bot retries the envelope with the same key
    h.engine->execute(planned("p1", {kOps}), false, second.callback());
    REQUIRE(second.wait());
    CHECK(second.wait()->status == DeliveryStatus::delivered);
    CHECK(h.engine->parked() == 0);

    h.engine->retry_parked("irc");
    CHECK(h.engine->wait_idle(5s));
    CHECK(irc->send_count() == 3);
}

TEST_CASE("Nothing waiting for a connection is sent once its connector is gone", "[delivery]") {
    Harness h(retries(1));
    auto irc = std::make_shared<FlakyConnector>(1, 1);
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    h.engine->execute(planned("p1", {kOps}), false, sink.callback());
    REQUIRE(sink.wait());
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 1);

    h.engine->clear_connections();  // shutdown: resumed now, it would end unknown_connection, for good
    h.engine->retry_parked("irc");
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 1);
    CHECK(outbox_of(h.store(), "p1").at("irc/#ops").state == OutboxState::pending);
}

// Holds every send until the test releases it; a recipient's first attempt then comes back retryable
// (`connection_closed`), later ones delivered.
std::shared_ptr<SilentConnector> dropping_first_attempts() {
    auto connector = std::make_shared<SilentConnector>();
    connector->set_behaviour([](const OutboundMessage&, int attempt) -> Result<SentMessage> {
        if (attempt == 1) return fail_retryable("connection_closed", "the fake's connection dropped", 10);
        return SentMessage{"again"};
    });
    return connector;
}

TEST_CASE("Sends in flight at the deadline that come back retryable wait for their connection too", "[delivery]") {
    Harness h;
    auto irc = dropping_first_attempts();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", {kOps, kDev});
    delivery.deadline_ms = now_ms() + 200;
    h.engine->execute(std::move(delivery), false, sink.callback());
    REQUIRE(sink.wait(5s));
    CHECK(sink.wait()->error_code == "deadline_exceeded");
    CHECK(h.engine->parked() == 0);  // both are still out

    irc->release_held();  // both come back retryable, late
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 2);
    CHECK(h.logger.count_containing("in flight when plan 'p1' reached its deadline, came back connection_closed") == 2);

    h.engine->retry_parked("irc");
    irc->release_held();
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 0);
    CHECK(irc->send_count() == 4);
    const auto outbox = outbox_of(h.store(), "p1");
    CHECK(outbox.at("irc/#ops").state == OutboxState::sent);
    CHECK(outbox.at("irc/#dev").state == OutboxState::sent);
}

TEST_CASE("A late result of a plan run again under the same id meanwhile is left to the newer run", "[delivery]") {
    Harness h;
    auto irc = dropping_first_attempts();
    h.engine->add_connection("irc", irc, {});
    ReportSink first;
    auto delivery = planned("p1", {kOps});
    delivery.deadline_ms = now_ms() + 200;
    h.engine->execute(std::move(delivery), false, first.callback());
    REQUIRE(first.wait(5s));

    ReportSink second;  // the bot retries the envelope with the same key while the first send is still out
    h.engine->execute(planned("p1", {kOps}), false, second.callback());
    irc->release_held();  // the first run's send comes back retryable: not parked; the second's is delivered
    REQUIRE(second.wait(5s));
    CHECK(second.wait()->status == DeliveryStatus::delivered);
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.engine->parked() == 0);
    h.engine->retry_parked("irc");
    CHECK(h.engine->wait_idle(5s));
    CHECK(irc->send_count() == 2);
}

TEST_CASE("A retry that would land after the deadline is not attempted: the report comes at once", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<FlakyConnector>(1, 60'000);
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", {kOps});
    delivery.deadline_ms = now_ms() + 5'000;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait(2s);  // well before the deadline
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(report->error_code == "rate_limited");
    CHECK(report->retry_after_ms == 60'000);
    CHECK(irc->send_count() == 1);
}

TEST_CASE("The deadline report arrives on time when the connector never answers, and only once", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SilentConnector>();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", {kOps, kDev});
    delivery.deadline_ms = now_ms() + 300;
    const std::int64_t deadline = delivery.deadline_ms;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait(5s);
    REQUIRE(report);
    CHECK(sink.arrived_ms() >= deadline - 5);
    CHECK(sink.arrived_ms() <= deadline + 1'000);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(report->error_code == "deadline_exceeded");
    CHECK(report->retry_after_ms > 0);
    for (const auto& outcome : report->recipients) {
        CHECK_FALSE(outcome.delivered);
        CHECK(outcome.error_code == "deadline_exceeded");
    }
    CHECK_FALSE(h.engine->wait_idle(20ms));  // two sends are still out

    // They complete late: recorded in the outbox, and the report stands.
    irc->release_held();
    CHECK(h.engine->wait_idle(5s));
    CHECK(sink.calls() == 1);
    const auto outbox = outbox_of(h.store(), "p1");
    CHECK(outbox.at("irc/#ops").state == OutboxState::sent);
    CHECK(outbox.at("irc/#dev").state == OutboxState::sent);
}

TEST_CASE("Queued sends are cancelled at the deadline and never sent", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SilentConnector>();
    routing::ConnectionLimits limits;
    limits.concurrency = 1;
    h.engine->add_connection("irc", irc, limits);
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 5));
    delivery.deadline_ms = now_ms() + 200;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait(5s);
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(irc->send_count() == 1);
    irc->release_held();  // frees the lane: the cancelled ones must not go out now
    CHECK(h.engine->wait_idle(5s));
    CHECK(irc->send_count() == 1);
    CHECK(sink.calls() == 1);
    const auto outbox = outbox_of(h.store(), "p1");
    CHECK(std::count_if(outbox.begin(), outbox.end(),
                        [](const auto& e) { return e.second.state == OutboxState::pending; }) == 4);
    CHECK(h.engine->parked() == 4);  // the cut ones wait for the connection to come back; the one in flight does not
}

TEST_CASE("A plan whose deadline has passed is reported retryable without sending", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", {kOps});
    delivery.deadline_ms = now_ms() - 1;
    h.engine->execute(std::move(delivery), false, sink.callback());
    check_cut_before_sending(sink, *irc);
}

// A fake clock: the reads it answered, each answer from `next` (which a test moves on).
struct CountingClock {
    std::shared_ptr<std::atomic<int>> reads = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<std::atomic<std::int64_t>> next = std::make_shared<std::atomic<std::int64_t>>(1'000'000);
    routing::Clock clock() const {
        return [reads = reads, next = next] {
            ++*reads;
            return next->load();
        };
    }
};

TEST_CASE("A plan without a deadline of its own reads the clock once, just before its outbox write", "[delivery]") {
    CountingClock time;
    Harness h({}, {}, nullptr, time.clock());
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", {kOps});
    delivery.deadline_ms = 0;  // as Router::send leaves it
    h.engine->execute(std::move(delivery), false, sink.callback());
    const auto report = sink.wait(1s);
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(time.reads->load() == 1);
    CHECK(outbox_of(h.store(), "p1").at("irc/#ops").created_ms == 1'000'000);
}

TEST_CASE("A deadline that passes while the outbox is written is checked before anything is sent", "[delivery]") {
    // The store's write takes a minute on the fake clock: the plan, due in 10 s, is cut after it.
    CountingClock time;
    ThreadNotingStore store;
    Harness h(
        {}, [&](std::function<void()> work) { work(); }, &store, time.clock());
    store.on_add = [&] { *time.next += 60'000; };
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", {kOps});
    delivery.deadline_ms = 1'000'000 + 10'000;
    h.engine->execute(std::move(delivery), false, sink.callback());
    check_cut_before_sending(sink, *irc);
}

TEST_CASE("A plan without a deadline whose outbox write runs later is due 30 s after execute, not after the write",
          "[delivery]") {
    // The store executor holds the write until the test runs it; execute() has armed the deadline by then, from
    // the clock's first answer. The write starts 40 s later on the fake clock: past that deadline, so nothing is
    // sent (a deadline counted from the write would have let it go out).
    CountingClock time;
    std::vector<std::function<void()>> held;
    std::mutex held_mutex;
    Harness h(
        {},
        [&](std::function<void()> work) {
            std::lock_guard lock(held_mutex);
            held.push_back(std::move(work));
        },
        nullptr, time.clock());
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", {kOps});
    delivery.deadline_ms = 0;
    h.engine->execute(std::move(delivery), false, sink.callback());
    CHECK(time.reads->load() == 1);  // arm_deadline()
    *time.next += 40'000;
    std::vector<std::function<void()>> work;
    {
        std::lock_guard lock(held_mutex);
        work.swap(held);
    }
    REQUIRE(work.size() == 1);
    work.front()();
    check_cut_before_sending(sink, *irc);
    CHECK(outbox_of(h.store(), "p1").at("irc/#ops").created_ms == 1'040'000);  // the write's own time
}

TEST_CASE("A connection never has more sends in flight than its concurrency limit", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<AsyncConnector>(h.io, 2ms);
    routing::ConnectionLimits limits;
    limits.concurrency = 3;
    h.engine->add_connection("irc", irc, limits);
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 60));
    delivery.plan.batch_size = 60;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(irc->send_count() == 60);
    CHECK(irc->max_in_flight() <= 3);
    CHECK(irc->max_in_flight() == 3);  // and the limit is used
}

TEST_CASE("A plan has at most one batch in flight: the next starts when the previous completed", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<AsyncConnector>(h.io, 1ms);
    routing::ConnectionLimits limits;
    limits.concurrency = 100;
    h.engine->add_connection("irc", irc, limits);
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 50));
    delivery.plan.batch_size = 10;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(irc->max_in_flight() <= 10);
    const auto sends = irc->sends();
    const auto completions = irc->completions();
    REQUIRE(sends.size() == 50);
    for (std::size_t batch = 1; batch < 5; ++batch) {
        std::uint64_t previous_done = 0;
        for (std::size_t i = (batch - 1) * 10; i < batch * 10; ++i) {
            previous_done = std::max(previous_done, completions.at(sends[i].idempotency_key));
        }
        for (std::size_t i = batch * 10; i < (batch + 1) * 10; ++i) {
            INFO("batch " << batch << " send " << i);
            CHECK(sends[i].sequence > previous_done);
        }
    }
}

TEST_CASE("The connection's global bucket holds a burst to its size and the rest of the sends to its rate",
          "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SinkConnector>();
    routing::ConnectionLimits limits;
    limits.rate_per_second = 100;
    limits.burst = 10;
    h.engine->add_connection("irc", irc, limits);
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 60));
    delivery.plan.batch_size = 60;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    const auto sends = irc->sends();
    REQUIRE(sends.size() == 60);
    // Token bucket law, on the connector's own clock: sends i..j fit in burst + rate * (t_j - t_i).
    for (std::size_t i = 0; i < sends.size(); ++i) {
        for (std::size_t j = i + 1; j < sends.size(); ++j) {
            const double seconds = std::chrono::duration<double>(sends[j].at - sends[i].at).count();
            const double allowed = 10.0 + 100.0 * seconds + 0.5;
            INFO("sends " << i << ".." << j << " in " << seconds << " s");
            REQUIRE(static_cast<double>(j - i + 1) <= allowed);
        }
    }
    // The burst goes at once; the other 50 need 0.5 s at 100/s.
    CHECK(sends[9].at - sends[0].at < 100ms);
    CHECK(sends[59].at - sends[0].at >= 490ms);
}

TEST_CASE("Compensation deletes what an atomic plan sent when a later recipient fails for good", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<DeletingConnector>(std::set<std::string>{"irc/#c2"});
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 4));
    delivery.plan.mode = DeliveryMode::atomic;
    delivery.plan.on_failure = OnFailure::compensate;
    delivery.plan.batch_size = 1;  // one at a time: #c0 and #c1 are sent before #c2 fails

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::rejected);
    CHECK(report->error_code == "compensated");
    const auto outcomes = outcomes_of(*report);
    CHECK(outcomes.at("irc/#c0").error_code == "compensated");
    CHECK(outcomes.at("irc/#c1").error_code == "compensated");
    CHECK(outcomes.at("irc/#c2").error_code == "forbidden");
    CHECK(outcomes.at("irc/#c3").error_code == "aborted");
    for (const auto& outcome : report->recipients) CHECK_FALSE(outcome.delivered);
    CHECK(irc->send_count() == 3);  // #c3 never went out
    const auto removed = irc->removed();
    CHECK(std::set<std::string>(removed.begin(), removed.end()) ==
          std::set<std::string>{"irc/#c0#del-1", "irc/#c1#del-2"});
    const auto outbox = outbox_of(h.store(), "p1");
    CHECK(outbox.at("irc/#c0").state == OutboxState::withdrawn);
    CHECK(outbox.at("irc/#c1").state == OutboxState::withdrawn);
    CHECK(outbox.at("irc/#c2").state == OutboxState::failed);
    CHECK(outbox.at("irc/#c3").state == OutboxState::failed);
    CHECK(h.store().outbox_pending()->empty());
}

TEST_CASE("An atomic plan that fails after sending started is partial when what was sent stays", "[delivery]") {
    Harness h;
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 3));
    delivery.plan.mode = DeliveryMode::atomic;
    delivery.plan.batch_size = 1;
    std::shared_ptr<FakeConnector> irc;

    SECTION("on_failure keep") {
        irc = std::make_shared<DeletingConnector>(std::set<std::string>{"irc/#c1"});
        delivery.plan.on_failure = OnFailure::keep;
    }
    SECTION("on_failure compensate on a connector that cannot delete") {
        irc = std::make_shared<FailingConnector>(std::set<std::string>{"irc/#c1"});
        delivery.plan.on_failure = OnFailure::compensate;
    }
    h.engine->add_connection("irc", irc, {});
    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::partial);
    CHECK(report->error_code == "forbidden");
    const auto outcomes = outcomes_of(*report);
    CHECK(outcomes.at("irc/#c0").delivered);
    CHECK(outcomes.at("irc/#c2").error_code == "aborted");
    CHECK(irc->removed().empty());
    CHECK(outbox_of(h.store(), "p1").at("irc/#c0").state == OutboxState::sent);
}

TEST_CASE("A retried envelope with the same plan id does not resend recipients already sent", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<FailingConnector>(std::set<std::string>{"irc/#dev"});
    h.engine->add_connection("irc", irc, {});

    ReportSink first;
    h.engine->execute(planned("p1", {kOps, kDev, kAlice}), false, first.callback());
    REQUIRE(first.wait());
    CHECK(first.wait()->status == DeliveryStatus::partial);
    const std::string ops_id = outcomes_of(*first.wait()).at("irc/#ops").message_id;
    CHECK(irc->send_count() == 3);

    irc->set_failing({});
    ReportSink second;
    h.engine->execute(planned("p1", {kOps, kDev, kAlice}), false, second.callback());
    const auto report = second.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    const auto sends = irc->sends();
    REQUIRE(sends.size() == 4);
    CHECK(sends[3].to == kDev);  // only the one that had not got it
    CHECK(outcomes_of(*report).at("irc/#ops").message_id == ops_id);
    CHECK(outbox_of(h.store(), "p1").at("irc/#dev").state == OutboxState::sent);
}

TEST_CASE("A plan interrupted mid-fan-out is finished after a restart without sending anyone twice", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SilentConnector>();
    routing::ConnectionLimits limits;
    limits.concurrency = 2;
    h.engine->add_connection("irc", irc, limits);
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 6));
    delivery.plan.mode = DeliveryMode::atomic;
    delivery.plan.batch_size = 6;
    h.engine->execute(std::move(delivery), false, sink.callback());

    // Two sends are confirmed, two more are in flight when the process "dies" in the middle of the batch: what was
    // confirmed is already in the outbox (group commit, not at the end of the batch).
    REQUIRE(wait_until([&] { return irc->held_count() == 2; }));
    irc->release_held();
    REQUIRE(wait_until([&] { return irc->held_count() == 2; }));
    auto at_crash = h.store().outbox_plan("p1");
    REQUIRE(at_crash.has_value());
    REQUIRE(at_crash->size() == 6);
    std::set<std::string> sent_before;
    for (const auto& entry : *at_crash) {
        if (entry.state == OutboxState::sent) sent_before.insert("p1|" + entry.recipient.to_string());
    }
    CHECK(sent_before == std::set<std::string>{"p1|irc/#c0", "p1|irc/#c1"});

    // The next start: the same outbox, a new engine.
    stores::MemoryStore restarted_store;
    REQUIRE(restarted_store.outbox_add(*at_crash).has_value());
    routing::DeliveryEngine restarted(
        restarted_store, h.directory, h.io, [](std::function<void()> work) { work(); }, h.logger);
    auto sink_connector = std::make_shared<SinkConnector>();
    restarted.add_connection("irc", sink_connector, {});
    restarted.resume(*restarted_store.outbox_pending());

    REQUIRE(restarted.wait_idle(5s));
    std::set<std::string> sent_after;
    for (const auto& send : sink_connector->sends()) sent_after.insert(send.idempotency_key);
    CHECK(sink_connector->send_count() == 4);
    CHECK(sent_after == std::set<std::string>{"p1|irc/#c2", "p1|irc/#c3", "p1|irc/#c4", "p1|irc/#c5"});
    CHECK(restarted_store.outbox_pending()->empty());
}

TEST_CASE("An atomic plan whose first recipient fails for good is rejected with that failure's code", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<DeletingConnector>(std::set<std::string>{"irc/#c0"});
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 3));
    delivery.plan.mode = DeliveryMode::atomic;
    delivery.plan.on_failure = OnFailure::compensate;
    delivery.plan.batch_size = 1;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::rejected);
    CHECK(report->error_code == "forbidden");
    CHECK(irc->send_count() == 1);
    CHECK(irc->removed().empty());
}

TEST_CASE("resume() sends each pending entry once and logs one line per plan", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    std::vector<OutboxEntry> entries{
        entry("plan-a", kOps, "one"),
        entry("plan-a", kDev, "one", OutboxState::sent, "old-id"),
        entry("plan-b", kAlice, "two", OutboxState::pending, {}, std::string("m-7")),
        entry("plan-a", Address::channel("irc", "#third"), "one"),
    };
    REQUIRE(h.store().outbox_add(entries).has_value());
    auto pending = h.store().outbox_pending();
    REQUIRE(pending.has_value());
    REQUIRE(pending->size() == 3);

    h.engine->resume(std::move(*pending));

    REQUIRE(h.engine->wait_idle(5s));
    const auto sends = irc->sends();
    REQUIRE(sends.size() == 3);
    std::set<std::string> keys;
    for (const auto& send : sends) keys.insert(send.idempotency_key);
    CHECK(keys == std::set<std::string>{"plan-a|irc/#ops", "plan-a|irc/#third", "plan-b|irc/@alice"});
    CHECK(h.store().outbox_pending()->empty());
    CHECK(outbox_of(h.store(), "plan-a").at("irc/#dev").sent_message_id == "old-id");
    CHECK(h.logger.count_containing("'plan-a'") == 1);
    CHECK(h.logger.count_containing("'plan-b'") == 1);
    CHECK(h.logger.count_containing("delivered (2 of 2 delivered)") == 1);
}

TEST_CASE(
    "Outbox states the store refused are written again until it takes them; meanwhile resume() does not send "
    "those recipients again",
    "[delivery]") {
    ThreadNotingStore store;
    Harness h({}, {}, &store);
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    store.fail_updates = 3;  // the plan's write round, then the first two tries to write it again

    h.engine->execute(planned("p1", {kOps, kDev}), false, sink.callback());
    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(h.logger.count_containing("writing it again once the store answers") == 1);
    // The store still says pending; a lease taken back now would resume what it says.
    auto pending = store.outbox_pending();
    REQUIRE(pending.has_value());
    CHECK(pending->size() == 2);
    h.engine->resume(std::move(*pending));
    REQUIRE(h.engine->wait_idle(5s));
    CHECK(irc->sends().size() == 2);

    // 100 + 200 + 400 ms of backoff later the store has taken them.
    REQUIRE(wait_until([&] { return store.outbox_pending()->empty(); }, 10s));
    const auto outbox = outbox_of(store, "p1");
    CHECK(outbox.at("irc/#ops").state == OutboxState::sent);
    CHECK(outbox.at("irc/#dev").state == OutboxState::sent);
    CHECK(outbox.at("irc/#dev").attempts == 1);
    CHECK(h.logger.count_containing("recorded the outbox state of 2 recipient(s) the store had refused") == 1);
    CHECK(irc->sends().size() == 2);
}

TEST_CASE("resume() leaves the entries of a plan still running to it: a lease taken back does not send them twice",
          "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SilentConnector>();  // holds each send until the test releases it
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    h.engine->execute(planned("p1", {kOps, kDev}), false, sink.callback());
    REQUIRE(wait_until([&] { return irc->held_count() == 2; }));
    std::vector<OutboxEntry> left{entry("other", kAlice, "left by another host")};
    REQUIRE(h.store().outbox_add(left).has_value());
    auto pending = h.store().outbox_pending();  // p1's entries are pending while their sends are out
    REQUIRE(pending.has_value());
    REQUIRE(pending->size() == 3);

    h.engine->resume(std::move(*pending));
    REQUIRE(wait_until([&] { return irc->held_count() == 3; }));
    irc->release_held();
    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    REQUIRE(h.engine->wait_idle(5s));
    std::multiset<std::string> keys;
    for (const auto& send : irc->sends()) keys.insert(send.idempotency_key);
    CHECK(keys == std::multiset<std::string>{"p1|irc/#ops", "p1|irc/#dev", "other|irc/@alice"});
    CHECK(h.store().outbox_pending()->empty());
}

TEST_CASE("An inline connector serving 100,000 recipients completes without deep recursion", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    auto delivery = planned("big", channels("irc", 100'000));
    char marker = 0;
    const auto top = reinterpret_cast<std::uintptr_t>(&marker);

    const auto started = SteadyClock::now();
    h.engine->execute(std::move(delivery), false, sink.callback());
    const auto took = SteadyClock::now() - started;

    const auto report = sink.wait(30s);
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(report->recipients.size() == 100'000);
    CHECK(irc->send_count() == 100'000);
    // The deepest send() ran a few frames below the test, not 100,000 (or 1,000 batches) deep.
    CHECK(top - irc->lowest_stack() < 64 * 1024);
    WARN("100,000-recipient inline fan-out (outbox add, sends, flushes, report): "
         << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
}

TEST_CASE(
    "Async connectors and a store executor pool deliver a large fan-out exactly once, never storing on an "
    "I/O thread",
    "[delivery]") {
    boost::asio::thread_pool workers(2);
    ThreadNotingStore store;
    Harness h(
        {}, [&workers](std::function<void()> work) { boost::asio::post(workers, std::move(work)); }, &store);
    auto irc = std::make_shared<AsyncConnector>(h.io, 50us);
    auto discord = std::make_shared<AsyncConnector>(h.io, 50us);
    routing::ConnectionLimits limits;
    limits.concurrency = 8;
    h.engine->add_connection("irc", irc, limits);
    h.engine->add_connection("discord", discord, limits);
    std::vector<Address> to;
    for (int i = 0; i < 1000; ++i) {
        to.push_back(Address::channel(i % 2 == 0 ? "irc" : "discord", "#c" + std::to_string(i)));
    }
    ReportSink sink;

    h.engine->execute(planned("p1", to), false, sink.callback());

    const auto report = sink.wait(30s);
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    std::set<std::string> keys;
    for (const auto& send : irc->sends()) keys.insert(send.idempotency_key);
    for (const auto& send : discord->sends()) keys.insert(send.idempotency_key);
    CHECK(keys.size() == 1000);
    CHECK(irc->send_count() + discord->send_count() == 1000);
    CHECK(h.engine->wait_idle(5s));
    const auto outbox = outbox_of(store, "p1");
    CHECK(std::all_of(outbox.begin(), outbox.end(), [](const auto& e) { return e.second.state == OutboxState::sent; }));
    for (const auto& id : store.threads()) {
        CHECK(std::find(h.io_thread_ids.begin(), h.io_thread_ids.end(), id) == h.io_thread_ids.end());
    }
    h.engine.reset();
    workers.join();
}

TEST_CASE("A store that cannot write the outbox makes the plan retryable and nothing is sent", "[delivery]") {
    ThreadNotingStore store;
    store.fail_outbox_add = true;
    Harness h({}, {}, &store);
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {});
    ReportSink sink;
    h.engine->execute(planned("p1", {kOps, kDev}), false, sink.callback());
    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(report->error_code == "store_busy");
    CHECK(report->retry_after_ms > 0);
    CHECK(irc->send_count() == 0);
    CHECK(h.logger.count_containing("store_busy") == 1);
    CHECK(h.engine->parked() == 0);  // not in the outbox: nothing to send when the connection comes back
}

TEST_CASE("clear_connections ends queued sends retryable and leaves their entries pending", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SilentConnector>();
    routing::ConnectionLimits limits;
    limits.concurrency = 1;
    h.engine->add_connection("irc", irc, limits);
    ReportSink sink;

    h.engine->execute(planned("p1", channels("irc", 3)), false, sink.callback());
    REQUIRE(wait_until([&] { return irc->send_count() == 1; }));
    h.engine->clear_connections();
    irc->release_held();  // the one in flight completes

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(report->error_code == "shutting_down");
    const auto outcomes = outcomes_of(*report);
    CHECK(outcomes.at("irc/#c0").delivered);
    CHECK(outcomes.at("irc/#c1").error_code == "shutting_down");
    CHECK(irc->send_count() == 1);
    CHECK(h.store().outbox_pending()->size() == 2);
}

TEST_CASE("wait_idle reports whether every plan finished", "[delivery]") {
    Harness h;
    auto irc = std::make_shared<SilentConnector>();
    h.engine->add_connection("irc", irc, {});
    CHECK(h.engine->wait_idle(0ms));
    ReportSink sink;
    h.engine->execute(planned("p1", {kOps}), false, sink.callback());
    CHECK_FALSE(h.engine->wait_idle(30ms));
    irc->release_held();
    CHECK(h.engine->wait_idle(5s));
    REQUIRE(sink.wait(0ms));
    CHECK(sink.wait(0ms)->status == DeliveryStatus::delivered);
}
