#pragma once
// The IRC connector: one client connection (plain or TLS) on Boost.Asio, with IRCv3 capability negotiation,
// SASL PLAIN, nick collision handling, own PINGs for lag detection, reconnects with capped exponential backoff and
// jitter, and the channel history the server replays on JOIN (InspIRCd chanhistory) or answers to CHATHISTORY,
// handed to the recovery policy through fetch_history(). See README.md beside this file.

#include <switchboard/connector.hpp>
#include <switchboard/plugin.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace switchboard::irc {

/// A channel to join, with its key (empty: none).
struct ChannelJoin {
    std::string name;
    std::string key;
};

struct IrcSettings {
    std::string host = "127.0.0.1";
    std::uint16_t port = 6667;
    bool tls = false;
    bool tls_verify = true;
    std::string tls_ca_file;             ///< PEM file of certificates to trust (else the system's).
    std::string nick = "switchbot";
    std::vector<std::string> alt_nicks;  ///< Tried in order after 433; then nick + "_", then nick + digits.
    std::string username = "switchbot";
    std::string realname = "Switchboard bot";
    std::string password;                ///< Server password (PASS), empty: none.
    std::string sasl_user;               ///< SASL PLAIN when both are set.
    std::string sasl_password;
    std::vector<ChannelJoin> channels;
    double flood_rate = 2.0;             ///< Lines per second of the default "global" bucket (<= 0: unlimited).
    std::uint32_t flood_burst = 5;
    std::chrono::milliseconds connect_timeout{10'000};    ///< TCP connect + TLS handshake.
    std::chrono::milliseconds register_timeout{30'000};   ///< From connected to welcome, end of MOTD and joins.
    std::chrono::milliseconds ping_interval{30'000};      ///< Idle time between own PINGs.
    std::chrono::milliseconds ping_timeout{30'000};       ///< No PONG within this → reconnect.
    std::chrono::milliseconds reconnect_min{1'000};
    std::chrono::milliseconds reconnect_max{60'000};
    std::chrono::milliseconds recovery_wait{5'000};       ///< How long replayed history waits for the policy.
};

/// Parses `"#chan"` or `"#chan key"`.
[[nodiscard]] ChannelJoin parse_channel_join(const std::string& text);

/// Settings from a validated PluginConfig (the schema in plugin.cpp). Throws ErrorException on bad values.
[[nodiscard]] IrcSettings settings_from_config(const PluginConfig& config);

/// Problems beyond the schema (server address, channel names, SASL half set).
[[nodiscard]] std::vector<ConfigProblem> check_irc_config(const PluginConfig& config);

class IrcClient;

class IrcConnector : public Connector {
public:
    /// Runs on an io_context and thread of its own (see start()).
    IrcConnector(IrcSettings settings, Logger& logger, std::string connection);
    ~IrcConnector() override;

    ConnectorCapabilities capabilities() const override;
    void start(ConnectorHost& host) override;
    void stop() override;
    void send(const OutboundMessage& message, SendCallback done) override;
    void fetch_history(const HistoryRequest& request, HistoryCallback done) override;

private:
    std::unique_ptr<boost::asio::io_context> io_;
    std::shared_ptr<IrcClient> client_;
    std::thread thread_;
};

}  // namespace switchboard::irc
