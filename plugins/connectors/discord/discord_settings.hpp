#pragma once
// The Discord connector's settings: the schema it declares, and the validated values it runs with.

#include <switchboard/config.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/result.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace switchboard::discord {

/// Where to connect: scheme, host, port and the path prefix of an http(s) or ws(s) URL.
struct Endpoint {
    bool tls = false;     ///< https / wss
    std::string host;     ///< Without brackets for IPv6.
    std::string port;     ///< Explicit, or 443 / 80 from the scheme.
    std::string path;     ///< Without a trailing slash ("" for the root).
    std::string query;    ///< Without the '?'.
    /// "host" or "host:port" as the Host header wants it.
    [[nodiscard]] std::string host_header() const;
};

/// Parses an http, https, ws or wss URL (Boost.URL). The error names the URL and what is wrong.
[[nodiscard]] Result<Endpoint> parse_endpoint(const std::string& url);

struct DiscordSettings {
    std::string token;
    std::string api_base = "https://discord.com/api/v10";
    std::uint64_t intents = 0;
    std::int64_t connect_timeout_ms = 10000;
    std::int64_t request_timeout_ms = 15000;
    std::int64_t reconnect_min_ms = 1000;
    std::int64_t reconnect_max_ms = 60000;
    std::uint32_t http_connections = 4;
    double global_rate = 50;  ///< Requests per second when the connection's `limits:` sets none.
};

/// The schema (`switchboard plugins --describe discord`).
[[nodiscard]] ConfigSchema settings_schema();

/// Reads validated settings; an error names the key at fault.
[[nodiscard]] Result<DiscordSettings> read_settings(const PluginConfig& config);

/// The checks beyond the schema, for `switchboard check`.
[[nodiscard]] std::vector<ConfigProblem> check_settings(const PluginConfig& config);

}  // namespace switchboard::discord
