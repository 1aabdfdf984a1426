// The discord-backfill recovery policy against a fake Discord connector and a fake host context.
#include "discord_backfill.hpp"
#include "recovery_fakes.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

using namespace switchboard;
using namespace switchboard::recovery_test;
using switchboard::recovery::BackfillOptions;
using switchboard::recovery::DiscordBackfill;
using Type = switchboard::ConnectionEvent::Type;

namespace {

constexpr std::int64_t kNow = 1750000000000;  // the fake wall clock: 2025-06-15
constexpr std::int64_t kHour = 3600 * 1000;

BackfillOptions test_options() {
    BackfillOptions options;
    options.now_ms = [] { return kNow; };
    options.retry_delay = 2ms;
    options.retry_max_delay = 20ms;
    return options;
}

std::vector<std::string> as_strings(const std::vector<std::uint64_t>& ids, std::size_t from = 0,
                                    std::size_t to = SIZE_MAX) {
    std::vector<std::string> out;
    for (std::size_t i = from; i < ids.size() && i < to; ++i) out.push_back(std::to_string(ids[i]));
    return out;
}

/// Everything a test needs; stops the threads before the objects they use go away.
struct Harness {
    explicit Harness(std::vector<std::string> channels, BackfillOptions options = test_options())
        : context(discord, lane, std::move(channels)),
          policy(std::make_unique<DiscordBackfill>(std::move(options), logger, io.io)) {}
    ~Harness() {
        io.stop();
        lane.stop();
        policy.reset();
    }

    void event(Type type, std::string detail = {}) { context.event(*policy, type, std::move(detail)); }
    bool reports_reach(std::size_t n) {
        return context.wait([&] { return context.reports_locked() >= n; });
    }
    /// Waits until the connector has answered @p n requests and the lane has handled what they posted.
    bool answered(std::size_t n) { return discord.wait_answered(n) && lane.wait_idle(); }

    IoThread io;
    Lane lane;
    NullLogger logger;
    FakeDiscord discord{io.io};
    FakeContext context;
    std::unique_ptr<DiscordBackfill> policy;
};

}  // namespace

TEST_CASE("snowflakes convert to and from time as Discord defines them", "[discord][recovery]") {
    // The example of Discord's reference documentation: 175928847299117063 was created at 1462015105796.
    CHECK(recovery::snowflake_time_ms(175928847299117063ULL) == 1462015105796);
    CHECK(recovery::snowflake_at(1462015105796) == (std::uint64_t{1462015105796 - 1420070400000} << 22));
    CHECK(recovery::snowflake_at(1462015105796) <= 175928847299117063ULL);
    CHECK(recovery::snowflake_time_ms(recovery::snowflake_at(kNow)) == kNow);
    CHECK(recovery::snowflake_at(0) == 0);
    CHECK(recovery::parse_snowflake("175928847299117063") == 175928847299117063ULL);
    CHECK_FALSE(recovery::parse_snowflake("").has_value());
    CHECK_FALSE(recovery::parse_snowflake("12a").has_value());
    CHECK_FALSE(recovery::parse_snowflake("-1").has_value());
    CHECK_FALSE(recovery::parse_snowflake("99999999999999999999999").has_value());
    CHECK(recovery::format_duration(std::chrono::hours(24 * 14)) == "14d");
    CHECK(recovery::format_duration(std::chrono::hours(6)) == "6h");
    CHECK(recovery::format_duration(std::chrono::milliseconds(1500)) == "1500ms");
}

TEST_CASE("the settings are checked: page_size 1 to 100, positive max_age and concurrency", "[discord][recovery]") {
    PluginConfig config;
    CHECK(DiscordBackfill::check_config(config).empty());
    const BackfillOptions defaults = DiscordBackfill::options_from(config);
    CHECK(defaults.max_age == std::chrono::hours(24 * 14));
    CHECK(defaults.page_size == 100);
    CHECK(defaults.concurrency == 4);

    config.set("max_age", std::int64_t{6 * kHour});
    config.set("page_size", std::int64_t{50});
    config.set("concurrency", std::int64_t{2});
    CHECK(DiscordBackfill::check_config(config).empty());
    const BackfillOptions options = DiscordBackfill::options_from(config);
    CHECK(options.max_age == std::chrono::hours(6));
    CHECK(options.page_size == 50);
    CHECK(options.concurrency == 2);

    SECTION("page_size above Discord's limit") {
        config.set("page_size", std::int64_t{101});
        const auto problems = DiscordBackfill::check_config(config);
        REQUIRE(problems.size() == 1);
        CHECK(problems[0].key == "page_size");
    }
    SECTION("page_size 0") {
        config.set("page_size", std::int64_t{0});
        REQUIRE(DiscordBackfill::check_config(config).size() == 1);
    }
    SECTION("concurrency 0 and max_age 0") {
        config.set("concurrency", std::int64_t{0});
        config.set("max_age", std::int64_t{0});
        CHECK(DiscordBackfill::check_config(config).size() == 2);
    }
    SECTION("the constructor refuses what the check refuses") {
        config.set("page_size", std::int64_t{500});
        NullLogger logger;
        boost::asio::io_context io;
        PluginContext context("discord-main/recovery", logger, io);
        CHECK_THROWS_AS(DiscordBackfill(context, config), ErrorException);
    }
    SECTION("the schema documents every key with its default") {
        const auto& keys = DiscordBackfill::config_schema().keys;
        REQUIRE(keys.size() == 5);
        CHECK(keys[0].name == "max_age");
        CHECK(keys[0].type == ValueType::duration);
        CHECK(keys[0].default_value == "14d");
        CHECK(keys[1].name == "page_size");
        CHECK(keys[1].default_value == "100");
        CHECK(keys[2].name == "concurrency");
    }
}

TEST_CASE("a new session feeds every missed message once, in order, page by page", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.page_size = 100;
    Harness h({"general", "ops"}, options);
    const auto general = h.discord.add_history("general", kNow - 2 * kHour, 250);
    const auto ops = h.discord.add_history("ops", kNow - kHour, 5);
    h.context.set_cursor("general", general[9]);  // processed up to the 10th
    h.context.set_cursor("ops", ops[4]);          // nothing missed

    h.event(Type::connected, "new session");
    REQUIRE(h.reports_reach(2));

    CHECK(h.context.fed_ids("general") == as_strings(general, 10));
    CHECK(h.context.fed_ids("ops").empty());
    for (const Message& message : h.context.fed()) CHECK(message.recovered);

    const auto report = h.context.report("general");
    REQUIRE(report.has_value());
    CHECK(report->fetched == 240);
    CHECK(report->duplicates == 0);
    CHECK_FALSE(report->gap);
    const auto quiet = h.context.report("ops");
    REQUIRE(quiet.has_value());
    CHECK(quiet->fetched == 0);
    CHECK_FALSE(quiet->gap);

    // Pages of 100 after the cursor, then after the last id of each page: 100 + 100 + 40.
    std::vector<std::string> general_after;
    for (const auto& r : h.discord.requests()) {
        CHECK(r.request.limit == 100);
        if (r.request.channel == "general") general_after.push_back(r.request.after_message_id.value_or("-"));
    }
    CHECK(general_after == std::vector<std::string>{std::to_string(general[9]), std::to_string(general[109]),
                                                    std::to_string(general[209])});
    CHECK(h.context.reports().size() == 2);  // once per channel
    CHECK(h.context.held().empty());           // both released once caught up
    CHECK_FALSE(h.context.fed_while_released());  // every feed came while live messages were held
    CHECK_FALSE(h.context.off_lane());
}

TEST_CASE("a page size below 100 pages just as well", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.page_size = 7;
    Harness h({"general"}, options);
    const auto ids = h.discord.add_history("general", kNow - kHour, 30);
    h.context.set_cursor("general", ids[0]);
    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    CHECK(h.context.fed_ids("general") == as_strings(ids, 1));
    CHECK(h.discord.requests().size() == 5);  // 7 + 7 + 7 + 7 + 1
}

TEST_CASE("a channel without a cursor fetches nothing and reports no gap", "[discord][recovery]") {
    Harness h({"new-channel"});
    h.discord.add_history("new-channel", kNow - kHour, 20);
    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    CHECK(h.discord.requests().empty());
    CHECK(h.context.fed().empty());
    const auto report = h.context.report("new-channel");
    REQUIRE(report.has_value());
    CHECK(report->fetched == 0);
    CHECK_FALSE(report->gap);
}

TEST_CASE("channels are backfilled concurrently, never more than `concurrency` at once", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.concurrency = 3;
    options.page_size = 10;
    std::vector<std::string> channels;
    for (int i = 0; i < 7; ++i) channels.push_back("c" + std::to_string(i));
    Harness h(channels, options);
    for (const auto& channel : channels) {
        const auto ids = h.discord.add_history(channel, kNow - kHour, 25);
        h.context.set_cursor(channel, ids[0]);
    }
    h.discord.hold(true);
    h.event(Type::connected);
    REQUIRE(h.lane.wait_idle());
    // The first three channels asked at once; the others wait for one of them to finish.
    CHECK(h.discord.held() == 3);
    std::set<std::string> asking;
    for (const auto& r : h.discord.requests()) asking.insert(r.request.channel);
    CHECK(asking == std::set<std::string>{"c0", "c1", "c2"});

    h.discord.hold(false);
    h.discord.release();
    REQUIRE(h.reports_reach(7));
    CHECK(h.discord.max_in_flight() == 3);
    for (const auto& channel : channels) {
        CHECK(h.context.fed_ids(channel).size() == 24);
        const auto report = h.context.report(channel);
        REQUIRE(report.has_value());
        CHECK(report->fetched == 24);
        CHECK_FALSE(report->gap);
    }
    CHECK(h.context.reports().size() == 7);
    CHECK_FALSE(h.context.off_lane());
}

TEST_CASE("history older than max_age is skipped and reported as a gap", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.max_age = std::chrono::hours(6);
    Harness h({"general"}, options);
    // 20 messages ten hours ago (the cursor among them), 10 within the last hour.
    const auto old = h.discord.add_history("general", kNow - 10 * kHour, 20);
    const auto recent = h.discord.add_history("general", kNow - kHour, 10);
    h.context.set_cursor("general", old[2]);

    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    CHECK(h.context.fed_ids("general") == as_strings(recent));
    const auto requests = h.discord.requests();
    REQUIRE_FALSE(requests.empty());
    CHECK(requests.front().request.after_message_id == std::to_string(recovery::snowflake_at(kNow - 6 * kHour)));
    const auto report = h.context.report("general");
    REQUIRE(report.has_value());
    CHECK(report->gap);
    CHECK(report->gap_reason.find("older than max_age (6h)") != std::string::npos);
    CHECK(report->fetched == 10);
}

TEST_CASE("a resumed session fetches nothing: the gateway replays what was missed", "[discord][recovery]") {
    Harness h({"general"});
    const auto ids = h.discord.add_history("general", kNow - kHour, 10);
    h.context.set_cursor("general", ids[9]);
    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    const auto asked = h.discord.requests().size();
    h.context.set_cursor("general", ids[0]);
    h.event(Type::disconnected, "close code 4000");
    h.event(Type::resumed);
    REQUIRE(h.lane.wait_idle());
    CHECK(h.discord.requests().size() == asked);
    CHECK(h.context.fed().empty());
    CHECK(h.context.reports().size() == 1);
    CHECK(h.context.held().empty());
}

TEST_CASE("the first session of a process backfills even when it resumed a saved one", "[discord][recovery]") {
    // The last process saved its sequence, received more, and died before handling it: the gateway replays only
    // what followed the saved sequence, the cursor knows what was handled.
    Harness h({"general"});
    const auto ids = h.discord.add_history("general", kNow - kHour, 10);
    h.context.set_cursor("general", ids[3]);
    h.event(Type::resumed, "session saved by the last process");
    REQUIRE(h.reports_reach(1));
    CHECK(h.context.fed_ids("general") == as_strings(ids, 4));
    CHECK(h.context.held().empty());
    CHECK_FALSE(h.context.fed_while_released());
}

TEST_CASE("a disconnect mid-run stops it, late pages are dropped, the next session continues", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.page_size = 10;
    Harness h({"general"}, options);
    const auto ids = h.discord.add_history("general", kNow - kHour, 35);
    h.context.set_cursor("general", ids[4]);

    // The first page arrives, the second is in flight when the connection drops.
    h.discord.hold(true);
    h.event(Type::connected);
    REQUIRE(h.lane.wait_idle());
    REQUIRE(h.discord.release() == 1);
    REQUIRE(h.answered(1));
    REQUIRE(h.discord.held() == 1);
    CHECK(h.context.fed_ids("general").size() == 10);

    h.event(Type::disconnected, "close code 4009");
    REQUIRE(h.reports_reach(1));
    const auto cut = h.context.report("general");
    REQUIRE(cut.has_value());
    CHECK(cut->gap);
    CHECK(cut->gap_reason.find("interrupted") != std::string::npos);
    CHECK(cut->fetched == 10);
    CHECK(h.context.held() == std::set<std::string>{"general"});  // live messages keep waiting for the next run

    // The page in flight when the connection dropped comes late: nothing of it is fed, nothing more is asked.
    REQUIRE(h.discord.release() == 1);
    REQUIRE(h.answered(2));
    CHECK(h.context.fed_ids("general").size() == 10);
    CHECK(h.discord.requests().size() == 2);
    CHECK(h.context.reports().size() == 1);

    SECTION("a new session backfills from where the run stopped, even if live messages moved the cursor") {
        h.context.set_cursor("general", ids[34]);  // live traffic of the dropped session
        h.discord.hold(false);
        h.event(Type::connected);
        REQUIRE(h.reports_reach(2));
        CHECK(h.context.fed_ids("general") ==
              as_strings(ids, 5));
        const auto report = h.context.reports().back();
        CHECK_FALSE(report.gap);
        CHECK(report.fetched == 20);
        CHECK(h.discord.requests()[2].request.after_message_id == std::to_string(ids[14]));
    }
    SECTION("a resumed session backfills what the cut-short run had not fetched") {
        h.discord.hold(false);
        h.event(Type::resumed);
        REQUIRE(h.reports_reach(2));
        CHECK(h.context.fed_ids("general") ==
              as_strings(ids, 5));
        CHECK_FALSE(h.context.reports().back().gap);
    }
    CHECK_FALSE(h.context.off_lane());
}

TEST_CASE("a new session while a run is going restarts it without feeding anything twice", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.page_size = 10;
    Harness h({"a", "b"}, options);
    const auto a = h.discord.add_history("a", kNow - kHour, 30);
    const auto b = h.discord.add_history("b", kNow - kHour, 30);
    h.context.set_cursor("a", a[0]);
    h.context.set_cursor("b", b[0]);

    h.discord.hold(true);
    h.event(Type::connected);
    REQUIRE(h.lane.wait_idle());
    REQUIRE(h.discord.release() == 2);  // the first page of each
    REQUIRE(h.answered(2));
    h.event(Type::connected, "second session");  // no disconnect reported in between
    REQUIRE(h.reports_reach(2));                 // the first run's two channels, cut short
    REQUIRE(h.lane.wait_idle());

    h.discord.hold(false);
    h.discord.release();  // the first run's second pages and the second run's first pages
    REQUIRE(h.reports_reach(4));
    CHECK(h.context.fed_ids("a") == as_strings(a, 1));
    CHECK(h.context.fed_ids("b") == as_strings(b, 1));
    const auto reports = h.context.reports();
    CHECK(reports[0].gap);
    CHECK(reports[1].gap);
    CHECK_FALSE(reports[2].gap);
    CHECK_FALSE(reports[3].gap);
}

TEST_CASE("retryable errors are retried, honouring retry_after, until the page comes", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.page_size = 10;
    Harness h({"general"}, options);
    const auto ids = h.discord.add_history("general", kNow - kHour, 15);
    h.context.set_cursor("general", ids[0]);
    h.discord.inject("general", fail_retryable("rate_limited", "429 on GET messages", 30));
    h.discord.inject("general", fail_retryable("http_503", "service unavailable"));  // no retry_after: backoff

    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    CHECK(h.context.fed_ids("general") == as_strings(ids, 1));
    const auto report = h.context.report("general");
    REQUIRE(report.has_value());
    CHECK_FALSE(report->gap);
    const auto requests = h.discord.requests();
    REQUIRE(requests.size() == 4);  // 2 failures, then 10 + 4
    CHECK(requests[1].at - requests[0].at >= 30ms);
    CHECK(requests[1].request.after_message_id == requests[0].request.after_message_id);
    CHECK(requests[2].request.after_message_id == requests[0].request.after_message_id);
}

TEST_CASE("a channel whose page keeps failing gives up with a gap after `retries` retries", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.retries = 2;
    Harness h({"general"}, options);
    const auto ids = h.discord.add_history("general", kNow - kHour, 5);
    h.context.set_cursor("general", ids[0]);
    for (int i = 0; i < 5; ++i) h.discord.inject("general", fail_retryable("http_502", "bad gateway", 1));
    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    CHECK(h.discord.requests().size() == 3);
    const auto report = h.context.report("general");
    REQUIRE(report.has_value());
    CHECK(report->gap);
    CHECK(report->gap_reason.find("3 times in a row") != std::string::npos);
    CHECK(report->gap_reason.find("http_502") != std::string::npos);
}

TEST_CASE("a fatal error stops that channel with a gap and its reason, the others finish", "[discord][recovery]") {
    Harness h({"secret", "general"});
    const auto secret = h.discord.add_history("secret", kNow - kHour, 5);
    const auto general = h.discord.add_history("general", kNow - kHour, 5);
    h.context.set_cursor("secret", secret[0]);
    h.context.set_cursor("general", general[0]);
    h.discord.inject("secret", fail("forbidden", "403 Missing Access: the bot needs READ_MESSAGE_HISTORY"));

    h.event(Type::connected);
    REQUIRE(h.reports_reach(2));
    CHECK(h.context.fed_ids("secret").empty());
    CHECK(h.context.fed_ids("general").size() == 4);
    const auto report = h.context.report("secret");
    REQUIRE(report.has_value());
    CHECK(report->gap);
    CHECK(report->gap_reason.find("forbidden") != std::string::npos);
    CHECK(report->gap_reason.find("READ_MESSAGE_HISTORY") != std::string::npos);
    CHECK(h.discord.requests().size() == 2);  // no retry of a fatal error
    CHECK_FALSE(h.context.report("general")->gap);
}

TEST_CASE("messages already processed count as duplicates and are not fed again", "[discord][recovery]") {
    Harness h({"general"});
    const auto ids = h.discord.add_history("general", kNow - kHour, 20);
    h.context.set_cursor("general", ids[4]);
    // Live messages processed after the cursor was read (e.g. while the connected event waited on the lane).
    for (std::size_t i = 15; i < 20; ++i) h.context.mark_processed("general", ids[i]);

    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    CHECK(h.context.fed_ids("general") ==
          as_strings(ids, 5, 15));
    const auto report = h.context.report("general");
    REQUIRE(report.has_value());
    CHECK(report->fetched == 15);
    CHECK(report->duplicates == 5);
    CHECK_FALSE(report->gap);
}

TEST_CASE("pages out of order and with repeats are sorted and deduplicated by snowflake", "[discord][recovery]") {
    BackfillOptions options = test_options();
    options.page_size = 10;
    Harness h({"general"}, options);
    const auto ids = h.discord.add_history("general", kNow - kHour, 26);
    h.context.set_cursor("general", ids[0]);
    h.discord.scramble(true);

    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    CHECK(h.context.fed_ids("general") == as_strings(ids, 1));
    const auto report = h.context.report("general");
    REQUIRE(report.has_value());
    CHECK(report->fetched == 25 + 3);  // each of the three pages repeats one message
    CHECK(report->duplicates == 3);
}

TEST_CASE("a connector without history reports a gap instead of hanging", "[discord][recovery]") {
    struct NoHistory final : Connector {
        ConnectorCapabilities capabilities() const override { return {}; }
        void start(ConnectorHost&) override {}
        void stop() override {}
        void send(const OutboundMessage&, SendCallback done) override { done(fail("unsupported", "no")); }
    } no_history;
    IoThread io;
    Lane lane;
    NullLogger logger;
    FakeContext context(no_history, lane, {"general"});
    context.set_cursor("general", recovery::snowflake_at(kNow - kHour));
    {
        DiscordBackfill policy(test_options(), logger, io.io);
        context.event(policy, Type::connected);
        REQUIRE(context.wait([&] { return context.reports_locked() == 1; }));
        REQUIRE(lane.wait_idle());
        lane.stop();
        io.stop();
    }
    const auto report = context.report("general");
    REQUIRE(report.has_value());
    CHECK(report->gap);
    CHECK(report->gap_reason.find("unsupported") != std::string::npos);
}

TEST_CASE("a page that says more follows but brings nothing newer ends the channel with a gap", "[discord][recovery]") {
    Harness h({"general"});
    const auto ids = h.discord.add_history("general", kNow - kHour, 5);
    h.context.set_cursor("general", ids[0]);
    HistoryPage empty;
    empty.complete = false;  // e.g. a page of only the bot's own messages, which the connector leaves out
    h.discord.inject("general", empty);
    h.event(Type::connected);
    REQUIRE(h.reports_reach(1));
    CHECK(h.discord.requests().size() == 1);
    const auto report = h.context.report("general");
    REQUIRE(report.has_value());
    CHECK(report->gap);
    CHECK(report->gap_reason.find("no message newer than " + std::to_string(ids[0])) != std::string::npos);
}
