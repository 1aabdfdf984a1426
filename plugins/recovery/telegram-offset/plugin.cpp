// Exports the Telegram recovery policy as the `telegram-offset` plugin; the logic lives in telegram_offset.cpp.
#include "telegram_offset.hpp"

SWITCHBOARD_PLUGIN(switchboard::recovery::TelegramOffset, "telegram-offset", "1.0.0",
                   "Telegram: unconfirmed updates come again by themselves; reports the updates that expired (an "
                   "outage over 24 h) as a gap",
                   switchboard::ConfigSchema{})
