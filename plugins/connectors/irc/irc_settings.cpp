#include "irc_connector.hpp"

#include "irc_protocol.hpp"

#include <charconv>

namespace switchboard::irc {
namespace {

struct ServerAddress {
    std::string host;
    std::optional<std::uint16_t> port;
};

// "host", "host:port", "[v6]:port".
std::optional<ServerAddress> parse_server(const std::string& text) {
    ServerAddress address;
    std::string_view rest = text;
    if (rest.empty()) return std::nullopt;
    if (rest.front() == '[') {
        const auto close = rest.find(']');
        if (close == std::string_view::npos) return std::nullopt;
        address.host = std::string(rest.substr(1, close - 1));
        rest.remove_prefix(close + 1);
    } else {
        const auto colon = rest.rfind(':');
        address.host = std::string(rest.substr(0, colon));
        rest.remove_prefix(colon == std::string_view::npos ? rest.size() : colon);
    }
    if (address.host.empty()) return std::nullopt;
    if (!rest.empty()) {
        if (rest.front() != ':' || rest.size() == 1) return std::nullopt;
        rest.remove_prefix(1);
        unsigned port = 0;
        const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), port);
        if (ec != std::errc() || end != rest.data() + rest.size() || port == 0 || port > 65535) return std::nullopt;
        address.port = static_cast<std::uint16_t>(port);
    }
    return address;
}

std::chrono::milliseconds duration(const PluginConfig& config, std::string_view key, std::chrono::milliseconds fallback) {
    return std::chrono::milliseconds(config.get_int(key, fallback.count()));
}

}  // namespace

IrcSettings settings_from_config(const PluginConfig& config) {
    IrcSettings s;
    const auto server = parse_server(config.get_string("server"));
    if (!server) {
        throw ErrorException(fail("bad_config", "server '" + config.get_string("server") +
                                                    "' is not host or host:port (e.g. irc.libera.chat:6697)"));
    }
    s.tls = config.get_bool("tls", false);
    s.host = server->host;
    s.port = server->port.value_or(s.tls ? 6697 : 6667);
    s.tls_verify = config.get_bool("tls_verify", true);
    s.tls_ca_file = config.get_string("tls_ca_file");
    s.nick = config.get_string("nick", s.nick);
    s.alt_nicks = config.get_list("alt_nicks");
    s.username = config.get_string("username");
    if (s.username.empty()) s.username = s.nick;
    s.realname = config.get_string("realname", s.realname);
    if (s.realname.empty()) s.realname = s.nick;
    s.password = config.get_string("password");
    s.sasl_user = config.get_string("sasl_user");
    s.sasl_password = config.get_string("sasl_password");
    for (const std::string& entry : config.get_list("join")) s.channels.push_back(parse_channel_join(entry));
    s.flood_rate = config.get_number("flood_rate", s.flood_rate);
    s.flood_burst = static_cast<std::uint32_t>(std::max<std::int64_t>(1, config.get_int("flood_burst", s.flood_burst)));
    s.connect_timeout = duration(config, "connect_timeout", s.connect_timeout);
    s.register_timeout = duration(config, "register_timeout", s.register_timeout);
    s.ping_interval = duration(config, "ping_interval", s.ping_interval);
    s.ping_timeout = duration(config, "ping_timeout", s.ping_timeout);
    s.reconnect_min = duration(config, "reconnect_min", s.reconnect_min);
    s.reconnect_max = duration(config, "reconnect_max", s.reconnect_max);
    if (s.reconnect_min.count() < 1) s.reconnect_min = std::chrono::milliseconds(1);
    if (s.reconnect_max < s.reconnect_min) s.reconnect_max = s.reconnect_min;
    s.recovery_wait = duration(config, "recovery_wait", s.recovery_wait);
    return s;
}

std::vector<ConfigProblem> check_irc_config(const PluginConfig& config) {
    std::vector<ConfigProblem> problems;
    if (!parse_server(config.get_string("server"))) {
        problems.push_back({"server", "'" + config.get_string("server") +
                                          "' is not host or host:port (e.g. irc.libera.chat:6697)"});
    }
    for (const char* key : {"nick", "username"}) {
        const std::string value = config.get_string(key);
        if (!value.empty() && (!safe_param(value) || value.find_first_of(",*?!@") != std::string::npos)) {
            problems.push_back({key, "'" + value + "' cannot be an IRC " + key + " (no spaces, commas, *?!@)"});
        }
    }
    for (const std::string& nick : config.get_list("alt_nicks")) {
        if (!safe_param(nick) || nick.find_first_of(",*?!@") != std::string::npos) {
            problems.push_back({"alt_nicks", "'" + nick + "' cannot be an IRC nick"});
        }
    }
    for (const std::string& entry : config.get_list("join")) {
        const ChannelJoin join = parse_channel_join(entry);
        if (!safe_param(join.name) || join.name.find(',') != std::string::npos ||
            std::string_view("#&+!").find(join.name.front()) == std::string_view::npos) {
            problems.push_back({"join", "'" + entry + "' is not \"#channel\" or \"#channel key\""});
        } else if (!join.key.empty() && (!safe_param(join.key) || join.key.find(',') != std::string::npos)) {
            problems.push_back({"join", "the key of " + join.name + " cannot contain spaces or commas"});
        }
    }
    if (config.get_string("sasl_user").empty() != config.get_string("sasl_password").empty()) {
        problems.push_back({"sasl_user", "set both sasl_user and sasl_password, or neither"});
    }
    for (const char* key : {"password", "realname", "sasl_user", "sasl_password"}) {
        if (config.get_string(key).find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
            problems.push_back({key, "must not contain line breaks or NUL"});
        }
    }
    return problems;
}

}  // namespace switchboard::irc
