// Plugin schemas: durations and the generated documentation.

#include <catch2/catch.hpp>
#include <string>

#include "config/config.hpp"
#include "fake_plugins.hpp"

using namespace switchboard;
using namespace switchboard::config;
using namespace switchboard::config::testing;

TEST_CASE("Durations read as milliseconds", "[config]") {
    CHECK(parse_duration_ms("250") == 250);
    CHECK(parse_duration_ms("250ms") == 250);
    CHECK(parse_duration_ms("30s") == 30000);
    CHECK(parse_duration_ms("5m") == 300000);
    CHECK(parse_duration_ms("2h") == 7200000);
    CHECK(parse_duration_ms("14d") == 14LL * 24 * 3600 * 1000);
    CHECK(parse_duration_ms("1h30m") == 5400000);
    CHECK(parse_duration_ms(" 10s ") == 10000);
    CHECK_FALSE(parse_duration_ms(""));
    CHECK_FALSE(parse_duration_ms("soon"));
    CHECK_FALSE(
        parse_duration_ms("10"
                          "x"));
    CHECK_FALSE(parse_duration_ms("-5s"));
    CHECK_FALSE(parse_duration_ms("s"));
    CHECK_FALSE(parse_duration_ms("99999999999999999999d"));
    CHECK_FALSE(parse_duration_ms("9999999999999999d"));
}

TEST_CASE("A plugin's description lists every key with its type, default and description", "[config]") {
    const std::string text = describe_plugin(kIrc);
    INFO(text);
    CHECK(text.find("irc (connector plugin), version 1.2.3") != std::string::npos);
    CHECK(text.find("A fake plugin for the config tests.") != std::string::npos);
    for (const ConfigKey& key : kIrc.schema()->keys) {
        CHECK(text.find(key.name) != std::string::npos);
        CHECK(text.find(key.description) != std::string::npos);
    }
    CHECK(text.find("list of strings") != std::string::npos);
    CHECK(text.find("required") != std::string::npos);
    CHECK(text.find("default: 6667") != std::string::npos);
    CHECK(text.find("plugin: irc") != std::string::npos);
    CHECK(text.find("port: 6667") != std::string::npos);
}

TEST_CASE("A plugin's description example is a valid config with the defaults written out", "[config]") {
    const FakeSchemas schemas;
    for (const PluginDescriptor* descriptor : {&kSqlite, &kConsole, &kIrc}) {
        const std::string text = describe_plugin(*descriptor);
        const auto example = text.find("Example:\n");
        REQUIRE(example != std::string::npos);
        std::string yaml;
        // Drop the example's two-space indent.
        for (std::size_t at = example + 9; at < text.size();) {
            const auto end = text.find('\n', at);
            const std::string line = text.substr(at, end - at);
            yaml += (line.rfind("  ", 0) == 0 ? line.substr(2) : line) + "\n";
            at = end == std::string::npos ? text.size() : end + 1;
        }
        INFO(yaml);
        const LoadResult result = load_config_text(yaml, "example.yaml", schemas);
        std::string errors;
        for (const ConfigError& error : result.errors) errors += error.to_string() + "\n";
        CHECK(errors.empty());
    }
}

TEST_CASE("A plugin without settings says so", "[config]") {
    const std::string text = describe_plugin(kNone);
    CHECK(text.find("none (recovery plugin)") != std::string::npos);
    CHECK(text.find("Settings: none.") != std::string::npos);
    CHECK(text.find("policy: none") != std::string::npos);
}
