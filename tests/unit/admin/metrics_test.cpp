// The metrics text: every family has HELP and TYPE, every sample line is well formed (the exposition format's
// grammar, checked line by line here; with `promtool check metrics` too when Prometheus' promtool is installed), and
// the values follow what was recorded.
#include "admin/metrics.hpp"

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <sstream>

using namespace switchboard;
using namespace switchboard::admin;

namespace {

struct Parsed {
    std::map<std::string, std::string> types;  // family → counter|gauge|histogram
    std::map<std::string, double> samples;     // the sample line's name and labels as written → value
    std::vector<std::string> errors;
};

// A small parser of the text exposition format (version 0.0.4).
Parsed parse(const std::string& text) {
    static const std::regex help(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+$)");
    static const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$)");
    static const std::regex sample(
        R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*"(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*")*,?)?\})? ([-+0-9.eE]+|[+-]Inf|NaN)( -?[0-9]+)?$)");
    Parsed parsed;
    std::set<std::string> helped;
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.empty()) continue;
        std::smatch m;
        if (std::regex_match(line, m, help)) {
            helped.insert(m[1]);
        } else if (std::regex_match(line, m, type)) {
            if (!helped.count(m[1])) parsed.errors.push_back("TYPE before HELP: " + line);
            parsed.types[m[1]] = m[2];
        } else if (std::regex_match(line, m, sample)) {
            const std::string name = m[1];
            std::string family = name;
            for (const char* suffix : {"_bucket", "_sum", "_count"}) {
                const std::string s = suffix;
                if (!parsed.types.count(family) && family.size() > s.size() &&
                    family.compare(family.size() - s.size(), s.size(), s) == 0) {
                    family = family.substr(0, family.size() - s.size());
                }
            }
            if (!parsed.types.count(family)) parsed.errors.push_back("sample without TYPE: " + line);
            const std::string key = line.substr(0, line.rfind(' '));
            parsed.samples[key] = std::stod(m[7].str() == "+Inf" ? "inf" : m[7].str());
        } else {
            parsed.errors.push_back("not exposition format: " + line);
        }
    }
    return parsed;
}

ProcessedMessage inbound(std::string channel, std::string id, bool recovered = false) {
    ProcessedMessage p;
    p.message.connection = "irc";
    p.message.channel = std::move(channel);
    p.message.id = std::move(id);
    p.message.recovered = recovered;
    return p;
}

}  // namespace

TEST_CASE("Before anything is recorded the text parses and has the series made up front", "[admin][metrics]") {
    // Families with labels have no series until their first event (as every Prometheus client does); delivery
    // outcomes by status, fan-out latency and store latency by operation exist from the start.
    Metrics metrics;
    const Parsed parsed = parse(metrics.render());
    CHECK(parsed.errors.empty());
    CHECK(parsed.types.at("switchboard_deliveries_total") == "counter");
    CHECK(parsed.types.at("switchboard_fanout_seconds") == "histogram");
    CHECK(parsed.types.at("switchboard_store_seconds") == "histogram");
    CHECK(parsed.samples.at(R"(switchboard_deliveries_total{status="group_dissolved"})") == 0);
    CHECK(parsed.samples.at(R"(switchboard_store_seconds_count{op="commit"})") == 0);
}

TEST_CASE("Recorded events show in the text with their labels", "[admin][metrics]") {
    Metrics metrics;
    std::vector<ProcessedMessage> batch{inbound("#a", "1"), inbound("#a", "2"), inbound("#b", "3", true)};
    metrics.inbound("irc", batch, 2);
    metrics.connection_event("irc", ConnectionEvent::Type::disconnected);
    metrics.connection_event("irc", ConnectionEvent::Type::connected);
    metrics.recovery("irc", RecoveryReport{"#a", 10, 2, true, "no history"});
    metrics.recovery("irc", RecoveryReport{"#b", 0, 0, false, ""});

    DeliveryReport report;
    report.status = DeliveryStatus::partial;
    for (int i = 0; i < 3; ++i) {
        report.recipients.push_back(RecipientOutcome{"u" + std::to_string(i),
                                                     Address::user("discord", std::to_string(i)), true, {}, "m"});
    }
    report.recipients.push_back(RecipientOutcome{"u9", Address::user("discord", "9"), false, "unreachable", {}});
    report.recipients.push_back(RecipientOutcome{"#ops", Address::channel("irc", "#ops"), true, {}, {}});
    metrics.delivery(report, std::chrono::milliseconds(3));
    metrics.store_call(StoreOp::commit, std::chrono::microseconds(700));
    metrics.set_sampler([] {
        Sample sample;
        Sample::Connection c;
        c.name = "discord";
        c.rate_limits.limited = 4;
        c.rate_limits.waited_ms = 1500;
        c.queued = 7;
        sample.connections.push_back(c);
        sample.deliveries_in_progress = 2;
        sample.deliveries_waiting = 5;
        return sample;
    });

    const std::string text = metrics.render();
    const Parsed parsed = parse(text);
    INFO(text);
    CHECK(parsed.errors.empty());
    for (const char* family : {"switchboard_messages_in_total", "switchboard_messages_out_total",
                               "switchboard_dedup_hits_total", "switchboard_recovered_messages_total",
                               "switchboard_reconnects_total", "switchboard_recovery_runs_total",
                               "switchboard_recovery_gaps_total", "switchboard_connection_events_total"}) {
        INFO(family);
        CHECK(parsed.types.count(family) == 1);
    }
    CHECK(parsed.types.at("switchboard_rate_limited_total") == "counter");
    CHECK(parsed.types.at("switchboard_queue_depth") == "gauge");
    const auto& s = parsed.samples;
    CHECK(s.at(R"(switchboard_messages_in_total{channel="#a",connection="irc"})") == 2);
    CHECK(s.at(R"(switchboard_messages_in_total{channel="#b",connection="irc"})") == 1);
    CHECK(s.at(R"(switchboard_dedup_hits_total{connection="irc"})") == 2);
    CHECK(s.at(R"(switchboard_recovered_messages_total{connection="irc"})") == 1);
    CHECK(s.at(R"(switchboard_reconnects_total{connection="irc"})") == 1);
    CHECK(s.at(R"(switchboard_recovery_runs_total{connection="irc"})") == 2);
    CHECK(s.at(R"(switchboard_recovery_gaps_total{connection="irc"})") == 1);
    CHECK(s.at(R"(switchboard_deliveries_total{status="partial"})") == 1);
    CHECK(s.at(R"(switchboard_messages_out_total{channel="@user",connection="discord"})") == 3);
    CHECK(s.at(R"(switchboard_messages_out_total{channel="#ops",connection="irc"})") == 1);
    CHECK(s.at("switchboard_fanout_seconds_count") == 1);
    CHECK(s.at(R"(switchboard_fanout_seconds_bucket{le="0.005"})") == 1);
    CHECK(s.at(R"(switchboard_fanout_seconds_bucket{le="0.0025"})") == 0);
    CHECK(s.at(R"(switchboard_store_seconds_count{op="commit"})") == 1);
    CHECK(s.at(R"(switchboard_rate_limited_total{connection="discord"})") == 4);
    CHECK(s.at(R"(switchboard_rate_limit_wait_seconds_total{connection="discord"})") == 1.5);
    CHECK(s.at(R"(switchboard_queue_depth{connection="discord"})") == 7);
    CHECK(s.at("switchboard_outbox_in_flight") == 2);
    CHECK(s.at("switchboard_outbox_waiting_for_connection") == 5);

    // Prometheus' own checker, where it is installed (Debian's `prometheus` package).
    if (std::system("command -v promtool >/dev/null 2>&1") == 0) {
        const auto file = std::filesystem::temp_directory_path() / "switchboard-metrics-test.txt";
        std::ofstream(file) << text;
        const std::string command = "promtool check metrics < '" + file.string() + "' >/dev/null 2>&1";
        CHECK(std::system(command.c_str()) == 0);
        std::filesystem::remove(file);
    }
}

TEST_CASE("The instrumented store forwards every call and times it", "[admin][metrics]") {
    // A store that answers from fixed values: what matters is that the call reached it and was timed.
    struct Fixed final : Store {
        int calls = 0;
        Result<bool> is_processed(const MessageKey&) override { return ++calls, true; }
        Result<void> commit(std::span<const ProcessedMessage>) override { return ++calls, Result<void>(); }
        Result<std::optional<Cursor>> cursor(const std::string&, const std::string&) override {
            return ++calls, std::optional<Cursor>(Cursor{"42", 7});
        }
        Result<std::vector<ChannelCursor>> cursors(const std::string&) override {
            return ++calls, std::vector<ChannelCursor>{};
        }
        Result<void> put_connection_state(const std::string&, const std::string&, const std::string&) override {
            return ++calls, Result<void>();
        }
        Result<std::optional<std::string>> connection_state(const std::string&, const std::string&) override {
            return ++calls, std::optional<std::string>("v");
        }
        Result<std::optional<std::string>> get_value(const std::string&, const std::string&) override {
            return ++calls, std::optional<std::string>();
        }
        Result<void> put_values(std::span<const KeyValueWrite>) override { return ++calls, Result<void>(); }
        Result<void> outbox_add(std::span<const OutboxEntry>) override { return ++calls, Result<void>(); }
        Result<void> outbox_update(std::span<const OutboxEntry>) override {
            return ++calls, fail("outbox_entry_not_found", "x");
        }
        Result<std::vector<OutboxEntry>> outbox_pending() override { return ++calls, std::vector<OutboxEntry>{}; }
        Result<std::vector<OutboxEntry>> outbox_plan(const std::string&) override {
            return ++calls, std::vector<OutboxEntry>{};
        }
        Result<std::vector<Message>> messages(const std::string&, const std::string&, std::int64_t, std::int64_t,
                                              std::size_t) override {
            return ++calls, std::vector<Message>{};
        }
        Result<std::size_t> prune(std::int64_t) override { return ++calls, std::size_t{3}; }
    };
    auto fixed = std::make_shared<Fixed>();
    Metrics metrics;
    InstrumentedStore store(fixed, metrics);
    CHECK(*store.is_processed(MessageKey{"c", "ch", "1"}));
    CHECK(store.commit({}).has_value());
    CHECK(store.cursor("c", "ch")->value().message_id == "42");
    CHECK(store.cursors("c").has_value());
    CHECK(store.put_connection_state("c", "k", "v").has_value());
    CHECK(**store.connection_state("c", "k") == "v");
    CHECK(store.get_value("s", "k").has_value());
    CHECK(store.put_values({}).has_value());
    CHECK(store.outbox_add({}).has_value());
    CHECK(store.outbox_update({}).error().code == "outbox_entry_not_found");  // errors pass through unchanged
    CHECK(store.outbox_pending().has_value());
    CHECK(store.outbox_plan("p").has_value());
    CHECK(store.messages("c", "ch", 0, 1, 10).has_value());
    CHECK(*store.prune(0) == 3);
    CHECK(fixed->calls == 14);
    const Parsed parsed = parse(metrics.render());
    CHECK(parsed.samples.at(R"(switchboard_store_seconds_count{op="cursor"})") == 2);
    CHECK(parsed.samples.at(R"(switchboard_store_seconds_count{op="outbox_update"})") == 1);
    CHECK(parsed.samples.at(R"(switchboard_store_seconds_count{op="prune"})") == 1);
}

TEST_CASE("Reloads count by result, and the last one's outcome and time are gauges", "[admin][metrics]") {
    Metrics metrics;
    Parsed parsed = parse(metrics.render());
    CHECK(parsed.samples.at(R"(switchboard_reloads_total{result="ok"})") == 0);
    CHECK(parsed.samples.at(R"(switchboard_reloads_total{result="failed"})") == 0);
    CHECK(parsed.samples.count("switchboard_last_reload_success") == 0);  // no reload yet

    metrics.reload(true);
    metrics.reload(false);
    parsed = parse(metrics.render());
    CHECK(parsed.errors.empty());
    CHECK(parsed.types.at("switchboard_last_reload_success") == "gauge");
    CHECK(parsed.samples.at(R"(switchboard_reloads_total{result="ok"})") == 1);
    CHECK(parsed.samples.at(R"(switchboard_reloads_total{result="failed"})") == 1);
    CHECK(parsed.samples.at("switchboard_last_reload_success") == 0);
    CHECK(parsed.samples.at("switchboard_last_reload_timestamp_seconds") > 1.7e9);
}
