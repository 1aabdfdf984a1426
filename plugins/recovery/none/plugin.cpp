// The `none` recovery policy: fetches nothing. After a reconnect it reports, for every channel that has a cursor,
// that whatever was said while disconnected is not recovered, so the gap is visible in logs and status.
#include <switchboard/recovery.hpp>

namespace {

class NoRecovery final : public switchboard::RecoveryPolicy {
public:
    NoRecovery(const switchboard::PluginContext&, const switchboard::PluginConfig&) {}

    void on_event(const switchboard::ConnectionEvent& event, switchboard::RecoveryContext& context) override {
        if (event.type != switchboard::ConnectionEvent::Type::connected) return;
        for (const std::string& channel : context.channels()) {
            // A channel never processed before has nothing that could have been missed.
            if (!context.cursor(channel)) continue;
            switchboard::RecoveryReport report;
            report.channel = channel;
            report.gap = true;
            report.gap_reason = "recovery policy 'none': messages sent while disconnected are not fetched";
            context.finish(report);
        }
    }
};

}  // namespace

SWITCHBOARD_PLUGIN(NoRecovery, "none", "1.0.0", "Recovers nothing; reports the gap after a reconnect",
                   switchboard::ConfigSchema{})
