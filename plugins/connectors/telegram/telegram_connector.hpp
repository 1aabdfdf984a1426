#pragma once
// The Telegram connector: long polling with getUpdates for what people write, sendMessage and deleteMessage for what
// the bots send and take back. An update is confirmed to Telegram (the getUpdates offset moves past it) only once
// the host handled it, so a crash loses nothing: see README.md ("Offsets").

#include <memory>
#include <switchboard/connector.hpp>
#include <switchboard/plugin.hpp>

#include "telegram_protocol.hpp"
#include "telegram_settings.hpp"

namespace switchboard::telegram {

class TelegramConnector : public Connector {
public:
    /// Uses @p context's logger; runs on io_contexts and threads of its own (one for polling, one for sends). Throws
    /// ErrorException if @p settings' api_base is not a URL.
    TelegramConnector(const PluginContext& context, TelegramSettings settings);
    ~TelegramConnector() override;

    ConnectorCapabilities capabilities() const override;
    void start(ConnectorHost& host) override;
    void stop() override;
    void send(const OutboundMessage& message, SendCallback done) override;
    void remove(const Address& where, const std::string& message_id, RemoveCallback done) override;

    struct Core;
    struct Runner;

private:
    std::unique_ptr<Runner> poll_runner_;  // getUpdates, and the store reads that decide the offset
    std::unique_ptr<Runner> send_runner_;  // sendMessage and deleteMessage
    std::shared_ptr<Core> core_;
};

}  // namespace switchboard::telegram
