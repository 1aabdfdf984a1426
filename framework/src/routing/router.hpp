#pragma once
// The router: asks the strategy of an envelope's kind for a plan, turns a failed plan into its report at once, and
// hands good plans to the delivery engine. It also knows the config's routes (which channel relays where).

#include "config/config.hpp"
#include "plugin/registry.hpp"
#include "routing/delivery_engine.hpp"
#include "routing/directory.hpp"

#include <switchboard/routing.hpp>

#include <array>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace switchboard::routing {

/// An envelope a configured route makes of an inbound message, and the strategy the route names.
struct RoutedEnvelope {
    Envelope envelope;
    std::string strategy;
};

/// The idempotency key of the @p index-th plan that @p source (a bot's name, or `route`) makes while handling
/// @p message: `connection/channel/id#source.index`. Deterministic, so handling the message again (after a crash
/// before its commit) yields the same keys, and the outbox keeps the first. Built with one allocation.
[[nodiscard]] std::string plan_key(const Message& message, std::string_view source, std::size_t index);

/// Plans envelopes. The pipeline uses it while bots handle a message; the dry run uses it alone.
class Planner {
public:
    virtual ~Planner() = default;
    /// Plans @p envelope with @p strategy (empty: the strategy named like the envelope's kind). A plan that fails
    /// comes back as its final report (group_dissolved, recipient_not_found, rejected / no_strategy). The envelope's
    /// text, key and reply_to move into the plan: callers that are done with it move it in.
    [[nodiscard]] virtual std::variant<PlannedDelivery, DeliveryReport> plan(Envelope envelope,
                                                                             const std::string& strategy) const = 0;
    /// What the config's routes make of @p message (empty when no route starts at its channel).
    [[nodiscard]] virtual std::vector<RoutedEnvelope> routes_for(const Message& message) const = 0;
};

/// Creates every strategy the config's routes or `strategies:` section name, and the bundled `private`, `group` and
/// `broadcast` where they are loaded (bots' route() calls use those), with their settings from `strategies:` or their
/// defaults. @p context_for gives each instance its context.
[[nodiscard]] Result<std::map<std::string, std::shared_ptr<Strategy>>> create_strategies(
    const config::Config& config, const plugin::Registry& registry,
    const std::function<PluginContext(const std::string& instance)>& context_for);

class Router final : public Planner {
public:
    /// @p strategies by plugin name; @p engine may be null (dry run: plan only).
    Router(const config::Config& config, const ConfigDirectory& directory,
           std::map<std::string, std::shared_ptr<Strategy>> strategies, DeliveryEngine* engine, Clock clock = {});

    std::variant<PlannedDelivery, DeliveryReport> plan(Envelope envelope, const std::string& strategy) const override;
    std::vector<RoutedEnvelope> routes_for(const Message& message) const override;

    /// Plans and carries out @p envelope; @p done is called exactly once with the report.
    void send(Envelope envelope, const std::string& strategy, ReportCallback done);

    /// The configured routes starting at channel @p channel_name, as envelopes of a message with @p text.
    [[nodiscard]] std::vector<RoutedEnvelope> routes_from(const std::string& channel_name, const std::string& text,
                                                          const std::optional<Address>& origin) const;

    /// The report a failed plan gets: its status follows the error code.
    [[nodiscard]] static DeliveryReport report_for(const Error& error);

private:
    // Plans @p envelope into @p delivery (moving its text, key and reply_to there), or returns the report of a plan
    // that failed: plan() and send() without moving a plan through a variant. Without @p stamp_deadline, an envelope
    // naming no deadline leaves deadline_ms 0, which the engine counts from when it starts the plan (send(): at once).
    [[nodiscard]] std::optional<DeliveryReport> plan_into(Envelope& envelope, const std::string& strategy,
                                                          PlannedDelivery& delivery, bool stamp_deadline) const;

    std::vector<config::RouteConfig> routes_;
    const ConfigDirectory& directory_;
    std::map<std::string, std::shared_ptr<Strategy>> strategies_;
    std::array<Strategy*, 3> by_kind_{};  // the strategies named like each MessageKind, looked up once
    DeliveryEngine* engine_;
    Clock clock_;
};

}  // namespace switchboard::routing
