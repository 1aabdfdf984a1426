// The telegram-offset policy against a recording context: on `connected` it reports every watched channel, with the
// gap the connector recorded (or none), fetches nothing, and logs the gap.
#include <catch2/catch.hpp>
#include <map>

#include "telegram_offset.hpp"

using namespace switchboard;
using namespace switchboard::recovery;

namespace {

struct RecordingLogger final : Logger {
    void log(LogLevel level, std::string_view text, const LogFields&) noexcept override {
        lines.emplace_back(level, std::string(text));
    }
    std::vector<std::pair<LogLevel, std::string>> lines;
};

class NoConnector final : public Connector {
public:
    ConnectorCapabilities capabilities() const override { return {}; }
    void start(ConnectorHost&) override {}
    void stop() override {}
    void send(const OutboundMessage&, SendCallback done) override { done(fail("unsupported", "test")); }
};

class RecordingContext final : public RecoveryContext {
public:
    const std::string& connection() const override { return name_; }
    std::vector<std::string> channels() const override { return {"-100", "2001"}; }
    std::optional<Cursor> cursor(const std::string&) override { return std::nullopt; }
    Connector& connector() override { return connector_; }
    std::optional<std::string> load_state(const std::string& key) override {
        auto it = state.find(key);
        return it == state.end() ? std::nullopt : std::optional<std::string>(it->second);
    }
    void feed(Message message) override { fed.push_back(std::move(message)); }
    void finish(const RecoveryReport& report) override { reports.push_back(report); }

    std::map<std::string, std::string> state;
    std::vector<Message> fed;
    std::vector<RecoveryReport> reports;

private:
    std::string name_ = "telegram";
    NoConnector connector_;
};

}  // namespace

TEST_CASE("telegram-offset reports every channel without a gap when the connector recorded none", "[telegram]") {
    RecordingLogger logger;
    TelegramOffset policy(logger);
    RecordingContext context;
    context.state["gap"] = "";
    policy.on_event({ConnectionEvent::Type::connected, ""}, context);
    REQUIRE(context.reports.size() == 2);
    CHECK(context.reports[0].channel == "-100");
    CHECK(context.reports[1].channel == "2001");
    for (const auto& report : context.reports) {
        CHECK_FALSE(report.gap);
        CHECK(report.fetched == 0);
    }
    CHECK(context.fed.empty());
    CHECK(logger.lines.empty());
}

TEST_CASE("telegram-offset reports and logs the gap the connector recorded", "[telegram]") {
    RecordingLogger logger;
    TelegramOffset policy(logger);
    RecordingContext context;
    context.state["gap"] = R"({"from":51,"to":60,"reason":"no poll for 25 h 0 min"})";
    policy.on_event({ConnectionEvent::Type::connected, ""}, context);
    REQUIRE(context.reports.size() == 2);
    for (const auto& report : context.reports) {
        CHECK(report.gap);
        CHECK(report.gap_reason == "no poll for 25 h 0 min");
    }
    REQUIRE(logger.lines.size() == 1);
    CHECK(logger.lines[0].first == LogLevel::warn);
    CHECK(logger.lines[0].second.find("updates 51 to 60") != std::string::npos);
    CHECK(context.fed.empty());

    SECTION("other events report nothing") {
        context.reports.clear();
        policy.on_event({ConnectionEvent::Type::disconnected, "x"}, context);
        policy.on_event({ConnectionEvent::Type::resumed, ""}, context);
        CHECK(context.reports.empty());
    }
}

TEST_CASE("a gap record that does not parse is still a gap", "[telegram]") {
    CHECK_FALSE(parse_telegram_gap(std::nullopt));
    CHECK_FALSE(parse_telegram_gap(std::string()));
    const auto damaged = parse_telegram_gap(std::string("{oops"));
    REQUIRE(damaged);
    CHECK(damaged->reason.find("{oops") != std::string::npos);
    const auto partial = parse_telegram_gap(std::string(R"({"from":null,"to":null,"reason":"r"})"));
    REQUIRE(partial);
    CHECK_FALSE(partial->from);
    CHECK(partial->reason == "r");
}
