// The REST client on Boost.Beast with C++20 coroutines: every connection's work runs on the client's strand.
#include "discord_rest.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include <chrono>
#include <deque>
#include <optional>
#include <vector>

namespace switchboard::discord {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Strand = asio::strand<asio::io_context::executor_type>;
// Errors come back through redirect_error into a frame variable. (Structured bindings of co_await results are
// avoided: with GCC 12 they corrupted memory across suspension points.)
auto on_error(beast::error_code& ec) { return asio::redirect_error(asio::use_awaitable, ec); }

constexpr const char* kUserAgent = "DiscordBot (https://github.com/switchboard/switchboard, 0.1)";

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
    std::string target;
    std::string body;
    HttpCallback done;
};

std::optional<std::string> header(const http::response<http::string_body>& response, const char* name) {
    auto it = response.find(name);
    if (it == response.end()) return std::nullopt;
    return std::string(it->value());
}

bool connection_was_closed(const beast::error_code& ec) {
    return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
           ec == asio::error::broken_pipe || ec == asio::ssl::error::stream_truncated;
}

class Client final : public RestClient, public std::enable_shared_from_this<Client> {
public:
    Client(asio::io_context& io, Endpoint api, const DiscordSettings& settings, Logger& logger)
        : strand_(asio::make_strand(io)), ssl_(asio::ssl::context::tls_client), api_(std::move(api)),
          token_(settings.token), connect_timeout_(settings.connect_timeout_ms),
          request_timeout_(settings.request_timeout_ms), max_connections_(settings.http_connections),
          logger_(logger) {
        if (api_.tls) {
            ssl_.set_default_verify_paths();
            ssl_.set_verify_mode(asio::ssl::verify_peer);
        }
    }

    void request(std::string method, std::string target, std::string body, HttpCallback done) override {
        asio::post(strand_, [self = shared_from_this(), p = Pending{std::move(method), std::move(target),
                                                                     std::move(body), std::move(done)}]() mutable {
            if (self->closed_) {
                p.done(fail("shutting_down", p.method + " " + p.target + ": the connector is stopping"));
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
            for (auto& p : queued) p.done(fail("shutting_down", p.method + " " + p.target + ": the connector is stopping"));
            for (auto& connection : self->idle_) connection->close();
            self->idle_.clear();
        });
    }

private:
    // One worker per connection in use: it serves queued requests until none is left, then parks its connection.
    asio::awaitable<void> work() {
        auto self = shared_from_this();
        std::unique_ptr<HttpConnection> connection;
        while (!queue_.empty()) {
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
        const std::string what = p.method + " " + p.target;
        for (int attempt = 0;; ++attempt) {
            if (!connection) {
                auto fresh = co_await connect();
                if (!fresh) co_return fresh.error();
                connection = std::move(*fresh);
            }
            const bool reused = connection->used;
            beast::error_code ec;
            bool keep_alive = true;
            // Two statements, not a conditional expression: GCC 12 mis-destroys co_await results inside `?:`.
            Result<HttpResponse> result = fail("network_error", "no exchange");
            if (connection->plain) {
                result = co_await exchange(*connection->plain, *connection, p, ec, keep_alive);
            } else {
                result = co_await exchange(*connection->secure, *connection, p, ec, keep_alive);
            }
            if (!ec) {
                connection->used = true;
                if (!keep_alive) connection.reset();
                co_return result;
            }
            connection->close();
            connection.reset();
            // A kept-alive connection the server closed meanwhile: the request never reached it; once more on a new
            // connection. Anything else (a timeout, a reset mid-response) is reported.
            if (!reused || attempt > 0 || !connection_was_closed(ec)) {
                co_return fail_retryable("network_error", what + ": " + ec.message());
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
            if (!SSL_set_tlsext_host_name(connection->secure->native_handle(), api_.host.c_str())) {
                co_return fail_retryable("network_error", "TLS: cannot set the server name " + api_.host);
            }
            connection->secure->set_verify_callback(asio::ssl::host_name_verification(api_.host));
        } else {
            connection->plain.emplace(strand_);
        }
        connection->lowest().expires_after(connect_timeout_);
        beast::error_code connect_ec;
        co_await connection->lowest().async_connect(endpoints, on_error(connect_ec));
        if (connect_ec) co_return fail_retryable("network_error", "connecting to " + where + ": " + connect_ec.message());
        if (api_.tls) {
            connection->lowest().expires_after(connect_timeout_);
            beast::error_code handshake_ec;
            co_await connection->secure->async_handshake(asio::ssl::stream_base::client, on_error(handshake_ec));
            if (handshake_ec) {
                co_return fail_retryable("network_error", "TLS handshake with " + where + ": " + handshake_ec.message());
            }
        }
        connection->lowest().expires_never();
        logger_.debug("REST: connected to " + where + (api_.tls ? " (TLS)" : ""));
        co_return std::move(connection);
    }

    template <class Stream>
    asio::awaitable<Result<HttpResponse>> exchange(Stream& stream, HttpConnection& connection, const Pending& p,
                                                   beast::error_code& ec, bool& keep_alive) {
        http::request<http::string_body> request{http::string_to_verb(p.method), api_.path + p.target, 11};
        request.set(http::field::host, api_.host_header());
        request.set(http::field::user_agent, kUserAgent);
        request.set(http::field::authorization, "Bot " + token_);
        if (!p.body.empty() || p.method == "POST") {
            request.set(http::field::content_type, "application/json");
            request.body() = p.body.empty() ? std::string("{}") : p.body;
        }
        request.keep_alive(true);
        request.prepare_payload();
        connection.lowest().expires_after(request_timeout_);
        beast::error_code write_ec;
        co_await http::async_write(stream, request, on_error(write_ec));
        if (write_ec) {
            ec = write_ec;
            co_return fail_retryable("network_error", write_ec.message());
        }
        http::response<http::string_body> response;
        beast::error_code read_ec;
        co_await http::async_read(stream, connection.buffer, response, on_error(read_ec));
        connection.lowest().expires_never();
        if (read_ec) {
            ec = read_ec;
            co_return fail_retryable("network_error", read_ec.message());
        }
        keep_alive = response.keep_alive();
        HttpResponse out;
        out.status = response.result_int();
        out.rate.limit = header(response, "X-RateLimit-Limit");
        out.rate.remaining = header(response, "X-RateLimit-Remaining");
        out.rate.reset_after = header(response, "X-RateLimit-Reset-After");
        out.rate.bucket = header(response, "X-RateLimit-Bucket");
        out.rate.global = header(response, "X-RateLimit-Global");
        out.rate.scope = header(response, "X-RateLimit-Scope");
        out.rate.retry_after = header(response, "Retry-After");
        out.body = std::move(response.body());
        co_return out;
    }

    Strand strand_;
    asio::ssl::context ssl_;
    Endpoint api_;
    std::string token_;
    std::chrono::milliseconds connect_timeout_;
    std::chrono::milliseconds request_timeout_;
    std::uint32_t max_connections_;
    Logger& logger_;
    std::deque<Pending> queue_;
    std::vector<std::unique_ptr<HttpConnection>> idle_;
    std::uint32_t workers_ = 0;
    bool closed_ = false;
};

}  // namespace

std::shared_ptr<RestClient> make_rest_client(boost::asio::io_context& io, Endpoint api, const DiscordSettings& settings,
                                             Logger& logger) {
    return std::make_shared<Client>(io, std::move(api), settings, logger);
}

}  // namespace switchboard::discord
