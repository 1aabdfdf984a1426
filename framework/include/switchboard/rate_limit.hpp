#pragma once
/// @file rate_limit.hpp
/// @brief The rate-limit scheduler every connection has (DESIGN §3, §5): one per connection, owned by the host,
/// used by the delivery engine and by connectors so that no request is sent while a platform limit says wait.
///
/// The model is Discord's, which is the most demanding; the others are special cases of it:
/// - A **route** is a connector-chosen key for one kind of request to one resource, e.g.
///   `"POST /channels/123/messages"` or `"sendMessage 42"`. Requests on the same route share limits.
/// - A route's **learned bucket** comes from the platform's responses (observe()): limit, remaining and reset. Routes
///   that report the same platform bucket id share one bucket. Until a route's first response arrives, its
///   requests are not held back by a learned bucket (nothing is known yet).
/// - **Static buckets** are token buckets defined up front (define()): `"global"` exists on every connection (from
///   the connection's `limits:` config, or defined by the connector as the platform default; unlimited when
///   neither sets it) and applies to every request; others (e.g. Telegram's per-chat 1/s) apply to the requests
///   that name them.
/// - A 429 (observe() with `limited`) holds its bucket — or, when `global`, the whole connection — for
///   `retry_after_s`. Responses that platforms count as invalid requests (401, 403, 429) are counted.
/// - Waiting requests are served by priority: every `live` request before any `backfill` request.
///
/// The delivery engine acquires route send_route(address) for every send; a connector that learns limits from its
/// responses reports them on that same route. Requests the connector makes by itself (history, delete, polling)
/// it acquires and reports on routes of its own choosing.

#include <switchboard/message.hpp>
#include <switchboard/result.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace switchboard {

/// @brief Who waits first: every live request is served before any backfill request.
enum class RequestPriority {
    live,      ///< Sends and anything a person is waiting for.
    backfill,  ///< Recovery fetches; they yield to live traffic.
};

/// @brief One request that wants to go out.
struct RateRequest {
    /// @brief The route key (see the file comment).
    std::string route;
    /// @brief Static buckets (by define() name) this request also takes a token from; `"global"` is implied.
    std::vector<std::string> buckets;
    /// @brief Its priority.
    RequestPriority priority = RequestPriority::live;
};

/// @brief What one response said about limits, as the connector parsed it from its platform's headers and body.
struct RateLimitInfo {
    /// @brief The platform's bucket id; routes with the same id share a bucket. Report the id of the limit the
    /// platform really applies: for Discord, `X-RateLimit-Bucket` joined with the route's top-level resource (channel,
    /// guild or webhook id, e.g. `"<bucket>:<channel id>"`), because Discord keeps one bucket per resource under the
    /// same header value — the bare header would make every channel's sends share one channel's limit.
    std::optional<std::string> bucket;
    /// @brief Requests allowed per window (`X-RateLimit-Limit`).
    std::optional<std::uint32_t> limit;
    /// @brief Requests left in the current window (`X-RateLimit-Remaining`).
    std::optional<std::uint32_t> remaining;
    /// @brief Seconds until the window resets (`X-RateLimit-Reset-After`).
    std::optional<double> reset_after_s;
    /// @brief The response was a 429: hold the bucket (or, with `global`, the connection) for `retry_after_s`.
    bool limited = false;
    /// @brief With `limited`: the limit hit was the connection-wide one.
    bool global = false;
    /// @brief With `limited`: how long to wait, in seconds.
    double retry_after_s = 0;
    /// @brief The platform counts this response against an invalid-request budget (Discord: 401, 403, and 429
    /// unless its scope is `shared`).
    bool invalid = false;
};

/// @brief Counters of one connection's scheduler, for status, metrics and tests.
struct RateLimitStats {
    /// @brief Requests granted.
    std::uint64_t granted = 0;
    /// @brief Of those, requests that had to wait before being granted.
    std::uint64_t delayed = 0;
    /// @brief Total time requests spent waiting, in milliseconds.
    std::uint64_t waited_ms = 0;
    /// @brief 429 responses reported.
    std::uint64_t limited = 0;
    /// @brief Of those, connection-wide (global) 429s.
    std::uint64_t global_limited = 0;
    /// @brief Responses counted as invalid requests since start.
    std::uint64_t invalid = 0;
    /// @brief Requests waiting now.
    std::uint64_t waiting = 0;
};

/// @brief Called when a request may be sent (an empty success), or with an error when the scheduler is shut down
/// (`cancelled`). A grant runs on one of the host's I/O threads, never inside acquire(): do not block in it. A
/// cancellation runs on the thread that shuts the scheduler down (the host's, after the connector's stop()), or on
/// an I/O thread for a request made after that.
using RateGrant = std::function<void(Result<void>)>;

/// @brief One connection's rate-limit scheduler. All members are thread-safe.
class RateLimitScheduler {
public:
    virtual ~RateLimitScheduler() = default;

    /// @brief Defines (or redefines) static bucket @p name: at most @p burst at once, refilled at @p rate_per_second
    /// (<= 0: unlimited). Redefining `"global"` is how a connector sets its platform's default when the config did
    /// not set `limits:`; a configured `limits:` always wins over a connector's default.
    virtual void define(const std::string& name, double rate_per_second, std::uint32_t burst) = 0;

    /// @brief Calls @p grant once @p request may be sent without breaking any limit known now. Each grant must be
    /// followed by exactly one observe() on the same route — with what the response said, or an empty
    /// RateLimitInfo when there was no response — except for routes whose responses carry no limit information,
    /// where observe() may be skipped.
    virtual void acquire(RateRequest request, RateGrant grant) = 0;

    /// @brief Reports what a response on @p route said about limits.
    virtual void observe(const std::string& route, const RateLimitInfo& info) = 0;

    /// @brief The counters now.
    [[nodiscard]] virtual RateLimitStats stats() const = 0;
};

/// @brief The route the delivery engine acquires for a send to @p to: `"send <target>"`, or `"send @<user>"` for a
/// person. A connector that learns limits from its send responses reports them on this same route.
[[nodiscard]] inline std::string send_route(const Address& to) {
    return (to.is_user ? "send @" : "send ") + to.target;
}

}  // namespace switchboard
