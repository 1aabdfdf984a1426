#include "routing/router.hpp"

#include <atomic>
#include <charconv>
#include <chrono>
#include <set>

namespace switchboard::routing {
namespace {

std::int64_t system_now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string generated_key(std::int64_t now) {
    static std::atomic<std::uint64_t> counter{0};
    return "envelope-" + std::to_string(now) + "-" + std::to_string(++counter);
}

}  // namespace

std::string plan_key(const Message& message, std::string_view source, std::size_t index) {
    char digits[24];
    char* const end = std::to_chars(digits, digits + sizeof digits, index).ptr;
    std::string key;
    key.reserve(message.connection.size() + message.channel.size() + message.id.size() + source.size() +
                static_cast<std::size_t>(end - digits) + 4);
    key.append(message.connection).append(1, '/').append(message.channel).append(1, '/').append(message.id);
    key.append(1, '#').append(source).append(1, '.').append(digits, static_cast<std::size_t>(end - digits));
    return key;
}

Result<std::map<std::string, std::shared_ptr<Strategy>>> create_strategies(
    const config::Config& config, const plugin::Registry& registry,
    const std::function<PluginContext(const std::string& instance)>& context_for) {
    std::set<std::string> names{"private", "group", "broadcast"};
    for (const auto& route : config.routes) names.insert(route.strategy);
    std::map<std::string, PluginConfig> configured;
    for (const auto& use : config.strategies) {
        names.insert(use.plugin);
        configured[use.plugin] = use.settings;
    }
    std::map<std::string, std::shared_ptr<Strategy>> strategies;
    for (const std::string& name : names) {
        std::string why;
        // The config loader already refused routes naming a missing strategy; a bundled one may be absent.
        if (registry.find(name, PluginKind::strategy, why) == nullptr) continue;
        const PluginDescriptor* descriptor = registry.find(name)->descriptor;
        auto settings_of = configured.find(name);
        const PluginConfig settings = settings_of != configured.end() ? settings_of->second
                                      : descriptor->schema != nullptr ? config::default_settings(*descriptor->schema())
                                                                      : PluginConfig{};
        auto strategy = registry.create<Strategy>(name, context_for("strategy/" + name), settings);
        if (!strategy) return fail(strategy.error().code, "strategy '" + name + "': " + strategy.error().message);
        strategies[name] = std::move(*strategy);
    }
    return strategies;
}

Router::Router(const config::Config& config, const ConfigDirectory& directory,
               std::map<std::string, std::shared_ptr<Strategy>> strategies, DeliveryEngine* engine, Clock clock)
    : routes_(config.routes),
      directory_(directory),
      strategies_(std::move(strategies)),
      engine_(engine),
      clock_(clock ? std::move(clock) : Clock(system_now_ms)) {
    for (const MessageKind kind : {MessageKind::private_message, MessageKind::group, MessageKind::broadcast}) {
        const auto found = strategies_.find(std::string(to_string(kind)));
        if (found != strategies_.end()) by_kind_[static_cast<std::size_t>(kind)] = found->second.get();
    }
}

DeliveryReport Router::report_for(const Error& error) {
    DeliveryReport report;
    if (error.code == "group_dissolved") {
        report.status = DeliveryStatus::group_dissolved;
    } else if (error.code == "recipient_not_found") {
        report.status = DeliveryStatus::recipient_not_found;
    } else if (error.retryable) {
        report.status = DeliveryStatus::retryable;
        report.retry_after_ms = error.retry_after_ms;
    } else {
        report.status = DeliveryStatus::rejected;
    }
    report.error_code = error.code;
    report.detail = error.message;
    return report;
}

std::optional<DeliveryReport> Router::plan_into(Envelope& envelope, const std::string& strategy,
                                                PlannedDelivery& delivery, bool stamp_deadline) const {
    Strategy* chosen = nullptr;
    if (strategy.empty()) {
        chosen = by_kind_[static_cast<std::size_t>(envelope.kind)];
    } else if (const auto found = strategies_.find(strategy); found != strategies_.end()) {
        chosen = found->second.get();
    }
    const auto name = [&] { return strategy.empty() ? std::string(to_string(envelope.kind)) : strategy; };
    if (chosen == nullptr) {
        return report_for(fail(
            "no_strategy", "no routing strategy named '" + name() + "' is loaded; add its plugin to the plugin path"));
    }
    Result<DeliveryPlan> plan = [&]() -> Result<DeliveryPlan> {
        try {
            return chosen->plan(envelope, directory_);
        } catch (const std::exception& e) {
            return fail("strategy_failed", "strategy '" + name() + "' threw: " + e.what());
        }
    }();
    if (!plan) return report_for(plan.error());
    // The clock is read at most once, and only when a generated key or a stamped deadline needs it.
    std::optional<std::int64_t> now;
    const auto read_now = [&] {
        if (!now) now = clock_();
        return *now;
    };
    if (envelope.idempotency_key.empty()) {
        delivery.plan_id = generated_key(read_now());
    } else {
        delivery.plan_id = std::move(envelope.idempotency_key);
    }
    delivery.plan = std::move(*plan);
    delivery.text = std::move(envelope.text);
    delivery.reply_to = std::move(envelope.reply_to);
    delivery.deadline_ms = envelope.deadline_ms != 0 ? envelope.deadline_ms
                           : stamp_deadline          ? read_now() + kDefaultDeadlineMs
                                                     : 0;
    return std::nullopt;
}

std::variant<PlannedDelivery, DeliveryReport> Router::plan(Envelope envelope, const std::string& strategy) const {
    PlannedDelivery delivery;
    if (auto report = plan_into(envelope, strategy, delivery, true)) return std::move(*report);
    return delivery;
}

void Router::send(Envelope envelope, const std::string& strategy, ReportCallback done) {
    PlannedDelivery delivery;
    if (auto report = plan_into(envelope, strategy, delivery, false)) {
        done(std::move(*report));
        return;
    }
    if (engine_ == nullptr) {
        done(report_for(fail("no_engine", "this router only plans (dry run)")));
        return;
    }
    engine_->execute(std::move(delivery), false, std::move(done));
}

std::vector<RoutedEnvelope> Router::routes_from(const std::string& channel_name, const std::string& text,
                                                const std::optional<Address>& origin) const {
    std::vector<RoutedEnvelope> routed;
    for (const auto& route : routes_) {
        if (route.from != channel_name) continue;
        Envelope envelope;
        envelope.kind = route.to.kind;
        envelope.target = route.to.name;
        envelope.text = text;
        envelope.origin = origin;
        routed.push_back(RoutedEnvelope{std::move(envelope), route.strategy});
    }
    return routed;
}

std::vector<RoutedEnvelope> Router::routes_for(const Message& message) const {
    if (routes_.empty() || message.kind == MessageKind::private_message) return {};
    auto name = directory_.channel_name(message.connection, message.channel);
    if (!name) return {};
    return routes_from(*name, "<" + message.author.display_name + "> " + message.text,
                       Address::channel(message.connection, message.channel));
}

}  // namespace switchboard::routing
