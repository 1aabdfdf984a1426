#pragma once
// The Telegram Bot API without the network: the response envelope, updates into Messages, request bodies, error
// mapping, text splitting at 4096 UTF-16 code units, backoff, and the two pieces of the offset logic — which updates
// may be confirmed (UpdateLedger) and whether a new session missed updates (detect_gap). Everything here is pure,
// so the unit tests exercise it without a socket; the network lives in telegram_http.cpp and telegram_connector.cpp.

#include <cstdint>
#include <deque>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <switchboard/message.hpp>
#include <switchboard/rate_limit.hpp>
#include <switchboard/result.hpp>
#include <vector>

namespace switchboard::telegram {

/// Telegram keeps an unconfirmed update this long, then drops it.
inline constexpr std::int64_t kRetentionMs = 24LL * 3600 * 1000;

/// The longest text of one message, in UTF-16 code units.
inline constexpr std::size_t kMaxTextUnits = 4096;

/// A successful Result<std::string>. (A bare string is ambiguous: Error, an aggregate, is constructible from one.)
[[nodiscard]] inline Result<std::string> ok_string(std::string value) {
    return Result<std::string>(boost::system::in_place_value, std::move(value));
}

/// What one Bot API response said: `{"ok":true,"result":...}` or `{"ok":false,"error_code","description",
/// "parameters"}`.
struct ApiResponse {
    bool ok = false;
    nlohmann::json result;
    int error_code = 0;                              ///< The HTTP status when the body says none.
    std::string description;                         ///< "Forbidden: bot was blocked by the user", ...
    std::optional<double> retry_after_s;             ///< parameters.retry_after (429)
    std::optional<std::int64_t> migrate_to_chat_id;  ///< parameters.migrate_to_chat_id (a group became a supergroup)
};

/// Reads a response of HTTP status @p status. A body that is not the envelope (a proxy's HTML page) gives
/// `ok = false` with the status as error code.
[[nodiscard]] ApiResponse parse_response(unsigned status, std::string_view body);

/// One update as the connector needs it.
struct Update {
    std::int64_t update_id = 0;
    /// What the bots get; nullopt when the update is nothing the host handles (another update type, a channel post,
    /// a message without text, the bot's own message): such an update counts as handled at once.
    std::optional<Message> message;
    /// The message's date in ms since the epoch (0 when it has none), for the server clock estimate.
    std::int64_t date_ms = 0;
    /// Why it is not delivered (for the debug log), when `message` is empty.
    std::string skipped;
};

/// Reads getUpdates' `result`: updates in the order given. A message from private chats is a private message, from
/// a group or supergroup a group message; the channel is the chat id, the author the sender's user id. Messages from
/// @p self_id (the bot) are skipped. An element without a numeric update_id is an error (its place in the order is
/// unknown); a malformed message inside a valid update is skipped (counted in `skipped`).
[[nodiscard]] Result<std::vector<Update>> parse_updates(const nlohmann::json& result, std::int64_t self_id);

/// The bot's own user: getMe's `result`.
struct BotUser {
    std::int64_t id = 0;
    std::string username;
};
[[nodiscard]] Result<BotUser> parse_bot_user(const nlohmann::json& result);

/// The body of getUpdates (JSON): @p offset when known, @p limit, @p timeout_s, and @p allowed_updates.
[[nodiscard]] std::string get_updates_body(std::optional<std::int64_t> offset, std::uint32_t limit,
                                           std::int64_t timeout_s, const std::vector<std::string>& allowed_updates);

/// A chat id as JSON: a number when @p chat_id is one, else the string (`@channelname`).
[[nodiscard]] nlohmann::json chat_id_json(const std::string& chat_id);

/// The body of sendMessage; @p reply_to (a message id in the same chat) goes into reply_parameters, and the message
/// is sent even if that one is gone.
[[nodiscard]] std::string send_message_body(const std::string& chat_id, const std::string& text,
                                            const std::optional<std::string>& reply_to);

/// The body of deleteMessage.
[[nodiscard]] std::string delete_message_body(const std::string& chat_id, const std::string& message_id);

/// The message id in sendMessage's `result`.
[[nodiscard]] Result<std::string> parse_sent_message_id(const nlohmann::json& result);

/// Maps a failed response to an Error with a stable code; @p what says what was tried ("send to chat 42").
///   - 403 (blocked by the user, kicked from the group, cannot start a conversation, ...): `unreachable`, final;
///   - 429: `rate_limited`, retryable after parameters.retry_after;
///   - 401: `token_rejected`, final; 404 (a malformed token, or a wrong api_base): `not_found`, final;
///   - 400 "chat not found": `chat_not_found`; a group that became a supergroup: `chat_migrated` (naming the new
///     id); "message to delete not found": `message_not_found`; other 400s: `bad_request`; all final;
///   - 409: `conflict` (another poller or a webhook), retryable;
///   - 5xx and anything else: `telegram_unavailable`, retryable.
[[nodiscard]] Error response_error(const ApiResponse& response, const std::string& what);

/// What a response tells the rate-limit scheduler: a 429 holds its route for parameters.retry_after (at least 1 s).
[[nodiscard]] RateLimitInfo rate_limit_info(const ApiResponse& response);

/// Length of @p text in UTF-16 code units, as Telegram counts it (a code point above U+FFFF counts 2; an invalid
/// UTF-8 byte counts 1, as the U+FFFD it becomes).
[[nodiscard]] std::size_t utf16_length(std::string_view text);

/// Splits @p text into parts of at most @p max_units UTF-16 code units each, only between code points (never inside
/// a UTF-8 sequence, so never between the halves of a surrogate pair); it prefers to cut after a newline, then after
/// a space, within the last quarter of a part. An empty text is one empty part.
[[nodiscard]] std::vector<std::string> split_text(std::string_view text, std::size_t max_units = kMaxTextUnits);

/// Capped exponential backoff with full jitter: a delay in [base, min(cap, base * 2^attempt)]; @p unit in [0,1).
[[nodiscard]] std::int64_t backoff_ms(std::uint32_t attempt, std::int64_t base_ms, std::int64_t cap_ms, double unit);

/// The updates this process delivered and has not confirmed yet, in order, and the offset that may be confirmed.
///
/// An update is confirmed (getUpdates' offset moves past it) only once it was handled: the pipeline committed its
/// message (is_processed), or it carried nothing to deliver. An update the server sends again while it is still
/// here is not delivered twice. The set is capped: past `max_unconfirmed` updates nothing more is taken (the server
/// keeps the rest and sends them again once the front was handled). Not thread-safe: the poll loop owns it.
class UpdateLedger {
public:
    /// @p stored_offset: the offset an earlier run saved (updates below it were handled).
    explicit UpdateLedger(std::optional<std::int64_t> stored_offset, std::size_t max_unconfirmed = 1000);

    /// What take() found in one poll's updates.
    struct Taken {
        std::vector<Message> deliver;  ///< New messages, in order: hand them to the pipeline.
        std::size_t repeated = 0;      ///< Updates already taken earlier in this run (not delivered again).
        std::size_t fresh = 0;         ///< New updates (messages or not).
        std::size_t deferred = 0;      ///< New updates left for later because the ledger is full.
        /// New updates with nothing to deliver: update id and why (Update::skipped), for the debug log.
        std::vector<std::pair<std::int64_t, std::string>> not_delivered;
    };
    /// Records a poll's updates (in update_id order) at local time @p now_ms.
    Taken take(const std::vector<Update>& updates, std::int64_t now_ms);

    /// Tells whether a delivered message was handled; an error counts as not yet.
    using HandledCheck = std::function<Result<bool>(const Message&)>;
    /// Drops the leading run of handled updates; returns how many. Stops at the first one not handled (or whose
    /// check failed: @p error then holds the failure).
    std::size_t advance(const HandledCheck& handled, std::optional<Error>* error = nullptr);

    /// The offset to confirm up to: the first update not known to be handled, or the stored offset before
    /// anything was taken (nullopt when there is neither).
    [[nodiscard]] std::optional<std::int64_t> next_offset() const;
    /// Updates delivered and not confirmed yet.
    [[nodiscard]] std::size_t unconfirmed() const { return pending_.size(); }
    /// The oldest of them: its update id and when it was taken (local ms).
    [[nodiscard]] std::optional<std::pair<std::int64_t, std::int64_t>> oldest() const;

private:
    struct Pending {
        std::int64_t update_id;
        std::int64_t taken_ms;
        Message key;  // channel and id only
    };
    std::optional<std::int64_t> stored_offset_;
    std::size_t max_unconfirmed_;
    std::int64_t highest_ = 0;  // highest update id taken in this run (0: none)
    std::deque<Pending> pending_;
};

/// What a new session's first poll is compared with.
struct GapInputs {
    std::optional<std::int64_t> stored_offset;    ///< The offset saved before ("offset").
    std::optional<std::int64_t> last_poll_ms;     ///< The server time of the last successful poll ("last_poll").
    std::optional<std::int64_t> first_update_id;  ///< The first update the new session received, if any.
    std::int64_t now_ms = 0;                      ///< The server time now (estimate).
};

/// A stretch of updates that may be lost.
struct Gap {
    std::optional<std::int64_t> from;  ///< First update id missing (when known).
    std::optional<std::int64_t> to;    ///< Last update id missing (when known).
    std::string reason;                ///< For people.
    /// `{"from":..,"to":..,"reason":".."}` (from and to null when unknown), what save_state("gap") stores.
    [[nodiscard]] std::string to_json() const;
};

/// A gap when the first update is above the stored offset (the server dropped what lay between), or the last poll
/// was more than 24 hours ago (Telegram dropped whatever waited longer). Nothing stored: no gap (a first run).
[[nodiscard]] std::optional<Gap> detect_gap(const GapInputs& inputs);

/// "25 h 3 min", "4 min 10 s", "900 ms".
[[nodiscard]] std::string format_duration_ms(std::int64_t ms);

}  // namespace switchboard::telegram
