#pragma once
// The Discord gateway (v10) client: one WebSocket session at a time, heartbeats, identify/resume, reconnects with
// backoff, close codes. What it learns it hands to the connector through hooks; Beast stays in discord_gateway.cpp.

#include "discord_protocol.hpp"
#include "discord_rest.hpp"
#include "discord_settings.hpp"

#include <switchboard/connector.hpp>
#include <switchboard/plugin.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace switchboard::discord {

/// What the gateway calls; all on its strand, in gateway order.
struct GatewayHooks {
    /// Fetches `GET /gateway/bot` (through the rate-limit scheduler).
    std::function<void(HttpCallback)> fetch_gateway_bot;
    /// READY arrived (a new session).
    std::function<void(const ReadyInfo&)> on_ready;
    /// A MESSAGE_CREATE from someone else.
    std::function<void(Message)> on_message;
    /// connected / resumed / disconnected / finished.
    std::function<void(const ConnectionEvent&)> on_event;
    /// The connection's saved state (ConnectorHost::load_state / save_state).
    std::function<std::optional<std::string>(const std::string&)> load_state;
    std::function<void(std::string, std::string)> save_state;
};

/// Counters for tests and logs.
struct GatewayStats {
    std::uint64_t identifies = 0;
    std::uint64_t resumes = 0;
    std::uint64_t connections = 0;
    std::uint64_t zombies = 0;
    std::uint64_t skipped_payloads = 0;
};

class Gateway {
public:
    virtual ~Gateway() = default;
    /// Starts connecting in the background (after loading saved resume state).
    virtual void start() = 0;
    /// Closes the session so that it stays resumable, saves the resume state and waits (bounded) until the
    /// gateway's work has finished; no hook is called after it returns.
    virtual void stop() = 0;
    [[nodiscard]] virtual GatewayStats stats() const = 0;
};

/// The key the resume state is saved under.
inline constexpr const char* kSessionStateKey = "gateway_session";

[[nodiscard]] std::shared_ptr<Gateway> make_gateway(boost::asio::io_context& io, const DiscordSettings& settings,
                                                    GatewayHooks hooks, Logger& logger);

}  // namespace switchboard::discord
