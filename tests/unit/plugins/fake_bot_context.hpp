#pragma once
// A BotContext that records what a bot does, for bot unit tests.

#include <switchboard/bot.hpp>

#include <map>

namespace switchboard::testing_support {

class RecordingBotContext final : public BotContext, public KeyValueSpace {
public:
    struct Sent {
        Address to;
        std::string text;
    };
    std::vector<std::string> replies;
    std::vector<Sent> sent;
    std::vector<Envelope> routed;
    std::map<std::string, std::string> values;
    std::vector<BotInfo> infos;

    void reply(std::string text) override { replies.push_back(std::move(text)); }
    void send(const Address& to, std::string text) override { sent.push_back({to, std::move(text)}); }
    void route(Envelope envelope, ReportCallback) override { routed.push_back(std::move(envelope)); }
    KeyValueSpace& state() override { return *this; }
    const std::vector<BotInfo>& bots() const override { return infos; }
    Logger& logger() override { return logger_; }
    std::optional<std::string> get(const std::string& key) override {
        auto it = values.find(key);
        return it == values.end() ? std::nullopt : std::optional<std::string>(it->second);
    }
    void put(const std::string& key, std::string value) override { values[key] = std::move(value); }
    void erase(const std::string& key) override { values.erase(key); }

private:
    struct NullLogger final : Logger {
        void log(LogLevel, std::string_view, const LogFields&) noexcept override {}
    } logger_;
};

inline Message text_message(std::string text) {
    Message message;
    message.id = "1";
    message.connection = "test";
    message.channel = "lobby";
    message.author = Author{"alice", "Alice", false};
    message.text = std::move(text);
    return message;
}

}  // namespace switchboard::testing_support
