#include "admin/admin_server.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/parse.hpp>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string_view>
#include <utility>

namespace switchboard::admin {

namespace {

// The status page, compiled in from status_page.html.
constexpr std::string_view kStatusPage =
#include "status_page.inc"
    ;

// Both strings compared in full whatever their contents, so the time does not tell how much of a guess was right.
bool equal_constant_time(std::string_view a, std::string_view b) {
    unsigned char difference = a.size() == b.size() ? 0 : 1;
    const std::size_t n = std::max(a.size(), b.size());
    for (std::size_t i = 0; i < n; ++i) {
        const auto x = static_cast<unsigned char>(i < a.size() ? a[i] : 0);
        const auto y = static_cast<unsigned char>(i < b.size() ? b[i] : 0);
        difference |= static_cast<unsigned char>(x ^ y);
    }
    return difference == 0;
}

AdminResponse text(unsigned status, std::string content_type, std::string body) {
    return AdminResponse{status, std::move(content_type), std::move(body)};
}

AdminResponse json_response(unsigned status, const nlohmann::json& body) {
    return AdminResponse{status, "application/json", body.dump() + "\n"};
}

}  // namespace

// ---- routes -------------------------------------------------------------------------------------------------------

AdminRoutes::AdminRoutes(AdminApi api, std::string token) : api_(std::move(api)), token_(std::move(token)) {}

AdminResponse AdminRoutes::error(unsigned status, const std::string& code, const std::string& message) {
    return json_response(status, nlohmann::json{{"error", code}, {"message", message}});
}

bool AdminRoutes::authorized(const std::string& header) const {
    constexpr std::string_view kScheme = "Bearer ";
    if (token_.empty() || header.size() < kScheme.size()) return false;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for (std::size_t i = 0; i < kScheme.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(header[i])) != std::tolower(static_cast<unsigned char>(kScheme[i])))
            return false;
    }
    return equal_constant_time(std::string_view(header).substr(kScheme.size()), token_);
}

void AdminRoutes::handle(const AdminRequest& request, std::function<void(AdminResponse)> reply) const {
    const std::string_view target = request.target;
    const std::string_view path = target.substr(0, target.find('?'));
    const bool get = request.method == "GET" || request.method == "HEAD";
    const auto only = [&](std::string_view allowed) {
        reply(error(405, "method_not_allowed", std::string(path) + " accepts " + std::string(allowed) + " only"));
    };

    if (path == "/healthz") {
        if (!get) return only("GET");
        return reply(text(200, "text/plain; charset=utf-8", "ok\n"));
    }
    if (path == "/readyz") {
        if (!get) return only("GET");
        std::vector<std::string> reasons;
        const bool ready = api_.ready ? api_.ready(reasons) : true;
        if (ready) return reply(text(200, "text/plain; charset=utf-8", "ready\n"));
        std::string body = "not ready\n";
        for (const std::string& reason : reasons) body += reason + "\n";
        return reply(text(503, "text/plain; charset=utf-8", std::move(body)));
    }
    if (path == "/metrics") {
        if (!get) return only("GET");
        if (api_.metrics == nullptr) return reply(error(404, "not_found", "no metrics in this host"));
        return reply(text(200, std::string(Metrics::kContentType), api_.metrics->render()));
    }
    if (path == "/" || path == "/index.html") {
        if (!get) return only("GET");
        return reply(text(200, "text/html; charset=utf-8", std::string(kStatusPage)));
    }
    if (!path.starts_with("/api/")) return reply(error(404, "not_found", "no such page: " + std::string(path)));

    if (!authorized(request.authorization)) {
        AdminResponse denied = error(401, "unauthorized",
                                     request.authorization.empty()
                                         ? "this needs 'Authorization: Bearer <token>' (switchboard.admin.token)"
                                         : "the bearer token is wrong");
        return reply(std::move(denied));
    }
    if (path == "/api/status") {
        if (!get) return only("GET");
        return reply(json_response(200, api_.status ? api_.status() : nlohmann::json::object()));
    }
    if (path == "/api/send") {
        if (request.method != "POST") return only("POST");
        nlohmann::json body;
        try {
            body = nlohmann::json::parse(request.body);
        } catch (const nlohmann::json::parse_error& e) {
            return reply(error(400, "bad_json", std::string("the body is not JSON: ") + e.what()));
        }
        if (!body.is_object()) return reply(error(400, "bad_request", "the body must be a JSON object (an envelope)"));
        if (!api_.send) return reply(error(503, "not_ready", "this host cannot send"));
        api_.send(body, [reply = std::move(reply)](unsigned status, nlohmann::json answer) {
            reply(json_response(status, answer));
        });
        return;
    }
    if (path == "/api/reload") {
        if (request.method != "POST") return only("POST");
        if (!api_.reload) return reply(error(503, "not_ready", "this host cannot reload"));
        api_.reload([reply = std::move(reply)](unsigned status, nlohmann::json answer) {
            reply(json_response(status, answer));
        });
        return;
    }
    reply(error(404, "not_found", "no such API: " + std::string(path)));
}

// ---- the server ---------------------------------------------------------------------------------------------------

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct AdminServer::Impl : std::enable_shared_from_this<AdminServer::Impl> {
    Impl(asio::io_context& io_, AdminOptions options_, AdminApi api, Logger& logger_)
        : io(io_),
          options(std::move(options_)),
          routes(std::move(api), options.token),
          logger(logger_),
          acceptor(asio::make_strand(io_)) {}

    class Session : public std::enable_shared_from_this<Session> {
    public:
        Session(tcp::socket socket, std::shared_ptr<Impl> server)
            : stream_(std::move(socket)), server_(std::move(server)) {}

        void start() {
            asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read(); });
        }

        void close() {
            asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
                beast::error_code ignored;
                self->stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
                self->stream_.close();
            });
        }

    private:
        void read() {
            parser_.emplace();
            parser_->body_limit(server_->options.body_limit);
            parser_->header_limit(16 * 1024);
            stream_.expires_after(std::chrono::seconds(30));
            http::async_read(stream_, buffer_, *parser_,
                             [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
        }

        void on_read(beast::error_code ec) {
            if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted) {
                return finish();
            }
            if (ec == http::error::body_limit) {
                keep_alive_ = false;
                return write(AdminRoutes::error(413, "too_large",
                                                "the body is over " + std::to_string(server_->options.body_limit) +
                                                    " bytes"),
                             false);
            }
            if (ec) {
                keep_alive_ = false;
                return write(AdminRoutes::error(400, "bad_request", "malformed HTTP request: " + ec.message()), false);
            }
            const auto& request = parser_->get();
            keep_alive_ = request.keep_alive();
            head_ = request.method() == http::verb::head;
            AdminRequest admin{std::string(request.method_string()), std::string(request.target()),
                               std::string(request[http::field::authorization]), request.body()};
            stream_.expires_never();  // a send may take until its deadline
            server_->routes.handle(admin, [self = shared_from_this()](AdminResponse response) {
                asio::dispatch(self->stream_.get_executor(), [self, response = std::move(response)]() mutable {
                    self->write(std::move(response), self->keep_alive_);
                });
            });
        }

        void write(AdminResponse response, bool keep_alive) {
            auto message = std::make_shared<http::response<http::string_body>>(
                static_cast<http::status>(response.status), 11);
            message->set(http::field::server, "switchboard");
            message->set(http::field::content_type, response.content_type);
            message->set(http::field::cache_control, "no-store");
            message->keep_alive(keep_alive);
            message->body() = std::move(response.body);
            message->prepare_payload();
            if (head_) message->body().clear();
            stream_.expires_after(std::chrono::seconds(30));
            http::async_write(stream_, *message,
                              [self = shared_from_this(), message, keep_alive](beast::error_code ec, std::size_t) {
                                  if (ec || !keep_alive) return self->finish();
                                  self->read();
                              });
        }

        void finish() {
            beast::error_code ignored;
            stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
            stream_.close();
            server_->forget(this);
        }

        beast::tcp_stream stream_;
        beast::flat_buffer buffer_;
        std::optional<http::request_parser<http::string_body>> parser_;
        std::shared_ptr<Impl> server_;
        bool keep_alive_ = true;
        bool head_ = false;
    };

    void accept() {
        acceptor.async_accept(asio::make_strand(io), [self = shared_from_this()](beast::error_code ec,
                                                                                  tcp::socket socket) {
            if (ec) {
                if (ec != asio::error::operation_aborted && !self->stopped) {
                    self->logger.warn("admin: accept failed: " + ec.message());
                    self->accept();
                }
                return;
            }
            auto session = std::make_shared<Session>(std::move(socket), self);
            {
                std::lock_guard lock(self->mutex);
                if (self->stopped) return;
                self->sessions.insert(session);
            }
            session->start();
            self->accept();
        });
    }

    void forget(Session* session) {
        std::lock_guard lock(mutex);
        for (auto it = sessions.begin(); it != sessions.end(); ++it) {
            if (it->get() == session) {
                sessions.erase(it);
                return;
            }
        }
    }

    asio::io_context& io;
    AdminOptions options;
    AdminRoutes routes;
    Logger& logger;
    tcp::acceptor acceptor;
    std::mutex mutex;
    std::set<std::shared_ptr<Session>> sessions;
    bool stopped = false;
};

AdminServer::AdminServer(asio::io_context& io, AdminOptions options, AdminApi api, Logger& logger)
    : impl_(std::make_shared<Impl>(io, std::move(options), std::move(api), logger)) {}

AdminServer::~AdminServer() { stop(); }

Result<std::uint16_t> AdminServer::start() {
    const std::string& listen = impl_->options.listen;
    const auto authority = boost::urls::parse_authority(listen);
    if (!authority || !authority->has_port() || authority->host().empty()) {
        return fail("bad_listen", "switchboard.admin.listen '" + listen + "' is not host:port (e.g. 127.0.0.1:9090)");
    }
    std::string host = authority->host_address();
    if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
    boost::system::error_code ec;
    tcp::resolver resolver(impl_->io);
    auto endpoints = resolver.resolve(host, std::string(authority->port()), tcp::resolver::numeric_service, ec);
    if (ec || endpoints.empty()) {
        return fail("bad_listen", "switchboard.admin.listen '" + listen + "': cannot resolve '" + host +
                                      "': " + (ec ? ec.message() : std::string("no address")));
    }
    const tcp::endpoint endpoint = endpoints.begin()->endpoint();
    tcp::acceptor& acceptor = impl_->acceptor;
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) return fail("listen_failed", "admin: cannot listen on " + listen + ": " + ec.message());
    const std::uint16_t port = acceptor.local_endpoint().port();
    impl_->accept();
    return port;
}

void AdminServer::stop() {
    std::set<std::shared_ptr<Impl::Session>> sessions;
    {
        std::lock_guard lock(impl_->mutex);
        if (impl_->stopped) return;
        impl_->stopped = true;
        sessions.swap(impl_->sessions);
    }
    asio::dispatch(impl_->acceptor.get_executor(), [impl = impl_] {
        boost::system::error_code ignored;
        impl->acceptor.close(ignored);
    });
    for (const auto& session : sessions) session->close();
}

}  // namespace switchboard::admin
