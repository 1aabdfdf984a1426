// Exports the IRC connector.
#include "irc_connector.hpp"

namespace {

class IrcPlugin final : public switchboard::irc::IrcConnector {
public:
    IrcPlugin(const switchboard::PluginContext& context, const switchboard::PluginConfig& config)
        : IrcConnector(switchboard::irc::settings_from_config(config), context.logger(), context.instance_name()) {}

    static std::vector<switchboard::ConfigProblem> check_config(const switchboard::PluginConfig& config) {
        return switchboard::irc::check_irc_config(config);
    }
};

}  // namespace

SWITCHBOARD_PLUGIN(IrcPlugin, "irc", "1.0.0",
                   "IRC client (IRCv3 caps, SASL PLAIN, TLS); channel history replayed on join for irc-replay",
                   (switchboard::ConfigSchema{{
                       {"server", switchboard::ValueType::string, true, "",
                        "The server as host or host:port (port 6667, or 6697 with tls)."},
                       {"tls", switchboard::ValueType::boolean, false, "false", "Connect with TLS."},
                       {"tls_verify", switchboard::ValueType::boolean, false, "true",
                        "Check the server's certificate and name (turn off only for a test server)."},
                       {"tls_ca_file", switchboard::ValueType::string, false, "",
                        "PEM file of the certificates to trust instead of the system's (a private CA)."},
                       {"nick", switchboard::ValueType::string, false, "switchbot", "The bot's nick."},
                       {"alt_nicks", switchboard::ValueType::string_list, false, "",
                        "Nicks to try, in order, when the nick is taken (then nick_, then nick plus digits)."},
                       {"username", switchboard::ValueType::string, false, "", "The user name; empty: the nick."},
                       {"realname", switchboard::ValueType::string, false, "Switchboard bot", "The real name."},
                       {"password", switchboard::ValueType::string, false, "",
                        "Server password (PASS); use ${VAR} to keep it out of the file."},
                       {"sasl_user", switchboard::ValueType::string, false, "", "SASL PLAIN account."},
                       {"sasl_password", switchboard::ValueType::string, false, "", "SASL PLAIN password."},
                       {"join", switchboard::ValueType::string_list, false, "",
                        "Channels to join, each \"#channel\" or \"#channel key\"; map the config's channels to them."},
                       {"flood_rate", switchboard::ValueType::number, false, "2",
                        "Lines per second the connection sends at most unless limits: says otherwise (<= 0: no "
                        "limit)."},
                       {"flood_burst", switchboard::ValueType::integer, false, "5",
                        "Lines sent at once before flood_rate applies."},
                       {"connect_timeout", switchboard::ValueType::duration, false, "10s",
                        "TCP connect and TLS handshake time limit."},
                       {"register_timeout", switchboard::ValueType::duration, false, "30s",
                        "Time limit from connected to registered and joined."},
                       {"ping_interval", switchboard::ValueType::duration, false, "30s",
                        "How often the bot PINGs the server to measure lag."},
                       {"ping_timeout", switchboard::ValueType::duration, false, "30s",
                        "No PONG within this time: the connection is dropped and made again."},
                       {"reconnect_min", switchboard::ValueType::duration, false, "1s",
                        "First reconnect delay; it doubles per failed attempt (with jitter)."},
                       {"reconnect_max", switchboard::ValueType::duration, false, "60s", "Longest reconnect delay."},
                       {"recovery_wait", switchboard::ValueType::duration, false, "5s",
                        "How long history replayed on join (and live lines after it) waits for the recovery policy."},
                   }}))
