#include "announce_bot.hpp"
#include "fake_bot_context.hpp"

#include <catch2/catch.hpp>

using switchboard::bots::AnnounceBot;
using namespace switchboard;
using namespace switchboard::testing_support;

namespace {
struct NullLogger final : Logger {
    void log(LogLevel, std::string_view, const LogFields&) noexcept override {}
};
}  // namespace

TEST_CASE("the announce bot routes a group envelope from its command, leaving out the channel it came from",
          "[announce]") {
    NullLogger logger;
    AnnounceBot bot({}, logger);
    RecordingBotContext context;
    bot.on_message(text_message("!announce ops deploy at 5"), context);
    REQUIRE(context.routed.size() == 1);
    CHECK(context.routed[0].kind == MessageKind::group);
    CHECK(context.routed[0].target == "ops");
    CHECK(context.routed[0].text == "[Alice] deploy at 5");
    CHECK(context.routed[0].origin == std::optional<Address>(Address::channel("test", "lobby")));
    bot.on_message(text_message("!announce ops"), context);
    CHECK(context.replies == std::vector<std::string>{"usage: !announce GROUP TEXT"});
}

TEST_CASE("only allowed authors may announce when a list is configured", "[announce]") {
    NullLogger logger;
    AnnounceBot bot({"bob"}, logger);
    RecordingBotContext context;
    bot.on_message(text_message("!announce ops hi"), context);
    CHECK(context.routed.empty());
    CHECK(context.replies == std::vector<std::string>{"Alice may not announce"});
}

TEST_CASE("the announce bot's report line names the status and who was missed", "[announce]") {
    DeliveryReport report;
    report.status = DeliveryStatus::partial;
    report.error_code = "partial";
    report.recipients = {{"a", Address::user("c", "a"), true, "", "1"}, {"b", Address::user("c", "b"), false, "unreachable", ""}};
    CHECK(AnnounceBot::describe("ops", report) ==
          "announcement to 'ops': partial (partial), 1 of 2 delivered; missed: b (unreachable)");
}
