#pragma once
// A small HTTP/1.1 client for the Bot API: keep-alive connections (TLS for https), requests queued and served in
// order by whichever connection is free, each with its own timeout (a long poll needs a longer one). It knows
// nothing of rate limits or of the envelope: the connector acquires, parses and observes around each request.
// Beast stays inside telegram_http.cpp.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <switchboard/plugin.hpp>
#include <switchboard/result.hpp>

#include "telegram_settings.hpp"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace switchboard::telegram {

/// What came back: status and body.
struct HttpResponse {
    unsigned status = 0;
    std::string body;
};

/// Called once, on the client's strand, with the response (any status) or a network error (`network_error`,
/// retryable; `shutting_down` after shutdown()).
using HttpCallback = std::function<void(Result<HttpResponse>)>;

class HttpClient {
public:
    virtual ~HttpClient() = default;
    /// Queues `POST <api_base>/bot<token>/<method>` with the JSON @p body; @p timeout covers sending the request and
    /// reading the whole response.
    virtual void request(std::string method, std::string body, std::chrono::milliseconds timeout,
                         HttpCallback done) = 0;
    /// Fails what is queued (`shutting_down`), cancels requests in flight and closes every connection.
    virtual void shutdown() = 0;
};

/// A client on @p io for @p api with @p settings' token, connect timeout, and at most @p connections connections.
[[nodiscard]] std::shared_ptr<HttpClient> make_http_client(boost::asio::io_context& io, Endpoint api,
                                                           const TelegramSettings& settings, std::uint32_t connections,
                                                           Logger& logger);

}  // namespace switchboard::telegram
