#pragma once
// The Telegram platform of the sandbox: the Bot API (/bot<token>/<method>) and the /_sandbox/ control API on one port.

#include <cstdint>
#include <memory>
#include <string>

#include "server.hpp"

namespace switchboard::sandbox::telegram {

/// Start-up settings; the send limits can also be changed at run time (POST /_sandbox/config).
struct Options {
    std::string token =
        "1000:sandbox-token";          ///< the bot token every Bot API path must carry; its number is the bot id
    std::int64_t first_update_id = 1;  ///< update_id of the first update
    double chat_rate = 1;              ///< sendMessage per second into one chat (0: no limit)
    int chat_burst = 3;                ///< how many sends into one chat may come at once before chat_rate holds
    int group_per_minute = 20;         ///< sendMessage per minute into one group or supergroup (0: no limit)
    int global_rate = 30;              ///< sendMessage per second over all chats (0: no limit)
    std::int64_t retention_ms = 24 * 3600 * 1000;  ///< how long an unconfirmed update is kept, on the sandbox clock
    int max_poll_timeout_s = 50;                   ///< getUpdates' timeout is capped here, as the real server does
    std::size_t request_log_max = 10000;
    bool verbose = false;  ///< log every request to stderr
};

/// @brief The Telegram service.
std::unique_ptr<Service> make_service(Loop& loop, Options options);

}  // namespace switchboard::sandbox::telegram
