#include "discord_settings.hpp"

#include "discord_protocol.hpp"

#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>

#include <algorithm>

namespace switchboard::discord {

std::string Endpoint::host_header() const {
    const bool v6 = host.find(':') != std::string::npos;
    const std::string name = v6 ? "[" + host + "]" : host;
    const bool default_port = (tls && port == "443") || (!tls && port == "80");
    return default_port ? name : name + ":" + port;
}

Result<Endpoint> parse_endpoint(const std::string& url) {
    auto parsed = boost::urls::parse_uri(url);
    if (!parsed) return fail("bad_url", "'" + url + "' is not a URL (" + parsed.error().message() + ")");
    const boost::urls::url_view& view = *parsed;
    std::string scheme(view.scheme());
    std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
    Endpoint endpoint;
    if (scheme == "https" || scheme == "wss") {
        endpoint.tls = true;
    } else if (scheme != "http" && scheme != "ws") {
        return fail("bad_url", "'" + url + "': the scheme must be https, http, wss or ws, not '" + scheme + "'");
    }
    endpoint.host = std::string(view.encoded_host());
    if (endpoint.host.size() > 2 && endpoint.host.front() == '[' && endpoint.host.back() == ']') {
        endpoint.host = endpoint.host.substr(1, endpoint.host.size() - 2);
    }
    if (endpoint.host.empty()) return fail("bad_url", "'" + url + "' names no host");
    endpoint.port = view.has_port() && !view.port().empty() ? std::string(view.port()) : endpoint.tls ? "443" : "80";
    endpoint.path = std::string(view.encoded_path());
    while (!endpoint.path.empty() && endpoint.path.back() == '/') endpoint.path.pop_back();
    if (view.has_query()) endpoint.query = std::string(view.encoded_query());
    return endpoint;
}

ConfigSchema settings_schema() {
    return ConfigSchema{{
        {"token", ValueType::string, true, "",
         "The bot token from the Discord developer portal; write ${DISCORD_TOKEN}, never the token itself."},
        {"api_base", ValueType::string, false, "https://discord.com/api/v10",
         "REST base URL; the gateway URL comes from GET <api_base>/gateway/bot. http:// for a local sandbox."},
        {"intents", ValueType::string_list, false, "[GUILDS, GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT]",
         "Gateway intents by name (GUILDS, GUILD_MESSAGES, DIRECT_MESSAGES, MESSAGE_CONTENT) or bit value; "
         "MESSAGE_CONTENT is privileged and must be enabled in the developer portal."},
        {"connect_timeout", ValueType::duration, false, "10s",
         "Limit for a TCP connect, TLS handshake, WebSocket handshake or the gateway's Hello."},
        {"request_timeout", ValueType::duration, false, "15s", "Limit for one REST request and its response."},
        {"reconnect_min", ValueType::duration, false, "1s", "First gateway reconnect delay (then doubled, with jitter)."},
        {"reconnect_max", ValueType::duration, false, "60s", "Longest gateway reconnect delay."},
        {"http_connections", ValueType::integer, false, "4", "Keep-alive REST connections at most, used in parallel."},
        {"global_rate", ValueType::number, false, "50",
         "Requests per second across the bot (Discord's global limit); the connection's limits.rate wins."},
    }};
}

Result<DiscordSettings> read_settings(const PluginConfig& config) {
    DiscordSettings settings;
    settings.token = config.get_string("token");
    if (settings.token.empty()) return fail("bad_config", "token: empty; set it to ${DISCORD_TOKEN}");
    settings.api_base = config.get_string("api_base", settings.api_base);
    if (auto endpoint = parse_endpoint(settings.api_base); !endpoint) {
        return fail("bad_config", "api_base: " + endpoint.error().message);
    }
    auto intents = parse_intents(config.has("intents")
                                     ? config.get_list("intents")
                                     : std::vector<std::string>{"GUILDS", "GUILD_MESSAGES", "DIRECT_MESSAGES",
                                                                "MESSAGE_CONTENT"});
    if (!intents) return fail("bad_config", "intents: " + intents.error().message);
    settings.intents = *intents;
    settings.connect_timeout_ms = std::max<std::int64_t>(100, config.get_int("connect_timeout", 10000));
    settings.request_timeout_ms = std::max<std::int64_t>(100, config.get_int("request_timeout", 15000));
    settings.reconnect_min_ms = std::max<std::int64_t>(1, config.get_int("reconnect_min", 1000));
    settings.reconnect_max_ms = std::max(settings.reconnect_min_ms, config.get_int("reconnect_max", 60000));
    settings.http_connections =
        static_cast<std::uint32_t>(std::clamp<std::int64_t>(config.get_int("http_connections", 4), 1, 64));
    settings.global_rate = config.get_number("global_rate", 50);
    return settings;
}

std::vector<ConfigProblem> check_settings(const PluginConfig& config) {
    std::vector<ConfigProblem> problems;
    if (config.get_string("token").empty()) problems.push_back({"token", "empty; set it to ${DISCORD_TOKEN}"});
    if (auto endpoint = parse_endpoint(config.get_string("api_base", "https://discord.com/api/v10")); !endpoint) {
        problems.push_back({"api_base", endpoint.error().message});
    }
    if (config.has("intents")) {
        if (auto intents = parse_intents(config.get_list("intents")); !intents) {
            problems.push_back({"intents", intents.error().message});
        }
    }
    if (config.get_int("http_connections", 4) < 1) problems.push_back({"http_connections", "must be at least 1"});
    if (config.get_int("reconnect_max", 60000) < config.get_int("reconnect_min", 1000)) {
        problems.push_back({"reconnect_max", "must not be shorter than reconnect_min"});
    }
    return problems;
}

}  // namespace switchboard::discord
