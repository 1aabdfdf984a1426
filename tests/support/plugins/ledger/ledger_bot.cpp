#include "ledger_bot.hpp"

#include <string>

namespace switchboard::testing_support {
namespace {

std::uint64_t read_count(KeyValueSpace& state, const std::string& key) {
    const auto value = state.get(key);
    return value ? std::stoull(*value) : 0;
}

}  // namespace

void LedgerBot::on_message(const Message& message, BotContext& context) {
    KeyValueSpace& state = context.state();
    const std::string channel = message.connection + "/" + message.channel;
    const std::string seen = "seen " + channel + "/" + message.id;
    state.put(seen, std::to_string(read_count(state, seen) + 1));
    const std::uint64_t n = read_count(state, "count " + channel) + 1;
    state.put("count " + channel, std::to_string(n));
    state.put("at " + channel + " " + std::to_string(n), message.text);
}

}  // namespace switchboard::testing_support
