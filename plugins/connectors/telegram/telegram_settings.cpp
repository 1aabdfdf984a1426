#include "telegram_settings.hpp"

#include <algorithm>
#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>
#include <cctype>

namespace switchboard::telegram {
namespace {

constexpr const char* kTokenHint = "set it to ${TELEGRAM_TOKEN}, the token @BotFather gave (\"123456:ABC-...\")";

// Update types the Bot API knows (getUpdates' allowed_updates).
const std::vector<std::string>& known_update_types() {
    static const std::vector<std::string> types{"message",
                                                "edited_message",
                                                "channel_post",
                                                "edited_channel_post",
                                                "business_connection",
                                                "business_message",
                                                "edited_business_message",
                                                "deleted_business_messages",
                                                "message_reaction",
                                                "message_reaction_count",
                                                "inline_query",
                                                "chosen_inline_result",
                                                "callback_query",
                                                "shipping_query",
                                                "pre_checkout_query",
                                                "purchased_paid_media",
                                                "poll",
                                                "poll_answer",
                                                "my_chat_member",
                                                "chat_member",
                                                "chat_join_request",
                                                "chat_boost",
                                                "removed_chat_boost"};
    return types;
}

}  // namespace

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
    if (scheme == "https") {
        endpoint.tls = true;
    } else if (scheme != "http") {
        return fail("bad_url", "'" + url + "': the scheme must be https or http, not '" + scheme + "'");
    }
    endpoint.host = std::string(view.encoded_host());
    if (endpoint.host.size() > 2 && endpoint.host.front() == '[' && endpoint.host.back() == ']') {
        endpoint.host = endpoint.host.substr(1, endpoint.host.size() - 2);
    }
    if (endpoint.host.empty()) return fail("bad_url", "'" + url + "' names no host");
    endpoint.port = view.has_port() && !view.port().empty() ? std::string(view.port()) : endpoint.tls ? "443" : "80";
    endpoint.path = std::string(view.encoded_path());
    while (!endpoint.path.empty() && endpoint.path.back() == '/') endpoint.path.pop_back();
    if (view.has_query()) return fail("bad_url", "'" + url + "': a query has no place in the API base");
    return endpoint;
}

ConfigSchema settings_schema() {
    return ConfigSchema{{
        {"token", ValueType::string, true, "",
         "The bot token from @BotFather; write ${TELEGRAM_TOKEN}, never the token itself."},
        {"api_base", ValueType::string, false, "https://api.telegram.org",
         "Bot API base URL (requests go to <api_base>/bot<token>/<method>); http:// for a local sandbox."},
        {"poll_timeout", ValueType::duration, false, "25s",
         "getUpdates long-poll timeout (whole seconds, 0 to 50); the HTTP timeout is request_timeout longer."},
        {"poll_limit", ValueType::integer, false, "100", "Updates per getUpdates (1 to 100)."},
        {"allowed_updates", ValueType::string_list, false, "[message]",
         "Update types to receive; [] asks for Telegram's default set. Only messages reach the bots."},
        {"connect_timeout", ValueType::duration, false, "10s", "Limit for a TCP connect and TLS handshake."},
        {"request_timeout", ValueType::duration, false, "15s", "Limit for one request and its response."},
        {"reconnect_min", ValueType::duration, false, "1s",
         "First wait after a failed poll (then doubled, with jitter)."},
        {"reconnect_max", ValueType::duration, false, "60s", "Longest wait after failed polls."},
        {"http_connections", ValueType::integer, false, "4", "Keep-alive connections for sends, used in parallel."},
        {"chat_rate", ValueType::number, false, "1", "Messages per second into one chat (Telegram: about 1)."},
        {"chat_burst", ValueType::integer, false, "3", "Messages sent at once into one chat before chat_rate applies."},
        {"group_per_minute", ValueType::integer, false, "20",
         "Messages per minute into one group or supergroup (Telegram: 20); 0 for no limit."},
        {"send_rate", ValueType::number, false, "30",
         "Messages per second across all chats (Telegram: about 30); 0 for no limit."},
        {"unconfirmed_warn", ValueType::duration, false, "60s",
         "Warn when a received update has waited this long to be handled (it stays unconfirmed meanwhile)."},
    }};
}

Result<TelegramSettings> read_settings(const PluginConfig& config) {
    const auto problems = check_settings(config);
    if (!problems.empty()) return fail("bad_config", problems.front().key + ": " + problems.front().message);
    TelegramSettings settings;
    settings.token = config.get_string("token");
    settings.api_base = config.get_string("api_base", settings.api_base);
    settings.poll_timeout_s = config.get_int("poll_timeout", 25000) / 1000;
    settings.poll_limit = static_cast<std::uint32_t>(config.get_int("poll_limit", 100));
    if (config.has("allowed_updates")) settings.allowed_updates = config.get_list("allowed_updates");
    settings.connect_timeout_ms = std::max<std::int64_t>(100, config.get_int("connect_timeout", 10000));
    settings.request_timeout_ms = std::max<std::int64_t>(100, config.get_int("request_timeout", 15000));
    settings.reconnect_min_ms = std::max<std::int64_t>(1, config.get_int("reconnect_min", 1000));
    settings.reconnect_max_ms = std::max(settings.reconnect_min_ms, config.get_int("reconnect_max", 60000));
    settings.http_connections = static_cast<std::uint32_t>(config.get_int("http_connections", 4));
    settings.chat_rate = config.get_number("chat_rate", 1);
    settings.chat_burst = static_cast<std::uint32_t>(config.get_int("chat_burst", 3));
    settings.group_per_minute = static_cast<std::uint32_t>(config.get_int("group_per_minute", 20));
    settings.send_rate = config.get_number("send_rate", 30);
    settings.unconfirmed_warn_ms = std::max<std::int64_t>(1000, config.get_int("unconfirmed_warn", 60000));
    return settings;
}

std::vector<ConfigProblem> check_settings(const PluginConfig& config) {
    std::vector<ConfigProblem> problems;
    const std::string token = config.get_string("token");
    if (token.empty()) {
        problems.push_back({"token", std::string("empty; ") + kTokenHint});
    } else if (token.find_first_of("/? \t") != std::string::npos) {
        problems.push_back({"token", std::string("contains '/', '?' or a space: not a bot token; ") + kTokenHint});
    }
    if (auto endpoint = parse_endpoint(config.get_string("api_base", "https://api.telegram.org")); !endpoint) {
        problems.push_back({"api_base", endpoint.error().message});
    }
    const std::int64_t poll_timeout = config.get_int("poll_timeout", 25000);
    if (poll_timeout < 0 || poll_timeout > 50000) problems.push_back({"poll_timeout", "must be between 0s and 50s"});
    const std::int64_t limit = config.get_int("poll_limit", 100);
    if (limit < 1 || limit > 100) problems.push_back({"poll_limit", "must be between 1 and 100 (the Bot API's range)"});
    if (config.has("allowed_updates")) {
        for (const std::string& type : config.get_list("allowed_updates")) {
            const auto& known = known_update_types();
            if (std::find(known.begin(), known.end(), type) == known.end()) {
                problems.push_back({"allowed_updates", "'" + type +
                                                           "' is not a Bot API update type (message, "
                                                           "edited_message, channel_post, callback_query, ...)"});
                break;
            }
        }
    }
    if (config.get_int("http_connections", 4) < 1) problems.push_back({"http_connections", "must be at least 1"});
    if (config.get_int("reconnect_max", 60000) < config.get_int("reconnect_min", 1000)) {
        problems.push_back({"reconnect_max", "must not be shorter than reconnect_min"});
    }
    if (config.get_number("chat_rate", 1) < 0) problems.push_back({"chat_rate", "must not be negative (0: no limit)"});
    if (config.get_int("chat_burst", 3) < 1) problems.push_back({"chat_burst", "must be at least 1"});
    if (config.get_int("group_per_minute", 20) < 0) {
        problems.push_back({"group_per_minute", "must not be negative (0: no limit)"});
    }
    if (config.get_number("send_rate", 30) < 0) problems.push_back({"send_rate", "must not be negative (0: no limit)"});
    return problems;
}

}  // namespace switchboard::telegram
