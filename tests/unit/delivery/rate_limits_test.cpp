// The delivery engine and the connection's rate-limit scheduler: every send is acquired on send_route(address) as a
// live request; what a connector reports on that route (a 429) holds the sends to that address and no other; a send
// cut while it waits for its grant is never sent; shutting the scheduler down ends the waiting sends retryable.

#include <catch2/catch.hpp>

#include <switchboard/rate_limit.hpp>

#include "harness.hpp"
#include "ratelimit/scheduler.hpp"
#include "test_support.hpp"

using namespace switchboard;
using namespace switchboard::delivery_test;
using switchboard::testing_support::wait_until;
using namespace std::chrono_literals;

namespace {

std::vector<Address> channels(const std::string& connection, int n) {
    std::vector<Address> to;
    for (int i = 0; i < n; ++i) to.push_back(Address::channel(connection, "#c" + std::to_string(i)));
    return to;
}

std::shared_ptr<ratelimit::Scheduler> scheduler_for(Harness& h) {
    ratelimit::SchedulerOptions options;
    options.connection = "irc";
    return std::make_shared<ratelimit::Scheduler>(h.io, h.logger, options);
}

}  // namespace

TEST_CASE("Every send is granted by the connection's scheduler on its send route", "[delivery][ratelimit]") {
    Harness h;
    auto scheduler = scheduler_for(h);
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {}, scheduler);
    ReportSink sink;
    std::vector<Address> to = channels("irc", 5);
    to.push_back(Address::user("irc", "alice"));

    h.engine->execute(planned("p1", to), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    CHECK(scheduler->stats().granted == 6);
    CHECK(send_route(Address::user("irc", "alice")) == "send @alice");
    CHECK(send_route(Address::channel("irc", "#c0")) == "send #c0");
}

TEST_CASE("A connection's configured rate holds a burst of sends to the scheduler's global bucket",
          "[delivery][ratelimit]") {
    Harness h;
    auto scheduler = scheduler_for(h);
    scheduler->configure_global(50, 5);
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {}, scheduler);
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 20));
    delivery.plan.batch_size = 20;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    const auto sends = irc->sends();
    REQUIRE(sends.size() == 20);
    // Five at once, then 50/s: send k (k >= 5) no sooner than its token, (k - 4) * 20 ms after the first send, which
    // went at once. (Lower bounds only: a loaded machine delays sends, it cannot make them early. The exact bucket
    // law is tested on the scheduler with a fake clock.)
    for (std::size_t k = 5; k < sends.size(); ++k) {
        INFO("send " << k);
        CHECK(sends[k].at - sends[0].at >= std::chrono::milliseconds(20 * (k - 4)) - 1ms);
    }
    CHECK(scheduler->stats().granted == 20);
}

TEST_CASE("A 429 the connector reports on a send's route holds later sends to that address, and only to it",
          "[delivery][ratelimit]") {
    Harness h({}, {});
    auto scheduler = scheduler_for(h);
    auto irc = std::make_shared<FakeConnector>(FakeConnector::Mode::inline_completion);
    irc->set_behaviour([scheduler](const OutboundMessage& message, int attempt) -> Result<SentMessage> {
        // The platform answers the first send to #c0 with a 429 for 300 ms; the connector says so on the send's
        // route, as a connector that reads rate-limit headers does.
        if (message.to.target == "#c0" && attempt == 1) {
            RateLimitInfo info;
            info.limited = true;
            info.retry_after_s = 0.3;
            info.invalid = true;
            scheduler->observe(send_route(message.to), info);
            return fail_retryable("rate_limited", "429 from the fake platform");
        }
        scheduler->observe(send_route(message.to), RateLimitInfo{});
        return SentMessage{"m-" + message.to.target};
    });
    h.engine->add_connection("irc", irc, {}, scheduler);
    ReportSink first;
    h.engine->execute(planned("p1", {Address::channel("irc", "#c0")}), false, first.callback());
    REQUIRE(wait_until([&] { return irc->send_count() == 1; }));

    ReportSink second;
    h.engine->execute(planned("p2", {Address::channel("irc", "#c1")}), false, second.callback());
    const auto other = second.wait();
    REQUIRE(other);
    CHECK(other->status == DeliveryStatus::delivered);
    const auto held = first.wait();
    REQUIRE(held);
    CHECK(held->status == DeliveryStatus::delivered);

    const auto sends = irc->sends();
    REQUIRE(sends.size() == 3);
    CHECK(sends[0].to.target == "#c0");
    CHECK(sends[1].to.target == "#c1");  // not held by #c0's 429
    CHECK(sends[1].at - sends[0].at < 250ms);
    CHECK(sends[2].to.target == "#c0");
    CHECK(sends[2].at - sends[0].at >= 300ms);  // the engine's 100 ms backoff did not beat the platform's hold
    CHECK(scheduler->stats().limited == 1);
    CHECK(scheduler->stats().invalid == 1);
}

TEST_CASE("A send cut by the deadline while it waits for its grant is never sent", "[delivery][ratelimit]") {
    Harness h;
    auto scheduler = scheduler_for(h);
    scheduler->configure_global(2, 1);  // one now, the next in 500 ms
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {}, scheduler);
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 3));
    delivery.deadline_ms = now_ms() + 200;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(report->error_code == "deadline_exceeded");
    CHECK(irc->send_count() == 1);
    // The grants still come (the scheduler does not know the plan), and go unused.
    REQUIRE(wait_until([&] { return scheduler->stats().waiting == 0 && scheduler->stats().granted == 3; }));
    CHECK(h.engine->wait_idle(5s));
    CHECK(irc->send_count() == 1);
    CHECK(h.store().outbox_pending()->size() == 2);
}

TEST_CASE("Shutting the scheduler down ends the sends waiting for a grant retryable, their entries pending",
          "[delivery][ratelimit]") {
    Harness h;
    auto scheduler = scheduler_for(h);
    scheduler->configure_global(0.01, 1);  // one now, the next in 100 s
    auto irc = std::make_shared<SinkConnector>();
    h.engine->add_connection("irc", irc, {}, scheduler);
    ReportSink sink;

    h.engine->execute(planned("p1", channels("irc", 3)), false, sink.callback());
    REQUIRE(wait_until([&] { return scheduler->stats().waiting == 2; }));
    h.engine->clear_connections();
    scheduler->shutdown();

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::retryable);
    CHECK(report->error_code == "shutting_down");
    CHECK(irc->send_count() == 1);
    CHECK(h.engine->wait_idle(5s));
    CHECK(h.store().outbox_pending()->size() == 2);
}

TEST_CASE("A scheduler's waiting sends hold their concurrency slots, so the limit counts them",
          "[delivery][ratelimit]") {
    Harness h;
    auto scheduler = scheduler_for(h);
    auto irc = std::make_shared<SinkConnector>();
    routing::ConnectionLimits limits;
    limits.concurrency = 2;
    h.engine->add_connection("irc", irc, limits, scheduler);
    // #c0 and #c1 are held by a 429 for 200 ms; with two slots, #c2 waits behind them.
    const auto start = SteadyClock::now();
    RateLimitInfo info;
    info.limited = true;
    info.retry_after_s = 0.2;
    scheduler->observe("send #c0", info);
    scheduler->observe("send #c1", info);
    ReportSink sink;
    auto delivery = planned("p1", channels("irc", 3));
    delivery.plan.batch_size = 3;

    h.engine->execute(std::move(delivery), false, sink.callback());

    const auto report = sink.wait();
    REQUIRE(report);
    CHECK(report->status == DeliveryStatus::delivered);
    const auto sends = irc->sends();
    REQUIRE(sends.size() == 3);
    for (const auto& send : sends) {
        INFO(send.to.target);
        CHECK(send.at - start >= 200ms);  // #c2 too: it had no slot until one of the held ones went
    }
}
