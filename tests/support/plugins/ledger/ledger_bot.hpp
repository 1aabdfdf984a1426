#pragma once
// The ledger bot, for end-to-end tests: it records in its key-value space, which the store commits in the same
// transaction as the message itself, every message it handles:
//   "seen <connection>/<channel>/<id>" -> how many times this message reached the bot (must be "1");
//   "count <connection>/<channel>"     -> how many messages of that channel it handled;
//   "at <connection>/<channel> <n>"    -> the text of the n-th of them (n from 1), so a test can check the order.
// After the host has stopped, a test opens the store and reads these back (ledger_reader.hpp).

#include <switchboard/bot.hpp>

namespace switchboard::testing_support {

class LedgerBot : public Bot {
public:
    std::vector<Command> commands() const override { return {}; }
    void on_message(const Message& message, BotContext& context) override;
};

}  // namespace switchboard::testing_support
