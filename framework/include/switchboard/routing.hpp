#pragma once
/// @file routing.hpp
/// @brief Routing (DESIGN §3): envelopes, the directory, strategy plugins, delivery plans and reports.

#include <switchboard/message.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/result.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace switchboard {

/// @brief All-or-nothing or as-many-as-possible.
enum class DeliveryMode {
    atomic,       ///< Every member is checked reachable first; if one is not, nothing is sent.
    best_effort,  ///< Deliver to every reachable member; report the others.
};

/// @brief What an atomic plan does when a send fails for good after sending started.
enum class OnFailure {
    keep,        ///< Leave what was sent; report the failure.
    compensate,  ///< Delete what was sent, where the connector can.
};

/// @brief An outgoing message before routing.
struct Envelope {
    /// @brief Private, group or broadcast: selects the strategy.
    MessageKind kind = MessageKind::group;
    /// @brief The logical name of the target: a user (private), a group or channel (group), or a scope
    /// (broadcast: empty for all channels, a connection name, or `tag:NAME`).
    std::string target;
    /// @brief The text.
    std::string text;
    /// @brief Stable key: the same key twice is one delivery.
    std::string idempotency_key;
    /// @brief The report must be final by then, ms since the Unix epoch.
    std::int64_t deadline_ms = 0;
    /// @brief The platform id of the message it answers, if any.
    std::optional<std::string> reply_to;
    /// @brief Where the message being routed came from (a relayed message's channel), if anywhere. Group and
    /// broadcast strategies leave it out of the recipients, so nobody gets their own message back.
    std::optional<Address> origin;
};

/// @brief A channel of the directory.
struct DirectoryChannel {
    /// @brief Logical name from the config.
    std::string name;
    /// @brief Where it is.
    Address address;
    /// @brief Tags from the config, for broadcast scopes.
    std::vector<std::string> tags;
};

/// @brief A recipient: a group member, or one recipient of a plan.
struct Recipient {
    /// @brief Logical name (channel or user) from the config, or the address text for one without a name.
    std::string name;
    /// @brief Where it is.
    Address address;
    /// @brief Recipients compare by both fields.
    friend bool operator==(const Recipient&, const Recipient&) = default;
};

/// @brief A group of the directory, resolved.
struct DirectoryGroup {
    /// @brief Logical name.
    std::string name;
    /// @brief Its members, in config order, each address once (under the first member naming it: two channel names
    /// may be given to one platform channel).
    std::vector<Recipient> members;
    /// @brief Configured delivery mode.
    DeliveryMode delivery = DeliveryMode::best_effort;
    /// @brief Configured failure handling for atomic delivery.
    OnFailure on_failure = OnFailure::keep;
};

/// @brief Logical channels, users and groups mapped to addresses; implemented by the core.
class Directory {
public:
    virtual ~Directory() = default;
    /// @brief The channel named @p name.
    [[nodiscard]] virtual std::optional<DirectoryChannel> channel(const std::string& name) const = 0;
    /// @brief The address of the user named @p name.
    [[nodiscard]] virtual std::optional<Address> user(const std::string& name) const = 0;
    /// @brief The group named @p name with its current members (a cached, immutable snapshot: cheap to call), or
    /// null if there is no such group.
    [[nodiscard]] virtual std::shared_ptr<const DirectoryGroup> group(const std::string& name) const = 0;
    /// @brief Every channel, in config order.
    [[nodiscard]] virtual std::vector<DirectoryChannel> channels() const = 0;
    /// @brief True if @p address can be sent to now: its connection is up, supports the kind of address, and — for
    /// a person on a connection that reports membership — the person is present.
    [[nodiscard]] virtual bool reachable(const Address& address) const = 0;
};

/// @brief What a strategy decides: who gets the message and how.
struct DeliveryPlan {
    /// @brief Every recipient, each once.
    std::vector<Recipient> recipients;
    /// @brief All-or-nothing or best effort.
    DeliveryMode mode = DeliveryMode::best_effort;
    /// @brief What atomic delivery does on a late failure.
    OnFailure on_failure = OnFailure::keep;
    /// @brief Recipients per batch (0: the engine's default).
    std::uint32_t batch_size = 0;
};

/// @brief The final status of a delivery (DESIGN §3).
enum class DeliveryStatus {
    delivered,            ///< Every recipient has it.
    partial,              ///< Some recipients have it; the report names the others.
    group_dissolved,      ///< The group does not exist (any more).
    recipient_not_found,  ///< The private recipient is unknown.
    rejected,             ///< Not sent: atomic group with an unreachable member, or the platform refused for good.
    retryable,            ///< Not (fully) sent yet; try again after `retry_after_ms`.
};

/// @brief "delivered", "partial", "group_dissolved", "recipient_not_found", "rejected" or "retryable".
[[nodiscard]] inline std::string_view to_string(DeliveryStatus status) noexcept {
    switch (status) {
        case DeliveryStatus::delivered: return "delivered";
        case DeliveryStatus::partial: return "partial";
        case DeliveryStatus::group_dissolved: return "group_dissolved";
        case DeliveryStatus::recipient_not_found: return "recipient_not_found";
        case DeliveryStatus::rejected: return "rejected";
        case DeliveryStatus::retryable: return "retryable";
    }
    return "unknown";
}

/// @brief One recipient's outcome.
struct RecipientOutcome {
    /// @brief Logical name.
    std::string name;
    /// @brief Where it went.
    Address address;
    /// @brief True if the platform accepted the message.
    bool delivered = false;
    /// @brief Stable error code when not delivered (`unreachable`, `rate_limited`, ...).
    std::string error_code;
    /// @brief Platform id of the sent message, when delivered.
    std::string message_id;
};

/// @brief The explicit end of every send: never a silent timeout.
///
/// Stable error codes: `unreachable` (a recipient's connection is down or the person is absent), `group_dissolved`,
/// `recipient_not_found`, `atomic_unreachable` (atomic group not sent because a member is unreachable),
/// `deadline_exceeded`, `rate_limited`, `send_failed`, `compensated` (atomic plan undone), `aborted` (an atomic
/// plan's recipient left unsent after another failed for good), `shutting_down` (the host stopped first; the
/// recipient stays pending in the outbox), `unknown_connection`, `no_strategy`, `strategy_failed`, and a connector's
/// own codes for platform failures.
struct DeliveryReport {
    /// @brief Overall status.
    DeliveryStatus status = DeliveryStatus::delivered;
    /// @brief Per-recipient outcomes.
    std::vector<RecipientOutcome> recipients;
    /// @brief Stable error code for every status but `delivered`.
    std::string error_code;
    /// @brief For `retryable`: when to try again, in milliseconds.
    std::int64_t retry_after_ms = 0;
    /// @brief A sentence for people.
    std::string detail;
};

/// @brief Receives the report of one delivery. Called exactly once, on any thread.
using ReportCallback = std::function<void(DeliveryReport)>;

/// @brief The interface every routing strategy plugin implements. A strategy plans; it never speaks a protocol.
class Strategy : public PluginObject {
public:
    /// @brief The SDK interface this class implements (used by SWITCHBOARD_PLUGIN).
    using Interface = Strategy;
    /// @brief Strategy plugins are of kind strategy.
    static constexpr PluginKind kKind = PluginKind::strategy;

    /// @brief Plans the delivery of @p envelope, or fails with a stable code (`group_dissolved`,
    /// `recipient_not_found`, ...). Must not block.
    [[nodiscard]] virtual Result<DeliveryPlan> plan(const Envelope& envelope, const Directory& directory) = 0;
};

}  // namespace switchboard
