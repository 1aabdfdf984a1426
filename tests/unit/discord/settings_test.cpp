#include "discord_settings.hpp"

#include <catch2/catch.hpp>

using namespace switchboard;
using namespace switchboard::discord;

TEST_CASE("the schema declares the token as required and documents every key", "[discord]") {
    const ConfigSchema schema = settings_schema();
    auto find = [&](const std::string& name) {
        for (const auto& key : schema.keys) {
            if (key.name == name) return &key;
        }
        return static_cast<const ConfigKey*>(nullptr);
    };
    REQUIRE(find("token") != nullptr);
    CHECK(find("token")->required);
    REQUIRE(find("api_base") != nullptr);
    CHECK(find("api_base")->default_value == "https://discord.com/api/v10");
    REQUIRE(find("intents") != nullptr);
    CHECK(find("intents")->type == ValueType::string_list);
    for (const auto& key : schema.keys) CHECK_FALSE(key.description.empty());
}

TEST_CASE("settings are read with defaults, and bad ones are named", "[discord]") {
    PluginConfig config;
    config.set("token", std::string("secret"));
    auto settings = read_settings(config);
    REQUIRE(settings.has_value());
    CHECK(settings->token == "secret");
    CHECK(settings->api_base == "https://discord.com/api/v10");
    CHECK(settings->intents == (1 | 1 << 9 | 1 << 12 | 1 << 15));
    CHECK(check_settings(config).empty());

    config.set("intents", std::vector<std::string>{"GUILDS", "TYPING"});
    config.set("api_base", std::string("gopher://x"));
    const auto problems = check_settings(config);
    REQUIRE(problems.size() == 2);
    CHECK(problems[0].key == "api_base");
    CHECK(problems[1].key == "intents");
    CHECK(problems[1].message.find("TYPING") != std::string::npos);
    CHECK_FALSE(read_settings(config).has_value());
}
