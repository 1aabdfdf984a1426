#include <catch2/catch.hpp>

#include "telegram_settings.hpp"

using namespace switchboard;
using namespace switchboard::telegram;

TEST_CASE("the telegram schema requires the token and documents every key", "[telegram]") {
    const ConfigSchema schema = settings_schema();
    const auto find = [&](const std::string& name) -> const ConfigKey* {
        for (const auto& key : schema.keys) {
            if (key.name == name) return &key;
        }
        return nullptr;
    };
    REQUIRE(find("token") != nullptr);
    CHECK(find("token")->required);
    REQUIRE(find("api_base") != nullptr);
    CHECK(find("api_base")->default_value == "https://api.telegram.org");
    REQUIRE(find("allowed_updates") != nullptr);
    CHECK(find("allowed_updates")->type == ValueType::string_list);
    for (const auto& key : schema.keys) CHECK_FALSE(key.description.empty());
}

TEST_CASE("telegram settings are read with Telegram's defaults", "[telegram]") {
    PluginConfig config;
    config.set("token", std::string("1000:secret"));
    auto settings = read_settings(config);
    REQUIRE(settings.has_value());
    CHECK(settings->token == "1000:secret");
    CHECK(settings->api_base == "https://api.telegram.org");
    CHECK(settings->poll_timeout_s == 25);
    CHECK(settings->poll_limit == 100);
    CHECK(settings->allowed_updates == std::vector<std::string>{"message"});
    CHECK(settings->chat_rate == 1);
    CHECK(settings->group_per_minute == 20);
    CHECK(settings->send_rate == 30);
    CHECK(check_settings(config).empty());

    config.set("poll_timeout", std::int64_t{3000});
    config.set("api_base", std::string("http://127.0.0.1:8081/"));
    settings = read_settings(config);
    REQUIRE(settings.has_value());
    CHECK(settings->poll_timeout_s == 3);
    auto endpoint = parse_endpoint(settings->api_base);
    REQUIRE(endpoint.has_value());
    CHECK_FALSE(endpoint->tls);
    CHECK(endpoint->host == "127.0.0.1");
    CHECK(endpoint->port == "8081");
    CHECK(endpoint->path.empty());
    CHECK(endpoint->host_header() == "127.0.0.1:8081");
}

TEST_CASE("bad telegram settings are named by key", "[telegram]") {
    PluginConfig config;
    config.set("token", std::string(""));
    config.set("api_base", std::string("ftp://x"));
    config.set("poll_limit", std::int64_t{101});
    config.set("poll_timeout", std::int64_t{60000});
    config.set("allowed_updates", std::vector<std::string>{"message", "typing"});
    config.set("reconnect_min", std::int64_t{5000});
    config.set("reconnect_max", std::int64_t{1000});
    const auto problems = check_settings(config);
    std::vector<std::string> keys;
    for (const auto& problem : problems) keys.push_back(problem.key);
    CHECK(keys == std::vector<std::string>{"token", "api_base", "poll_timeout", "poll_limit", "allowed_updates",
                                           "reconnect_max"});
    CHECK(problems[0].message.find("${TELEGRAM_TOKEN}") != std::string::npos);
    CHECK(problems[4].message.find("'typing'") != std::string::npos);
    auto settings = read_settings(config);
    REQUIRE_FALSE(settings.has_value());
    CHECK(settings.error().message.rfind("token:", 0) == 0);
}
