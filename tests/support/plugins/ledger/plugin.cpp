// Exports the ledger bot (tests only).
#include "ledger_bot.hpp"

namespace {

class LedgerPlugin final : public switchboard::testing_support::LedgerBot {
public:
    LedgerPlugin(const switchboard::PluginContext&, const switchboard::PluginConfig&) {}
};

}  // namespace

SWITCHBOARD_PLUGIN(LedgerPlugin, "ledger", "1.0.0",
                   "Tests only: records every message it handles in its key-value space",
                   (switchboard::ConfigSchema{}))
