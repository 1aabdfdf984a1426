#include "console_connector.hpp"
#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <unistd.h>

#include <map>
#include <mutex>
#include <sstream>

using namespace switchboard;
using switchboard::console::ConsoleConnector;
using switchboard::console::ConsoleLine;
using switchboard::console::parse_console_line;

namespace {

/// A scheduler with no limits: grants every request at once and counts what it saw.
class UnlimitedRateLimits final : public RateLimitScheduler {
public:
    void define(const std::string&, double, std::uint32_t) override {}
    void acquire(RateRequest, RateGrant grant) override {
        {
            std::lock_guard lock(mutex_);
            ++stats_.granted;
        }
        grant(Result<void>());
    }
    void observe(const std::string&, const RateLimitInfo& info) override {
        std::lock_guard lock(mutex_);
        if (info.limited) ++stats_.limited;
    }
    RateLimitStats stats() const override {
        std::lock_guard lock(mutex_);
        return stats_;
    }

private:
    mutable std::mutex mutex_;
    RateLimitStats stats_;
};

class RecordingHost final : public ConnectorHost {
public:
    RateLimitScheduler& rate_limits() override { return rate_limits_; }
    std::optional<std::string> load_state(const std::string& key) override {
        std::lock_guard lock(mutex);
        auto it = state.find(key);
        return it == state.end() ? std::nullopt : std::optional<std::string>(it->second);
    }
    void save_state(std::string key, std::string value) override {
        std::lock_guard lock(mutex);
        state[std::move(key)] = std::move(value);
    }
    Result<bool> is_processed(const Message& message) override {  // what it recorded counts as handled
        std::lock_guard lock(mutex);
        for (const Message& m : messages) {
            if (m.channel == message.channel && m.id == message.id) return true;
        }
        return false;
    }
    void deliver(Message message) override {
        std::lock_guard lock(mutex);
        messages.push_back(std::move(message));
    }
    void report(const ConnectionEvent& event) override {
        std::lock_guard lock(mutex);
        events.push_back(event);
    }
    void report_members(const std::string&, std::vector<std::string>) override {}
    bool finished() {
        std::lock_guard lock(mutex);
        return !events.empty() && events.back().type == ConnectionEvent::Type::finished;
    }
    std::mutex mutex;
    std::vector<Message> messages;
    std::vector<ConnectionEvent> events;
    std::map<std::string, std::string> state;
    UnlimitedRateLimits rate_limits_;
};

}  // namespace

TEST_CASE("console lines parse into messages, speaker switches and commands", "[console]") {
    CHECK(parse_console_line("hello").type == ConsoleLine::Type::message);
    CHECK(parse_console_line("").type == ConsoleLine::Type::ignore);
    CHECK(parse_console_line("/quit").type == ConsoleLine::Type::quit);
    CHECK(parse_console_line("/help").type == ConsoleLine::Type::help);
    const auto as = parse_console_line("/as bob");
    CHECK((as.type == ConsoleLine::Type::switch_speaker && as.user == "bob" && !as.is_private));
    const auto dm = parse_console_line("/dm  carol   hi there ");
    CHECK((dm.type == ConsoleLine::Type::message && dm.user == "carol" && dm.is_private && dm.text == "hi there "));
    CHECK(parse_console_line("//etc").text == "/etc");
    CHECK(parse_console_line("/as").type == ConsoleLine::Type::error);
    CHECK(parse_console_line("/bogus x").type == ConsoleLine::Type::error);
    CHECK(parse_console_line("windows\r").text == "windows");
}

TEST_CASE("the console connector delivers typed lines in order and finishes at end of input", "[console]") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    std::ostringstream output;
    RecordingHost host;
    {
        ConsoleConnector connector(console::ConsoleSettings{"lobby", "dave", "bot", false}, fds[0], output);
        connector.start(host);
        const std::string input = "one\n/dm erin two\n/as frank\nthree\n/help\nno newline at end";
        REQUIRE(::write(fds[1], input.data(), input.size()) == static_cast<ssize_t>(input.size()));
        ::close(fds[1]);
        REQUIRE(testing_support::wait_until([&] { return host.finished(); }));

        bool sent = false;
        connector.send(OutboundMessage{Address::user("c", "erin"), "hi erin", std::nullopt, "k"},
                       [&](Result<SentMessage> result) { sent = result.has_value() && !result->message_id.empty(); });
        CHECK(sent);
        connector.stop();
    }
    ::close(fds[0]);
    REQUIRE(host.messages.size() == 4);
    CHECK(host.messages[0].text == "one");
    CHECK(host.messages[0].author.id == "dave");
    CHECK(host.messages[0].channel == "lobby");
    CHECK(host.messages[1].kind == MessageKind::private_message);
    CHECK(host.messages[1].author.id == "erin");
    CHECK(host.messages[2].author.id == "frank");
    CHECK(host.messages[3].text == "no newline at end");
    // ids are unique and ordered
    for (std::size_t i = 1; i < host.messages.size(); ++i) CHECK(host.messages[i - 1].id < host.messages[i].id);
    CHECK(host.events.front().type == ConnectionEvent::Type::resumed);
    CHECK(host.events.back().detail == "end of input");
    CHECK(output.str().find("* now speaking as frank in lobby") != std::string::npos);
    CHECK(output.str().find("* console commands:") != std::string::npos);
    CHECK(output.str().find("<bot to @erin> hi erin\n") != std::string::npos);
}

TEST_CASE("stopping the console connector wakes its reader without input", "[console]") {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    std::ostringstream output;
    RecordingHost host;
    {
        ConsoleConnector connector(console::ConsoleSettings{}, fds[0], output);
        connector.start(host);
        connector.stop();
    }
    ::close(fds[0]);
    ::close(fds[1]);
    CHECK(!host.finished());
}
