#pragma once
// The Discord connector: the gateway for what people write, REST for what the bots send, fetch and delete. Every
// REST request goes through the connection's rate-limit scheduler.

#include "discord_gateway.hpp"
#include "discord_protocol.hpp"
#include "discord_rest.hpp"
#include "discord_settings.hpp"

#include <switchboard/connector.hpp>
#include <switchboard/plugin.hpp>

#include <memory>

namespace switchboard::discord {

class DiscordConnector : public Connector {
public:
    /// Uses @p context's logger; runs on an io_context and thread of its own. Throws ErrorException if @p settings'
    /// api_base is not a URL.
    DiscordConnector(const PluginContext& context, DiscordSettings settings);
    ~DiscordConnector() override;

    ConnectorCapabilities capabilities() const override;
    void start(ConnectorHost& host) override;
    void stop() override;
    void send(const OutboundMessage& message, SendCallback done) override;
    void remove(const Address& where, const std::string& message_id, RemoveCallback done) override;
    void fetch_history(const HistoryRequest& request, HistoryCallback done) override;

    /// Gateway counters (identifies, resumes, zombies, ...), for tests and status.
    [[nodiscard]] GatewayStats gateway_stats() const;

    struct Core;
    struct Runner;

private:
    std::unique_ptr<Runner> runner_;  // the connector's own io_context and thread (see the constructor)
    std::shared_ptr<Core> core_;
};

}  // namespace switchboard::discord
