// Exports the Discord backfill recovery policy as the `discord-backfill` plugin; the logic lives in
// discord_backfill.cpp.
#include "discord_backfill.hpp"

SWITCHBOARD_PLUGIN(switchboard::recovery::DiscordBackfill, "discord-backfill", "1.0.0",
                   "After a new Discord session, pages every watched channel's history after its cursor and feeds "
                   "what was missed",
                   switchboard::recovery::DiscordBackfill::config_schema())
