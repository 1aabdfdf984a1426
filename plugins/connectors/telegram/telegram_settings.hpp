#pragma once
// The Telegram connector's settings: the schema it declares, and the validated values it runs with.

#include <cstdint>
#include <string>
#include <switchboard/config.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/result.hpp>
#include <vector>

namespace switchboard::telegram {

/// Where the Bot API is: scheme, host, port and path prefix of an http(s) URL.
struct Endpoint {
    bool tls = false;  ///< https
    std::string host;  ///< Without brackets for IPv6.
    std::string port;  ///< Explicit, or 443 / 80 from the scheme.
    std::string path;  ///< Without a trailing slash ("" for the root).
    /// "host" or "host:port" as the Host header wants it.
    [[nodiscard]] std::string host_header() const;
};

/// Parses an http or https URL (Boost.URL). The error names the URL and what is wrong.
[[nodiscard]] Result<Endpoint> parse_endpoint(const std::string& url);

struct TelegramSettings {
    std::string token;
    std::string api_base = "https://api.telegram.org";
    std::int64_t poll_timeout_s = 25;  ///< getUpdates long-poll timeout, whole seconds.
    std::uint32_t poll_limit = 100;    ///< getUpdates limit, 1..100.
    std::vector<std::string> allowed_updates{"message"};
    std::int64_t connect_timeout_ms = 10000;
    std::int64_t request_timeout_ms = 15000;  ///< One request; a long poll gets poll_timeout on top.
    std::int64_t reconnect_min_ms = 1000;
    std::int64_t reconnect_max_ms = 60000;
    std::uint32_t http_connections = 4;        ///< Keep-alive connections for sends and deletes.
    double chat_rate = 1;                      ///< Messages per second into one chat.
    std::uint32_t chat_burst = 3;              ///< Messages at once into one chat.
    std::uint32_t group_per_minute = 20;       ///< Messages per minute into one group (0: no limit).
    double send_rate = 30;                     ///< Messages per second across every chat (0: no limit).
    std::int64_t unconfirmed_warn_ms = 60000;  ///< Warn when an update waits this long to be handled.
};

/// The schema (`switchboard plugins --describe telegram`).
[[nodiscard]] ConfigSchema settings_schema();

/// Reads validated settings; an error names the key at fault.
[[nodiscard]] Result<TelegramSettings> read_settings(const PluginConfig& config);

/// The checks beyond the schema, for `switchboard check`.
[[nodiscard]] std::vector<ConfigProblem> check_settings(const PluginConfig& config);

}  // namespace switchboard::telegram
