#include "irc_replay.hpp"

#include <catch2/catch.hpp>

#include <deque>
#include <map>

using namespace switchboard;

namespace {

Message message(const std::string& id, std::int64_t time_ms, const std::string& text = "x") {
    Message m;
    m.id = id;
    m.channel = "#ops";
    m.author = Author{"alice", "alice", false};
    m.text = text;
    m.timestamp_ms = time_ms;
    m.recovered = true;
    return m;
}

/// A connector that answers fetch_history from a script and records the requests.
class ScriptedConnector final : public Connector {
public:
    ConnectorCapabilities capabilities() const override { return {}; }
    void start(ConnectorHost&) override {}
    void stop() override {}
    void send(const OutboundMessage&, SendCallback done) override { done(SentMessage{}); }
    void fetch_history(const HistoryRequest& request, HistoryCallback done) override {
        requests.push_back(request);
        if (request.limit == 0) return done(HistoryPage{});
        REQUIRE_FALSE(answers.empty());
        auto answer = std::move(answers.front());
        answers.pop_front();
        done(std::move(answer));
    }
    std::deque<Result<HistoryPage>> answers;
    std::vector<HistoryRequest> requests;
};

class FakeContext final : public RecoveryContext {
public:
    const std::string& connection() const override { return name; }
    std::vector<std::string> channels() const override { return {"#ops"}; }
    std::optional<Cursor> cursor(const std::string& channel) override {
        auto it = cursors.find(channel);
        return it == cursors.end() ? std::nullopt : std::optional<Cursor>(it->second);
    }
    Connector& connector() override { return scripted; }
    void feed(Message m) override { fed.push_back(std::move(m)); }
    void finish(const RecoveryReport& report) override { reports.push_back(report); }

    std::string name = "irc";
    std::map<std::string, Cursor> cursors;
    ScriptedConnector scripted;
    std::vector<Message> fed;
    std::vector<RecoveryReport> reports;
};

HistoryPage page(std::vector<Message> messages, bool complete = true) {
    HistoryPage p;
    p.messages = std::move(messages);
    p.complete = complete;
    return p;
}

std::vector<std::string> ids(const std::vector<Message>& messages) {
    std::vector<std::string> out;
    for (const auto& m : messages) out.push_back(m.id);
    return out;
}

const ConnectionEvent kDown{ConnectionEvent::Type::disconnected, "read: End of file"};
const ConnectionEvent kUp{ConnectionEvent::Type::connected, "registered"};

}  // namespace

TEST_CASE("after a rejoin the replay after the cursor is fed in order and the rest counted as duplicates", "[irc]") {
    std::int64_t now = 1'000'000;
    irc_replay::IrcReplayPolicy policy({}, [&now] { return now; });
    FakeContext context;
    context.cursors["#ops"] = Cursor{"m2", 2000};
    context.scripted.answers.push_back(page({message("m1", 1000), message("m2", 2000), message("m3", 3000),
                                             message("m4", 4000)}));
    policy.on_event(kDown, context);
    policy.on_event(kUp, context);
    REQUIRE(context.scripted.requests.size() == 1);
    CHECK_FALSE(context.scripted.requests[0].after_message_id.has_value());  // the whole replay: the policy looks
    CHECK(ids(context.fed) == std::vector<std::string>{"m3", "m4"});
    for (const auto& m : context.fed) CHECK(m.recovered);
    REQUIRE(context.reports.size() == 1);
    CHECK(context.reports[0].fetched == 4);
    CHECK(context.reports[0].duplicates == 2);
    CHECK_FALSE(context.reports[0].gap);
}

TEST_CASE("a server without history makes the policy report the gap from disconnect to rejoin", "[irc]") {
    std::int64_t now = 1'795'731'175'000;
    irc_replay::IrcReplayPolicy policy({}, [&now] { return now; });
    FakeContext context;
    context.cursors["#ops"] = Cursor{"h-1", 1000};
    context.scripted.answers.push_back(fail("no_history", "the server keeps no history of #ops"));
    policy.on_event(kDown, context);
    now += 5000;
    policy.on_event(kUp, context);
    REQUIRE(context.reports.size() == 1);
    CHECK(context.reports[0].gap);
    CHECK(context.reports[0].gap_reason.find("2026-11-26T22:12:55.000Z") != std::string::npos);
    CHECK(context.reports[0].gap_reason.find("2026-11-26T22:13:00.000Z") != std::string::npos);
    CHECK(context.reports[0].gap_reason.find("no_history") != std::string::npos);
    CHECK(context.fed.empty());
}

TEST_CASE("history that starts after the cursor is fed and reported as a possible gap", "[irc]") {
    irc_replay::IrcReplayPolicy policy({}, [] { return std::int64_t{99'000}; });
    FakeContext context;
    context.cursors["#ops"] = Cursor{"gone", 1000};
    context.scripted.answers.push_back(page({message("m8", 8000), message("m9", 9000)}));
    policy.on_event(kUp, context);  // a restart: no disconnect seen in this run, the cursor says where we were
    CHECK(ids(context.fed) == std::vector<std::string>{"m8", "m9"});
    REQUIRE(context.reports.size() == 1);
    CHECK(context.reports[0].gap);
}

TEST_CASE("replayed lines older than the cursor are not fed when the cursor's id is not in the replay", "[irc]") {
    irc_replay::IrcReplayPolicy policy({}, [] { return std::int64_t{99'000}; });
    FakeContext context;
    context.cursors["#ops"] = Cursor{"h-live-id", 5'400};  // ms precision live, whole seconds replayed
    context.scripted.answers.push_back(page({message("a", 3000), message("b", 5000), message("c", 7000)}));
    policy.on_event(kUp, context);
    CHECK(ids(context.fed) == std::vector<std::string>{"b", "c"});  // b: same second as the cursor; dedup decides
    CHECK_FALSE(context.reports.at(0).gap);
}

TEST_CASE("a first start with no cursor takes nothing and lets live lines go", "[irc]") {
    irc_replay::IrcReplayPolicy policy({}, [] { return std::int64_t{1}; });
    FakeContext context;
    policy.on_event(kUp, context);
    REQUIRE(context.scripted.requests.size() == 1);
    CHECK(context.scripted.requests[0].limit == 0);
    CHECK(context.fed.empty());
    REQUIRE(context.reports.size() == 1);
    CHECK_FALSE(context.reports[0].gap);
}

TEST_CASE("where the server pages, the policy asks CHATHISTORY AFTER the cursor until complete", "[irc]") {
    irc_replay::ReplaySettings settings;
    settings.page_size = 2;
    irc_replay::IrcReplayPolicy policy(settings, [] { return std::int64_t{1}; });
    FakeContext context;
    context.cursors["#ops"] = Cursor{"m1", 1000};
    context.scripted.answers.push_back(page({message("m8", 8000), message("m9", 9000)}, false));  // LATEST
    context.scripted.answers.push_back(page({message("m2", 2000), message("m3", 3000)}, false));  // AFTER m1
    context.scripted.answers.push_back(page({message("m4", 4000)}, true));                        // AFTER m3
    policy.on_event(kDown, context);
    policy.on_event(kUp, context);
    REQUIRE(context.scripted.requests.size() == 3);
    CHECK(context.scripted.requests[1].after_message_id == std::optional<std::string>("m1"));
    CHECK(context.scripted.requests[2].after_message_id == std::optional<std::string>("m3"));
    CHECK(ids(context.fed) == std::vector<std::string>{"m2", "m3", "m4"});
    CHECK_FALSE(context.reports.at(0).gap);
}

TEST_CASE("a recovery cut short by a new disconnect runs again from the first outage at the next rejoin", "[irc]") {
    std::int64_t now = 1'795'731'175'000;
    irc_replay::IrcReplayPolicy policy({}, [&now] { return now; });
    FakeContext context;
    policy.on_event(kDown, context);  // 22:12:55
    now += 5000;
    context.scripted.answers.push_back(Error{"not_connected", "dropped again", true, 1000});
    policy.on_event(kUp, context);
    REQUIRE(context.reports.size() == 1);
    CHECK(context.reports[0].gap_reason.find("recovery interrupted") != std::string::npos);
    now += 5000;
    policy.on_event(kDown, context);  // a later disconnect does not move the start
    now += 5000;
    context.scripted.answers.push_back(fail("no_history", "none kept"));
    policy.on_event(kUp, context);
    REQUIRE(context.reports.size() == 2);
    CHECK(context.reports[1].gap_reason.find("from 2026-11-26T22:12:55.000Z") != std::string::npos);
}
