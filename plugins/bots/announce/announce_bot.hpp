#pragma once
// The announce bot: `!announce GROUP TEXT` sends TEXT to every member of GROUP through the router, and logs the
// delivery report (delivered, partial with who was missed, group_dissolved, ...).

#include <switchboard/bot.hpp>

#include <set>
#include <string>

namespace switchboard::bots {

class AnnounceBot : public Bot {
public:
    /// @p allowed: author ids that may announce (empty: everyone). Reports go to @p logger.
    AnnounceBot(std::set<std::string> allowed, Logger& logger) : allowed_(std::move(allowed)), logger_(logger) {}

    std::vector<Command> commands() const override;
    void on_message(const Message& message, BotContext& context) override;

    /// One line for a report: "announcement to 'ops': partial (partial), 2 of 3 delivered; missed: alice".
    [[nodiscard]] static std::string describe(const std::string& group, const DeliveryReport& report);

private:
    std::set<std::string> allowed_;
    Logger& logger_;
};

}  // namespace switchboard::bots
