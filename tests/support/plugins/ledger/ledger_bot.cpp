#include "ledger_bot.hpp"

#include <string>
#include <string_view>

namespace switchboard::testing_support {
namespace {

// The second build (SWITCHBOARD_LEDGER_V2, for reload tests) marks what it records, so a test sees which version
// of the library handled a message.
#ifdef SWITCHBOARD_LEDGER_V2
constexpr std::string_view kTextPrefix = "v2 ";
#else
constexpr std::string_view kTextPrefix = "";
#endif

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
    state.put("at " + channel + " " + std::to_string(n), std::string(kTextPrefix) + message.text);
}

}  // namespace switchboard::testing_support
