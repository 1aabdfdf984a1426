// The HTTP client on Boost.Beast with C++20 coroutines: every connection's work runs on the client's strand.
#include "telegram_http.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <deque>
#include <optional>
#include <set>
#include <vector>

namespace switchboard::telegram {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Strand = asio::strand<asio::io_context::executor_type>;
// Errors come back through redirect_error into a frame variable (structured bindings of co_await results corrupted
// memory across suspension points with GCC 12).
auto on_error(beast::error_code& ec) { return asio::redirect_error(asio::use_awaitable, ec); }

constexpr const char* kUserAgent = "switchboard-telegram/1.0";

/// One keep-alive connection, plain or TLS.
struct HttpConnection {
    std::optional<beast::tcp_stream> plain;
    std::optional<beast::ssl_stream<beast::tcp_stream>> secure;
    beast::flat_buffer buffer;
    bool used = false;

    beast::tcp_stream& lowest() { return plain ? *plain : beast::get_lowest_layer(*secure); }
    void close() {
        beast::error_code ignored;
        lowest().socket().shutdown(tcp::socket::shutdown_both, ignored);
        lowest().socket().close(ignored);
    }
};

struct Pending {
    std::string method;
    std::string body;
    std::chrono::milliseconds timeout;
    HttpCallback done;
};

bool connection_was_closed(const beast::error_code& ec) {
    return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
           ec == asio::error::broken_pipe || ec == asio::ssl::error::stream_truncated;
}

class Client final : public HttpClient, public std::enable_shared_from_this<Client> {
public:
    Client(asio::io_context& io, Endpoint api, const TelegramSettings& settings, std::uint32_t connections,
           Logger& logger)
        : strand_(asio::make_strand(io)),
          ssl_(asio::ssl::context::tls_client),
          api_(std::move(api)),
          token_(settings.token),
          connect_timeout_(settings.connect_timeout_ms),
          max_connections_(std::max<std::uint32_t>(1, connections)),
          logger_(logger) {
        if (api_.tls) {
            ssl_.set_default_verify_paths();
            ssl_.set_verify_mode(asio::ssl::verify_peer);
        }
    }

    void request(std::string method, std::string body, std::chrono::milliseconds timeout, HttpCallback done) override {
        asio::post(strand_, [self = shared_from_this(),
                             p = Pending{std::move(method), std::move(body), timeout, std::move(done)}]() mutable {
            if (self->closed_) {
                p.done(fail("shutting_down", p.method + ": the connector is stopping"));
                return;
            }
            self->queue_.push_back(std::move(p));
            if (self->workers_ < self->max_connections_) {
                ++self->workers_;
                asio::co_spawn(self->strand_, self->work(), asio::detached);
            }
        });
    }

    void shutdown() override {
        asio::post(strand_, [self = shared_from_this()] {
            self->closed_ = true;
            auto queued = std::move(self->queue_);
            self->queue_.clear();
            for (auto& p : queued) p.done(fail("shutting_down", p.method + ": the connector is stopping"));
            for (auto& connection : self->idle_) connection->close();
            self->idle_.clear();
            for (HttpConnection* connection : self->active_) connection->lowest().cancel();
        });
    }

private:
    // One worker per connection in use: it serves queued requests until none is left, then parks its connection.
    asio::awaitable<void> work() {
        auto self = shared_from_this();
        std::unique_ptr<HttpConnection> connection;
        while (!queue_.empty() && !closed_) {
            Pending p = std::move(queue_.front());
            queue_.pop_front();
            if (!connection && !idle_.empty()) {
                connection = std::move(idle_.back());
                idle_.pop_back();
            }
            Result<HttpResponse> response = co_await perform(connection, p);
            p.done(std::move(response));
        }
        if (connection && !closed_) idle_.push_back(std::move(connection));
        --workers_;
    }

    asio::awaitable<Result<HttpResponse>> perform(std::unique_ptr<HttpConnection>& connection, const Pending& p) {
        for (int attempt = 0;; ++attempt) {
            if (!connection) {
                auto fresh = co_await connect();
                if (!fresh) co_return fresh.error();
                connection = std::move(*fresh);
            }
            if (closed_) co_return fail("shutting_down", p.method + ": the connector is stopping");
            const bool reused = connection->used;
            beast::error_code ec;
            bool keep_alive = true;
            active_.insert(connection.get());
            // Two statements, not a conditional expression: GCC 12 mis-destroys co_await results inside `?:`.
            Result<HttpResponse> result = fail("network_error", "no exchange");
            if (connection->plain) {
                result = co_await exchange(*connection->plain, *connection, p, ec, keep_alive);
            } else {
                result = co_await exchange(*connection->secure, *connection, p, ec, keep_alive);
            }
            active_.erase(connection.get());
            if (!ec) {
                connection->used = true;
                if (!keep_alive) connection.reset();
                co_return result;
            }
            connection->close();
            connection.reset();
            if (closed_) co_return fail("shutting_down", p.method + ": the connector is stopping");
            // A kept-alive connection the server closed meanwhile: the request never reached it; once more on a new
            // connection. Anything else (a timeout, a reset mid-response) is reported.
            if (!reused || attempt > 0 || !connection_was_closed(ec)) {
                const std::string why = ec == beast::error::timeout
                                            ? "no response within " + std::to_string(p.timeout.count()) + " ms"
                                            : ec.message();
                co_return fail_retryable("network_error", p.method + ": " + why);
            }
        }
    }

    asio::awaitable<Result<std::unique_ptr<HttpConnection>>> connect() {
        const std::string where = api_.host + ":" + api_.port;
        tcp::resolver resolver(strand_);
        beast::error_code resolve_ec;
        const auto endpoints = co_await resolver.async_resolve(api_.host, api_.port, on_error(resolve_ec));
        if (resolve_ec) co_return fail_retryable("network_error", "resolving " + where + ": " + resolve_ec.message());
        auto connection = std::make_unique<HttpConnection>();
        if (api_.tls) {
            connection->secure.emplace(strand_, ssl_);
            // SNI only for a name: an IP address is not a server name (RFC 6066).
            beast::error_code address_ec;
            asio::ip::make_address(api_.host, address_ec);
            if (address_ec && !SSL_set_tlsext_host_name(connection->secure->native_handle(), api_.host.c_str())) {
                co_return fail_retryable("network_error", "TLS: cannot set the server name " + api_.host);
            }
            connection->secure->set_verify_callback(asio::ssl::host_name_verification(api_.host));
        } else {
            connection->plain.emplace(strand_);
        }
        connection->lowest().expires_after(connect_timeout_);
        beast::error_code connect_ec;
        co_await connection->lowest().async_connect(endpoints, on_error(connect_ec));
        if (connect_ec)
            co_return fail_retryable("network_error", "connecting to " + where + ": " + connect_ec.message());
        if (api_.tls) {
            connection->lowest().expires_after(connect_timeout_);
            beast::error_code handshake_ec;
            co_await connection->secure->async_handshake(asio::ssl::stream_base::client, on_error(handshake_ec));
            if (handshake_ec) {
                co_return fail_retryable("network_error",
                                         "TLS handshake with " + where + ": " + handshake_ec.message());
            }
        }
        connection->lowest().expires_never();
        logger_.debug("Bot API: connected to " + where + (api_.tls ? " (TLS)" : ""));
        co_return std::move(connection);
    }

    template <class Stream>
    asio::awaitable<Result<HttpResponse>> exchange(Stream& stream, HttpConnection& connection, const Pending& p,
                                                   beast::error_code& ec, bool& keep_alive) {
        // The token is part of the path: it never goes into a log line from here.
        http::request<http::string_body> request{http::verb::post, api_.path + "/bot" + token_ + "/" + p.method, 11};
        request.set(http::field::host, api_.host_header());
        request.set(http::field::user_agent, kUserAgent);
        request.set(http::field::content_type, "application/json");
        request.body() = p.body.empty() ? std::string("{}") : p.body;
        request.keep_alive(true);
        request.prepare_payload();
        connection.lowest().expires_after(p.timeout);
        beast::error_code write_ec;
        co_await http::async_write(stream, request, on_error(write_ec));
        if (write_ec) {
            ec = write_ec;
            co_return fail_retryable("network_error", write_ec.message());
        }
        http::response_parser<http::string_body> parser;
        parser.body_limit(64 * 1024 * 1024);
        beast::error_code read_ec;
        co_await http::async_read(stream, connection.buffer, parser, on_error(read_ec));
        connection.lowest().expires_never();
        if (read_ec) {
            ec = read_ec;
            co_return fail_retryable("network_error", read_ec.message());
        }
        auto& response = parser.get();
        keep_alive = response.keep_alive();
        co_return HttpResponse{response.result_int(), std::move(response.body())};
    }

    Strand strand_;
    asio::ssl::context ssl_;
    Endpoint api_;
    std::string token_;
    std::chrono::milliseconds connect_timeout_;
    std::uint32_t max_connections_;
    Logger& logger_;
    std::deque<Pending> queue_;
    std::vector<std::unique_ptr<HttpConnection>> idle_;
    std::set<HttpConnection*> active_;
    std::uint32_t workers_ = 0;
    bool closed_ = false;
};

}  // namespace

std::shared_ptr<HttpClient> make_http_client(boost::asio::io_context& io, Endpoint api,
                                             const TelegramSettings& settings, std::uint32_t connections,
                                             Logger& logger) {
    return std::make_shared<Client>(io, std::move(api), settings, connections, logger);
}

}  // namespace switchboard::telegram
