#include "fake_bot_context.hpp"
#include "help_bot.hpp"

#include <catch2/catch.hpp>

using switchboard::bots::HelpBot;
using namespace switchboard::testing_support;

TEST_CASE("the help bot lists every bot and its commands when asked", "[help]") {
    HelpBot bot("!help");
    RecordingBotContext context;
    context.infos = {{"echo", {{"!echo", "TEXT", "repeats TEXT"}}}, {"quiet", {}}, {"help", bot.commands()}};
    bot.on_message(text_message("hello"), context);
    REQUIRE(context.replies.empty());
    bot.on_message(text_message("!help"), context);
    REQUIRE(context.replies.size() == 1);
    CHECK(context.replies[0] ==
          "3 bots:\necho\n  !echo TEXT - repeats TEXT\nquiet (no commands)\nhelp\n  !help - lists every bot and its commands");
}
