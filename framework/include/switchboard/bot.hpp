#pragma once
/// @file bot.hpp
/// @brief Bot plugins: commands and message handlers.

#include <switchboard/message.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/routing.hpp>

#include <optional>
#include <string>
#include <vector>

namespace switchboard {

/// @brief One command a bot answers, for `help`.
struct Command {
    /// @brief What to type (`!echo`).
    std::string name;
    /// @brief Arguments, for the usage line (`TEXT`).
    std::string usage;
    /// @brief One sentence saying what it does.
    std::string help;
};

/// @brief A loaded bot, as other bots (such as `help`) see it.
struct BotInfo {
    /// @brief The bot's configured name (defaults to its plugin name).
    std::string name;
    /// @brief Its commands.
    std::vector<Command> commands;
};

/// @brief A bot's own key-value space. Writes made while handling a message become durable together with that
/// message's "processed" mark, so after a crash they are neither lost nor applied twice.
class KeyValueSpace {
public:
    virtual ~KeyValueSpace() = default;
    /// @brief The value of @p key, if any (sees this message's own earlier writes).
    [[nodiscard]] virtual std::optional<std::string> get(const std::string& key) = 0;
    /// @brief Sets @p key.
    virtual void put(const std::string& key, std::string value) = 0;
    /// @brief Removes @p key.
    virtual void erase(const std::string& key) = 0;
};

/// @brief What a bot gets while it handles one message.
class BotContext {
public:
    virtual ~BotContext() = default;
    /// @brief Answers in the message's channel (or privately, for a private message).
    virtual void reply(std::string text) = 0;
    /// @brief Sends @p text to @p to. Sent once the message is marked processed, and only then.
    virtual void send(const Address& to, std::string text) = 0;
    /// @brief Routes @p envelope — to a person (private), a group or channel (group), or every channel in scope
    /// (broadcast) — through the strategy of its kind. It is planned now; the plan's recipients enter the outbox
    /// together with this message's "processed" mark and are sent after it. @p done (optional) receives the
    /// DeliveryReport, on any thread, after on_message has returned; a plan that fails at once (unknown group or
    /// person) reports at once. An empty idempotency key is derived from the message, so handling the same
    /// message again never sends twice.
    virtual void route(Envelope envelope, ReportCallback done = {}) = 0;
    /// @brief This bot's key-value space.
    [[nodiscard]] virtual KeyValueSpace& state() = 0;
    /// @brief Every loaded bot, in config order.
    [[nodiscard]] virtual const std::vector<BotInfo>& bots() const = 0;
    /// @brief Where to log.
    [[nodiscard]] virtual Logger& logger() = 0;
};

/// @brief The interface every bot plugin implements.
class Bot : public PluginObject {
public:
    /// @brief The SDK interface this class implements (used by SWITCHBOARD_PLUGIN).
    using Interface = Bot;
    /// @brief Bot plugins are of kind bot.
    static constexpr PluginKind kKind = PluginKind::bot;

    /// @brief The commands this bot answers, for `help`.
    [[nodiscard]] virtual std::vector<Command> commands() const = 0;

    /// @brief Handles one message of a channel the bot is configured on. Messages of one channel arrive one at a
    /// time, in platform order. Exceptions are caught by the host, logged, and the message counts as handled.
    virtual void on_message(const Message& message, BotContext& context) = 0;
};

}  // namespace switchboard
