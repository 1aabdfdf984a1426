// Exports the ledger bot (tests only).
#include "ledger_bot.hpp"

namespace {

class LedgerPlugin final : public switchboard::testing_support::LedgerBot {
public:
    LedgerPlugin(const switchboard::PluginContext&, const switchboard::PluginConfig&) {}
};

}  // namespace

#ifdef SWITCHBOARD_LEDGER_V2
#define LEDGER_VERSION "2.0.0"
#else
#define LEDGER_VERSION "1.0.0"
#endif

SWITCHBOARD_PLUGIN(LedgerPlugin, "ledger", LEDGER_VERSION,
                   "Tests only: records every message it handles in its key-value space",
                   (switchboard::ConfigSchema{}))
