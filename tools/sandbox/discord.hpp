#pragma once
// The Discord platform of the sandbox: REST v10, Gateway v10 and the /_sandbox/ control API on one port.

#include "server.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace switchboard::sandbox::discord {

/// Start-up settings; every one but the token and host can also be changed at run time (POST /_sandbox/config).
struct Options {
    std::string token = "sandbox-token";    ///< the bot token REST and Identify must carry
    std::string public_host = "127.0.0.1";  ///< host written into gateway URLs
    int heartbeat_interval_ms = 41250;
    int resume_timeout_ms = 180000;  ///< how long a dropped session stays resumable
    int reconnect_close_ms = 5000;   ///< after op 7, the server closes the socket itself this much later
    int global_rate = 50;            ///< REST requests per second per bot
    int route_limit = 5;             ///< requests per route bucket per window
    int route_window_ms = 5000;
    int gateway_rate = 120;               ///< payloads a client may send per 60 s before close 4008
    int identify_budget = 1000;           ///< Identifies per 24 h (session_start_limit.total)
    int nonce_window_ms = 300000;         ///< how long enforce_nonce remembers a nonce
    bool message_content_allowed = true;  ///< the application may ask for the MESSAGE_CONTENT intent
    std::size_t replay_buffer = 100000;   ///< dispatches kept per session for resume
    std::size_t request_log_max = 100000;
    bool verbose = false;  ///< log every request and gateway event to stderr
};

/// @brief The Discord service, serving gateway URLs that point at @p port.
std::unique_ptr<Service> make_service(Loop& loop, std::uint16_t port, Options options);

}  // namespace switchboard::sandbox::discord
