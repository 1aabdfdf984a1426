#pragma once
/// @file store.hpp
/// @brief The persistence interface (DESIGN §4): dedup ledger, cursors, connection state, outbox, bot key-value
/// space and message log.
///
/// All calls are synchronous and may block; the host calls them from its pipeline workers, never from an I/O
/// thread. Implementations are safe to call from several threads.

#include <switchboard/message.hpp>
#include <switchboard/plugin.hpp>
#include <switchboard/result.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace switchboard {

/// @brief Identifies one platform message for deduplication.
struct MessageKey {
    /// @brief Connection name.
    std::string connection;
    /// @brief Platform channel id.
    std::string channel;
    /// @brief Platform message id.
    std::string message_id;
    /// @brief Keys compare by all fields.
    friend bool operator==(const MessageKey&, const MessageKey&) = default;
};

/// @brief The last processed message of one (connection, channel).
struct Cursor {
    /// @brief Platform id of the last processed message.
    std::string message_id;
    /// @brief Its platform timestamp, ms since the Unix epoch.
    std::int64_t timestamp_ms = 0;
    /// @brief Cursors compare by both fields.
    friend bool operator==(const Cursor&, const Cursor&) = default;
};

/// @brief The cursor of one channel, as listed by Store::cursors().
struct ChannelCursor {
    /// @brief Connection name.
    std::string connection;
    /// @brief Platform channel id.
    std::string channel;
    /// @brief Its cursor.
    Cursor cursor;
};

/// @brief A write to a bot's key-value namespace; `value` empty means erase.
struct KeyValueWrite {
    /// @brief Namespace (the bot's name).
    std::string space;
    /// @brief Key within the namespace.
    std::string key;
    /// @brief New value, or nullopt to erase.
    std::optional<std::string> value;
};

/// @brief Delivery state of one recipient of one plan.
enum class OutboxState {
    pending,    ///< Not sent yet (or sent and not confirmed: the connector's idempotency decides).
    sent,       ///< The platform accepted it.
    failed,     ///< Gave up; `error` says why.
    withdrawn,  ///< Sent, then deleted again to compensate a failed all-or-nothing plan.
};

/// @brief "pending", "sent", "failed" or "withdrawn".
[[nodiscard]] inline std::string_view to_string(OutboxState state) noexcept {
    switch (state) {
        case OutboxState::pending: return "pending";
        case OutboxState::sent: return "sent";
        case OutboxState::failed: return "failed";
        case OutboxState::withdrawn: return "withdrawn";
    }
    return "unknown";
}

/// @brief One recipient's entry in the outbox.
struct OutboxEntry {
    /// @brief The plan's id (its envelope's idempotency key).
    std::string plan_id;
    /// @brief Where it goes.
    Address recipient;
    /// @brief What is sent.
    std::string text;
    /// @brief Platform message id this one replies to, if any.
    std::optional<std::string> reply_to;
    /// @brief Current state.
    OutboxState state = OutboxState::pending;
    /// @brief Platform id of the sent message (for compensation), once sent.
    std::string sent_message_id;
    /// @brief Attempts made so far.
    std::int32_t attempts = 0;
    /// @brief Last error code, if any.
    std::string error;
    /// @brief When the entry was created, ms since the Unix epoch.
    std::int64_t created_ms = 0;
};

/// @brief One recipient of an OutboxPlanAdd: where it goes, and the state its new entry starts in.
struct OutboxRecipient {
    /// @brief Where it goes. Points into the caller's data; valid during the call.
    const Address* address = nullptr;
    /// @brief `pending`, or `failed` for a recipient known to be unreachable before anything was sent.
    OutboxState state = OutboxState::pending;
    /// @brief The error code of a `failed` one (empty otherwise). Valid during the call.
    std::string_view error;
};

/// @brief One plan's new outbox entries as Store::outbox_add_plan() takes them: what is sent once, and per recipient
/// only where it goes. Every new entry has 0 attempts, no sent message id and `created_ms`.
struct OutboxPlanAdd {
    /// @brief The plan's id (its envelope's idempotency key).
    std::string_view plan_id;
    /// @brief What is sent to every recipient.
    std::string_view text;
    /// @brief Platform message id it replies to, if any.
    std::optional<std::string_view> reply_to;
    /// @brief When the entries were created, ms since the Unix epoch.
    std::int64_t created_ms = 0;
    /// @brief The recipients, each once.
    std::span<const OutboxRecipient> recipients;
};

/// @brief One entry's new state in an OutboxPlanUpdate.
struct OutboxRecipientUpdate {
    /// @brief The entry's recipient. Points into the caller's data; valid during the call.
    const Address* address = nullptr;
    /// @brief New state.
    OutboxState state = OutboxState::pending;
    /// @brief Attempts made so far.
    std::int32_t attempts = 0;
    /// @brief Platform id of the sent message, if any. Valid during the call.
    std::string_view sent_message_id;
    /// @brief Last error code, if any. Valid during the call.
    std::string_view error;
};

/// @brief New states of some entries of one plan, as Store::outbox_update_plans() takes them.
struct OutboxPlanUpdate {
    /// @brief The plan's id.
    std::string_view plan_id;
    /// @brief The entries to update, by recipient.
    std::span<const OutboxRecipientUpdate> recipients;
};

/// @brief Everything that becomes durable when one inbound message is marked processed — in one transaction.
///
/// The message's key enters the dedup ledger, its channel's cursor advances to it, it is appended to the message
/// log, the bots' key-value writes made while handling it are applied, and the replies they produced enter the
/// outbox. Either all of this happens or none of it does.
struct ProcessedMessage {
    /// @brief The message (its connection, channel, id and timestamp give the dedup key and the new cursor).
    Message message;
    /// @brief Bot key-value writes made while handling it, in order.
    std::vector<KeyValueWrite> writes;
    /// @brief Replies and sends produced while handling it.
    std::vector<OutboxEntry> outbox;
};

/// @brief One host's hold on one connection (DESIGN §8), as LeaseStore hands it out.
struct Lease {
    /// @brief Connection name.
    std::string connection;
    /// @brief Who holds it: the holder id the host passed to LeaseStore::acquire().
    std::string holder;
    /// @brief Fencing token: larger for every acquisition of this connection, by anyone.
    std::uint64_t token = 0;
    /// @brief Milliseconds the lease has left when it was read (0 if unknown).
    std::int64_t remaining_ms = 0;
};

/// @brief Connection leases and fencing, offered by stores that several hosts share (the `redis` store).
///
/// A host runs a connection only while it holds its lease: it acquires it, renews it well within its time to live,
/// and stops the connection at once when a renewal fails. A lease lapses when its holder stops renewing it (the
/// host died or froze); then another host acquires it, with a larger fencing token.
///
/// Fencing: once this store object has acquired a connection's lease, every write it makes for that connection —
/// committing that connection's messages, its connection state, outbox entries to its addresses — first checks,
/// in the same atomic step as the write, that the lease still carries this object's token. If another host took
/// the lease meanwhile (or it lapsed), the write changes nothing and fails with the error code `lease_lost`
/// (not retryable). So a host that wakes after a pause cannot write over the state its successor keeps.
///
/// Calls are synchronous and thread-safe, like the store's.
class LeaseStore {
public:
    virtual ~LeaseStore() = default;

    /// @brief Takes the lease of @p connection for @p holder for @p ttl if nobody holds it — or if @p holder holds
    /// it already (a restarted host with the same id takes its lease back at once, with a new token that fences
    /// the process before it). Returns the new lease, or nullopt if another holder has it.
    [[nodiscard]] virtual Result<std::optional<Lease>> acquire(const std::string& connection, const std::string& holder,
                                                               std::chrono::milliseconds ttl) = 0;

    /// @brief Extends @p lease to @p ttl from now if it is still held with its token; false if it was lost.
    [[nodiscard]] virtual Result<bool> renew(const Lease& lease, std::chrono::milliseconds ttl) = 0;

    /// @brief Gives @p lease up (if still held with its token), so that a standby takes it at once. This object's
    /// writes for the connection stay fenced until it acquires the lease again.
    [[nodiscard]] virtual Result<void> release(const Lease& lease) = 0;

    /// @brief Who holds the lease of @p connection now, if anyone.
    [[nodiscard]] virtual Result<std::optional<Lease>> holder(const std::string& connection) = 0;
};

/// @brief One item taken from a shared queue.
struct QueueItem {
    /// @brief The queue it came from.
    std::string queue;
    /// @brief Its id in that queue (for SharedQueues::done()).
    std::string id;
    /// @brief What was pushed.
    std::string payload;
};

/// @brief Durable queues several hosts share, each item handled by one consumer of a group at a time (the `redis`
/// store: Redis Streams with consumer groups). The host uses them for work sharing (DESIGN §8): inbound messages
/// handed to whichever host has time, and sends passed to the host that holds the connection.
///
/// Delivery is at least once: an item taken by a consumer that never confirms it (it died) is given to another
/// consumer of the group once it has waited `reclaim_after`. Calls are synchronous and thread-safe; take() does not
/// block (the caller polls).
class SharedQueues {
public:
    virtual ~SharedQueues() = default;

    /// @brief Appends @p payload to @p queue (created if needed); returns the item's id.
    [[nodiscard]] virtual Result<std::string> push(const std::string& queue, const std::string& payload) = 0;

    /// @brief Up to @p max items of each of @p queues for @p consumer of @p group (the group is created at the queue's
    /// start if needed): first items another consumer of the group took and has not confirmed for @p reclaim_after,
    /// then items nobody took yet, oldest first per queue. Returns at once, empty if there is nothing.
    [[nodiscard]] virtual Result<std::vector<QueueItem>> take(std::span<const std::string> queues,
                                                              const std::string& group, const std::string& consumer,
                                                              std::size_t max,
                                                              std::chrono::milliseconds reclaim_after) = 0;

    /// @brief Confirms @p ids of @p queue handled by @p group: they are never given out again, and are removed.
    [[nodiscard]] virtual Result<void> done(const std::string& queue, const std::string& group,
                                            std::span<const std::string> ids) = 0;
};

/// @brief The persistence interface every store plugin implements.
class Store : public PluginObject {
public:
    /// @brief The SDK interface this class implements (used by SWITCHBOARD_PLUGIN).
    using Interface = Store;
    /// @brief Store plugins are of kind store.
    static constexpr PluginKind kKind = PluginKind::store;

    /// @brief True if @p key was already processed (and not yet pruned).
    [[nodiscard]] virtual Result<bool> is_processed(const MessageKey& key) = 0;

    /// @brief Which of @p messages were processed already (and not yet pruned), by connection, channel and id: one
    /// flag per message, in order — what is_processed() answers for each, in one call. The host's pipeline asks it
    /// once per inbound batch, before any bot sees the batch.
    ///
    /// The default implementation calls is_processed() for each; a store overrides it to answer the whole batch in
    /// one step (one read transaction, one round trip).
    [[nodiscard]] virtual Result<std::vector<bool>> are_processed(std::span<const Message> messages) {
        std::vector<bool> seen(messages.size());
        for (std::size_t i = 0; i < messages.size(); ++i) {
            const Message& message = messages[i];
            auto one = is_processed(MessageKey{message.connection, message.channel, message.id});
            if (!one) return one.error();
            seen[i] = *one;
        }
        return seen;
    }

    /// @brief Makes a batch of processed messages durable: each one atomically, the whole batch in one commit
    /// where the store can (group commit). A message already in the ledger is skipped, so a retried batch is
    /// harmless. Cursors only move forward in batch order.
    [[nodiscard]] virtual Result<void> commit(std::span<const ProcessedMessage> batch) = 0;

    /// @brief The cursor of (@p connection, @p channel), if any message was processed there.
    [[nodiscard]] virtual Result<std::optional<Cursor>> cursor(const std::string& connection,
                                                               const std::string& channel) = 0;

    /// @brief Every cursor of @p connection (every connection if empty).
    [[nodiscard]] virtual Result<std::vector<ChannelCursor>> cursors(const std::string& connection) = 0;

    /// @brief Stores a connection's opaque state (Telegram update offset, Discord session id and sequence, ...).
    [[nodiscard]] virtual Result<void> put_connection_state(const std::string& connection, const std::string& key,
                                                            const std::string& value) = 0;

    /// @brief Reads a connection's opaque state.
    [[nodiscard]] virtual Result<std::optional<std::string>> connection_state(const std::string& connection,
                                                                              const std::string& key) = 0;

    /// @brief Reads a bot key-value entry.
    [[nodiscard]] virtual Result<std::optional<std::string>> get_value(const std::string& space,
                                                                       const std::string& key) = 0;

    /// @brief Applies key-value writes outside message processing (one transaction).
    [[nodiscard]] virtual Result<void> put_values(std::span<const KeyValueWrite> writes) = 0;

    /// @brief Adds entries to the outbox (one transaction); an entry whose (plan_id, recipient) exists is kept.
    [[nodiscard]] virtual Result<void> outbox_add(std::span<const OutboxEntry> entries) = 0;

    /// @brief Adds the entries of one plan (one transaction) as outbox_add() does — an entry whose (plan_id,
    /// recipient) exists is kept as it is — and returns every entry the plan had before the call (none for a new
    /// plan), so that a retried plan learns in the same step which recipients have it already.
    ///
    /// The delivery engine writes every plan this way. The default implementation calls outbox_plan(), then
    /// outbox_add() with one OutboxEntry per recipient; a store overrides it to do both in one step, and without
    /// building an entry per recipient (for a 100,000-member group that is most of what the outbox costs).
    [[nodiscard]] virtual Result<std::vector<OutboxEntry>> outbox_add_plan(const OutboxPlanAdd& plan) {
        auto existing = outbox_plan(std::string(plan.plan_id));
        if (!existing) return existing;
        std::vector<OutboxEntry> entries(plan.recipients.size());
        for (std::size_t i = 0; i < entries.size(); ++i) {
            const OutboxRecipient& recipient = plan.recipients[i];
            OutboxEntry& entry = entries[i];
            entry.plan_id = plan.plan_id;
            entry.recipient = *recipient.address;
            entry.text = plan.text;
            if (plan.reply_to) entry.reply_to.emplace(*plan.reply_to);
            entry.state = recipient.state;
            entry.error = recipient.error;
            entry.created_ms = plan.created_ms;
        }
        if (auto added = outbox_add(entries); !added) return added.error();
        return existing;
    }

    /// @brief Updates the state, sent message id, attempts and error of each entry (its text, reply_to and
    /// created_ms stay as added), in one transaction. An entry whose (plan_id, recipient) does not exist is skipped
    /// and the call fails with `outbox_entry_not_found` naming the first such entry; the others are updated all the
    /// same. Any other failure updates none of them.
    [[nodiscard]] virtual Result<void> outbox_update(std::span<const OutboxEntry> entries) = 0;

    /// @brief As outbox_update() — same semantics, `outbox_entry_not_found` included, one transaction for all —
    /// with the entries given per plan, so that no OutboxEntry is built for each. The delivery engine records every
    /// round of completed sends this way.
    ///
    /// The default implementation builds the entries and calls outbox_update().
    [[nodiscard]] virtual Result<void> outbox_update_plans(std::span<const OutboxPlanUpdate> plans) {
        std::vector<OutboxEntry> entries;
        for (const OutboxPlanUpdate& plan : plans) {
            for (const OutboxRecipientUpdate& update : plan.recipients) {
                OutboxEntry& entry = entries.emplace_back();
                entry.plan_id = plan.plan_id;
                entry.recipient = *update.address;
                entry.state = update.state;
                entry.attempts = update.attempts;
                entry.sent_message_id = update.sent_message_id;
                entry.error = update.error;
            }
        }
        return outbox_update(entries);
    }

    /// @brief Every entry still pending, oldest first (what a restart must finish).
    [[nodiscard]] virtual Result<std::vector<OutboxEntry>> outbox_pending() = 0;

    /// @brief Every entry of one plan.
    [[nodiscard]] virtual Result<std::vector<OutboxEntry>> outbox_plan(const std::string& plan_id) = 0;

    /// @brief Logged messages of one channel with from_ms <= timestamp < to_ms, oldest first, at most @p limit.
    [[nodiscard]] virtual Result<std::vector<Message>> messages(const std::string& connection,
                                                                const std::string& channel, std::int64_t from_ms,
                                                                std::int64_t to_ms, std::size_t limit) = 0;

    /// @brief Forgets dedup entries and logged messages with timestamps before @p before_ms; returns how many
    /// dedup entries were removed. The host calls it while it runs, every hour (every half `dedup_window` when that
    /// is shorter), with the store's `dedup_window` setting (14 days when the store has none).
    ///
    /// A store should also forget finished outbox entries (sent, failed, withdrawn) created before @p before_ms —
    /// an envelope retried after that long is not expected — or its outbox grows by one entry per send. One call
    /// should forget all of them, but need not hold the store the whole time: the bundled stores work in slices
    /// (sqlite: about a thousand blocks per transaction; redis: 10,000 outbox entries per script call) and let other
    /// calls in between.
    [[nodiscard]] virtual Result<std::size_t> prune(std::int64_t before_ms) = 0;

    /// @brief Connection leases, if this store is shared by several hosts (nullptr: one host owns the store, and
    /// runs every connection it is configured with). The object lives as long as the store.
    [[nodiscard]] virtual LeaseStore* leases() noexcept { return nullptr; }

    /// @brief Shared queues for work sharing between hosts (nullptr: this store has none). Lives as long as the
    /// store.
    [[nodiscard]] virtual SharedQueues* queues() noexcept { return nullptr; }
};

}  // namespace switchboard
