#pragma once
// A small HTTP/1.1 client for Discord's REST API: a few keep-alive connections (TLS for https), requests queued and
// served in order by whichever connection is free. It knows nothing of rate limits: the connector acquires and
// observes around each request. Beast stays inside discord_rest.cpp.

#include "discord_protocol.hpp"
#include "discord_settings.hpp"

#include <switchboard/plugin.hpp>
#include <switchboard/result.hpp>

#include <functional>
#include <memory>
#include <string>

namespace switchboard::discord {

/// What came back: status, body and the rate-limit headers.
struct HttpResponse {
    unsigned status = 0;
    std::string body;
    RateLimitHeaders rate;
};

/// Called once, on the client's strand, with the response (any status) or a network error (retryable).
using HttpCallback = std::function<void(Result<HttpResponse>)>;

class RestClient {
public:
    virtual ~RestClient() = default;
    /// Queues one request. @p method is "GET", "POST", "DELETE"; @p target is the path and query after the API
    /// base ("/channels/1/messages?limit=5"); @p body is JSON or empty.
    virtual void request(std::string method, std::string target, std::string body, HttpCallback done) = 0;
    /// Fails what is queued (`shutting_down`) and closes idle connections; requests in flight finish.
    virtual void shutdown() = 0;
};

/// A client for @p api (the parsed api_base) with @p settings' token, timeouts and connection count.
[[nodiscard]] std::shared_ptr<RestClient> make_rest_client(boost::asio::io_context& io, Endpoint api,
                                                           const DiscordSettings& settings, Logger& logger);

}  // namespace switchboard::discord
