#include "echo_bot.hpp"
#include "fake_bot_context.hpp"

#include <catch2/catch.hpp>

using switchboard::examples::EchoBot;
using namespace switchboard::testing_support;

TEST_CASE("the echo bot repeats plain lines and !echo arguments, and ignores other commands", "[echo]") {
    EchoBot bot("");
    RecordingBotContext context;
    bot.on_message(text_message("hello"), context);
    bot.on_message(text_message("!echo   spaced out"), context);
    bot.on_message(text_message("!help"), context);
    bot.on_message(text_message("!echoing"), context);
    bot.on_message(text_message("!echo"), context);
    REQUIRE(context.replies == std::vector<std::string>{"hello", "spaced out"});
}

TEST_CASE("the echo bot puts its prefix in front of every answer", "[echo]") {
    EchoBot bot("echo: ");
    RecordingBotContext context;
    bot.on_message(text_message("hi"), context);
    REQUIRE(context.replies == std::vector<std::string>{"echo: hi"});
    REQUIRE(bot.commands().front().name == "!echo");
}
