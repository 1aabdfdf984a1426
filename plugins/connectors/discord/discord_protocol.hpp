#pragma once
// The Discord protocol without the network: gateway frames and the payloads the connector reads and writes, close
// code classification, rate-limit headers, error mapping, text splitting and nonces. Everything here is a pure
// function so that the unit tests can exercise it without a socket; the network code lives in discord_gateway.cpp
// and discord_rest.cpp.

#include <switchboard/connector.hpp>
#include <switchboard/message.hpp>
#include <switchboard/rate_limit.hpp>
#include <switchboard/result.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace switchboard::discord {

// Gateway intents (bit flags) this connector knows by name.
inline constexpr std::uint64_t kIntentGuilds = 1ULL << 0;
inline constexpr std::uint64_t kIntentGuildMessages = 1ULL << 9;
inline constexpr std::uint64_t kIntentDirectMessages = 1ULL << 12;
inline constexpr std::uint64_t kIntentMessageContent = 1ULL << 15;

/// Parses intent names (GUILDS, GUILD_MESSAGES, ...) or plain numbers into a bit mask; names the first unknown one.
[[nodiscard]] Result<std::uint64_t> parse_intents(const std::vector<std::string>& names);

/// Gateway opcodes.
enum class Op : int {
    dispatch = 0,
    heartbeat = 1,
    identify = 2,
    resume = 6,
    reconnect = 7,
    invalid_session = 9,
    hello = 10,
    heartbeat_ack = 11,
};

/// One gateway frame: `{"op", "d", "s", "t"}`.
struct GatewayFrame {
    int op = -1;
    nlohmann::json d;
    std::optional<std::int64_t> s;  ///< Sequence, only on dispatches.
    std::string t;                  ///< Event name, only on dispatches.
};

/// Parses one gateway text frame. Bad JSON or wrong field types are an error that names the field.
[[nodiscard]] Result<GatewayFrame> parse_frame(std::string_view text);

/// The heartbeat interval from a Hello's `d`, in milliseconds.
[[nodiscard]] Result<std::int64_t> parse_hello(const nlohmann::json& d);

/// What READY tells the client.
struct ReadyInfo {
    std::string session_id;
    std::string resume_gateway_url;
    std::string user_id;
    std::string user_name;
};
[[nodiscard]] Result<ReadyInfo> parse_ready(const nlohmann::json& d);

/// Turns a MESSAGE_CREATE's `d` into a Message. Returns nullopt (no error) for a message the bot wrote itself
/// (author id @p self_id). DMs (no guild_id) are private messages; guild channels are group messages.
[[nodiscard]] Result<std::optional<Message>> parse_message(const nlohmann::json& d, std::string_view self_id);

/// Payloads the client sends.
[[nodiscard]] std::string identify_payload(const std::string& token, std::uint64_t intents);
[[nodiscard]] std::string resume_payload(const std::string& token, const std::string& session_id,
                                         std::optional<std::int64_t> sequence);
[[nodiscard]] std::string heartbeat_payload(std::optional<std::int64_t> sequence);

/// What to do after the gateway closed with a code.
enum class CloseAction {
    resume,    ///< Reconnect and resume the session.
    identify,  ///< Reconnect and identify anew (the session is gone).
    fatal,     ///< Never reconnect: the configuration must change first.
};
struct CloseClass {
    CloseAction action = CloseAction::resume;
    std::string reason;  ///< For people: "token rejected (4004)", "session timed out (4009)", ...
};
/// Classifies a close code (0: the connection dropped without one).
[[nodiscard]] CloseClass classify_close(int code);

/// `GET /gateway/bot`.
struct GatewayBot {
    std::string url;
    std::uint32_t max_concurrency = 1;
    std::optional<std::int64_t> identify_remaining;
    std::int64_t identify_reset_after_ms = 0;
};
[[nodiscard]] Result<GatewayBot> parse_gateway_bot(std::string_view body);

/// The response headers that carry rate-limit information (absent ones empty).
struct RateLimitHeaders {
    std::optional<std::string> limit;        // X-RateLimit-Limit
    std::optional<std::string> remaining;    // X-RateLimit-Remaining
    std::optional<std::string> reset_after;  // X-RateLimit-Reset-After
    std::optional<std::string> bucket;       // X-RateLimit-Bucket
    std::optional<std::string> global;       // X-RateLimit-Global
    std::optional<std::string> scope;        // X-RateLimit-Scope
    std::optional<std::string> retry_after;  // Retry-After
};
/// Parses headers, status and (for a 429) the body into what the scheduler learns. Malformed values are ignored.
[[nodiscard]] RateLimitInfo parse_rate_limit(unsigned status, const RateLimitHeaders& headers, std::string_view body);

/// Maps a failed response (status >= 300) to an Error with a stable code. @p what says what was tried, e.g.
/// "send to channel 123"; @p rate for a 429's retry-after.
[[nodiscard]] Error response_error(unsigned status, std::string_view body, const RateLimitInfo& rate,
                                   const std::string& what);

/// Splits @p text into parts of at most @p max_chars code points each, never inside a UTF-8 sequence; it prefers to
/// cut after a newline, then after a space, in the last quarter of a part. Invalid UTF-8 bytes count as one
/// character each. An empty text is one empty part.
[[nodiscard]] std::vector<std::string> split_text(std::string_view text, std::size_t max_chars);

/// Number of code points in @p text (invalid bytes count one each).
[[nodiscard]] std::size_t utf8_length(std::string_view text);

/// A Discord nonce (at most 25 characters, [0-9A-Za-z]) derived from an idempotency key and a part number: the same
/// key always gives the same nonce, so a resend within Discord's window returns the first message.
[[nodiscard]] std::string nonce_for(std::string_view idempotency_key, std::size_t part = 0);

/// The body of `POST /channels/{id}/messages` (with `enforce_nonce` when there is a nonce).
[[nodiscard]] std::string create_message_body(const std::string& content, const std::optional<std::string>& nonce,
                                              const std::optional<std::string>& reply_to);

/// The message id in a created message's body.
[[nodiscard]] Result<std::string> parse_created_message(std::string_view body);

/// The channel id in `POST /users/@me/channels`' response.
[[nodiscard]] Result<std::string> parse_dm_channel(std::string_view body);

/// Parses `GET /channels/{id}/messages` (newest first, as Discord sends it) into a page oldest first with
/// `recovered = true`, skipping the bot's own messages; `complete` when fewer than @p limit came back. Elements that
/// do not parse are skipped and counted in @p skipped. REST message objects carry no `guild_id`, so the caller says
/// what @p kind the channel's messages are (a DM channel's are private, a guild channel's group).
[[nodiscard]] Result<HistoryPage> parse_history(std::string_view body, std::uint32_t limit, std::string_view self_id,
                                                MessageKind kind, std::size_t& skipped);

/// Milliseconds since the Unix epoch encoded in a snowflake, or nullopt.
[[nodiscard]] std::optional<std::int64_t> snowflake_ms(std::string_view id);

/// Parses an ISO 8601 timestamp such as `2024-01-02T03:04:05.678000+00:00` into ms since the epoch.
[[nodiscard]] std::optional<std::int64_t> parse_timestamp(std::string_view text);

/// Capped exponential backoff with full jitter: a delay in [base, min(cap, base * 2^attempt)]; @p unit in [0,1).
[[nodiscard]] std::int64_t backoff_ms(std::uint32_t attempt, std::int64_t base_ms, std::int64_t cap_ms, double unit);

}  // namespace switchboard::discord
