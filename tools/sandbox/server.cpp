// The only translation unit of the sandbox that includes Beast and Asio: an HTTP/1.1 server whose connections may
// upgrade to WebSocket, in the style of Beast's own examples (a session class per connection, one on_<step> per
// step). One I/O thread runs everything, so the platforms behind Service need no locks.

#include "server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cctype>
#include <deque>
#include <iostream>
#include <stdexcept>

namespace switchboard::sandbox {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

std::optional<std::string> HttpRequest::query_param(std::string_view name) const {
    for (const auto& [key, value] : query)
        if (key == name) return value;
    return std::nullopt;
}

std::string HttpRequest::header(std::string_view name) const {
    for (const auto& [key, value] : headers)
        if (key == name) return value;
    return {};
}

HttpResponse HttpResponse::json(int status, const nlohmann::json& body) {
    HttpResponse response;
    response.status = status;
    response.headers.emplace_back("Content-Type", "application/json");
    response.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);  // never throws on bad UTF-8
    return response;
}

HttpResponse HttpResponse::empty(int status) {
    HttpResponse response;
    response.status = status;
    return response;
}

HttpResponse HttpResponse::dropped() {
    HttpResponse response;
    response.status = 0;
    response.drop = true;
    return response;
}

std::int64_t unix_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::string percent_decode(std::string_view text, bool plus_is_space) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '%' && i + 2 < text.size()) {
            const int high = hex_value(text[i + 1]);
            const int low = hex_value(text[i + 2]);
            if (high >= 0 && low >= 0) {
                out.push_back(static_cast<char>(high * 16 + low));
                i += 2;
                continue;
            }
        }
        out.push_back(plus_is_space && c == '+' ? ' ' : c);
    }
    return out;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> parse_form(std::string_view text) {
    std::vector<std::pair<std::string, std::string>> out;
    while (!text.empty()) {
        const auto amp = text.find('&');
        const std::string_view pair = text.substr(0, amp);
        if (!pair.empty()) {
            const auto eq = pair.find('=');
            out.emplace_back(percent_decode(pair.substr(0, eq), true),
                             eq == std::string_view::npos ? "" : percent_decode(pair.substr(eq + 1), true));
        }
        if (amp == std::string_view::npos) break;
        text.remove_prefix(amp + 1);
    }
    return out;
}

namespace {

HttpRequest to_request(const http::request<http::string_body>& message) {
    HttpRequest request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    const std::string_view target = message.target();
    const auto question = target.find('?');
    request.path = percent_decode(target.substr(0, question), false);
    if (question != std::string_view::npos) request.query = parse_form(target.substr(question + 1));
    for (const auto& field : message) {
        std::string name(field.name_string());
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        request.headers.emplace_back(std::move(name), std::string(field.value()));
    }
    request.body = message.body();
    return request;
}

class AsioTimer : public Timer {
public:
    explicit AsioTimer(asio::io_context& io) : timer_(io) {}
    void cancel() override {
        cancelled_ = true;
        timer_.cancel();
    }
    asio::steady_timer timer_;
    bool cancelled_ = false;
};

class AsioLoop : public Loop {
public:
    explicit AsioLoop(asio::io_context& io) : io_(io) {}
    TimerPtr after(std::chrono::milliseconds delay, std::function<void()> task) override {
        auto timer = std::make_shared<AsioTimer>(io_);
        timer->timer_.expires_after(delay);
        timer->timer_.async_wait([timer, task = std::move(task)](beast::error_code ec) {
            if (ec || timer->cancelled_) return;
            try {
                task();
            } catch (const std::exception& error) {
                std::cerr << "switchboard-sandbox: error in a timer: " << error.what() << "\n";
            }
        });
        return timer;
    }

private:
    asio::io_context& io_;
};

class WebSocketSession : public WebSocket, public std::enable_shared_from_this<WebSocketSession> {
public:
    WebSocketSession(tcp::socket&& socket, Service& service, HttpRequest request)
        : ws_(std::move(socket)), service_(service), request_(std::move(request)) {
        beast::error_code ec;
        const auto endpoint = ws_.next_layer().remote_endpoint(ec);
        if (!ec) peer_ = endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
    }

    void start(const http::request<http::string_body>& upgrade) {
        websocket::stream_base::timeout timeouts{};
        timeouts.handshake_timeout = std::chrono::seconds(10);   // also bounds the closing handshake
        timeouts.idle_timeout = websocket::stream_base::none();  // a zombie socket must stay open
        timeouts.keep_alive_pings = false;
        ws_.set_option(timeouts);
        ws_.set_option(websocket::stream_base::decorator(
            [](websocket::response_type& response) { response.set(http::field::server, "switchboard-sandbox"); }));
        ws_.read_message_max(16u << 20);  // platforms judge sizes themselves (Discord closes with 4002)
        ws_.async_accept(upgrade, beast::bind_front_handler(&WebSocketSession::on_accept, shared_from_this()));
    }

    void send(std::string text) override {
        if (finished_ || close_queued_) return;
        queue_.push_back(Outgoing{std::move(text), std::nullopt});
        if (!writing_) do_write();
    }

    void close(std::uint16_t code, std::string reason) override {
        if (finished_ || close_queued_) return;
        close_queued_ = true;
        queue_.push_back(Outgoing{{}, websocket::close_reason(static_cast<websocket::close_code>(code), reason)});
        if (!writing_) do_write();
    }

    void drop() override {
        if (finished_) return;
        queue_.clear();
        beast::error_code ignored;
        auto& socket = ws_.next_layer();
        socket.shutdown(tcp::socket::shutdown_both, ignored);
        socket.close(ignored);
    }

    std::string peer() const override { return peer_; }

private:
    struct Outgoing {
        std::string text;
        std::optional<websocket::close_reason> close;
    };

    void on_accept(beast::error_code ec) {
        if (ec) return;
        handler_ = service_.open(request_, shared_from_this());
        if (!handler_) close(websocket::close_code::policy_error, "no such endpoint");
        do_read();
    }

    void do_read() {
        if (finished_) return;
        ws_.async_read(buffer_, beast::bind_front_handler(&WebSocketSession::on_read, shared_from_this()));
    }

    void on_read(beast::error_code ec, std::size_t) {
        if (ec) return finish(ec);
        std::string data = beast::buffers_to_string(buffer_.data());
        buffer_.consume(buffer_.size());
        try {
            if (handler_) handler_->on_message(data);
        } catch (const std::exception& error) {  // a platform bug must not take the server down
            std::cerr << "switchboard-sandbox: error on a WebSocket message: " << error.what() << "\n";
            close(websocket::close_code::internal_error, "sandbox error");
        }
        do_read();
    }

    void do_write() {
        if (queue_.empty() || finished_) {
            writing_ = false;
            return;
        }
        writing_ = true;
        auto& next = queue_.front();
        if (next.close) {
            ws_.async_close(*next.close,
                            beast::bind_front_handler(&WebSocketSession::on_close_sent, shared_from_this()));
            return;
        }
        ws_.text(true);
        ws_.async_write(asio::buffer(next.text),
                        beast::bind_front_handler(&WebSocketSession::on_write, shared_from_this()));
    }

    void on_write(beast::error_code ec, std::size_t) {
        if (!queue_.empty()) queue_.pop_front();
        if (ec) {
            queue_.clear();
            writing_ = false;
            return;  // the read side reports the end
        }
        do_write();
    }

    void on_close_sent(beast::error_code) {
        queue_.clear();
        writing_ = false;
    }

    void finish(beast::error_code ec) {
        if (finished_) return;
        finished_ = true;
        queue_.clear();
        WebSocketClosed how;
        if (ec == websocket::error::closed) {
            how.code = static_cast<std::uint16_t>(ws_.reason().code);
            how.reason = std::string(ws_.reason().reason.c_str());
        }
        beast::error_code ignored;
        ws_.next_layer().close(ignored);
        if (auto handler = std::move(handler_)) {
            try {
                handler->on_closed(how);
            } catch (const std::exception& error) {
                std::cerr << "switchboard-sandbox: error on a WebSocket close: " << error.what() << "\n";
            }
        }
    }

    websocket::stream<tcp::socket> ws_;  // its own timer bounds the handshakes: no tcp_stream
    beast::flat_buffer buffer_;
    Service& service_;
    HttpRequest request_;
    std::shared_ptr<WebSocketHandler> handler_;
    std::deque<Outgoing> queue_;
    std::string peer_;
    bool writing_ = false;
    bool close_queued_ = false;
    bool finished_ = false;
};

class HttpSession : public std::enable_shared_from_this<HttpSession> {
public:
    HttpSession(tcp::socket&& socket, Service& service) : stream_(std::move(socket)), service_(service) {}

    void run() { do_read(); }

private:
    void do_read() {
        parser_.emplace();
        parser_->body_limit(32u << 20);  // Discord takes up to 25 MiB
        stream_.expires_after(std::chrono::minutes(5));
        http::async_read(stream_, buffer_, *parser_,
                         beast::bind_front_handler(&HttpSession::on_read, shared_from_this()));
    }

    void on_read(beast::error_code ec, std::size_t) {
        if (ec == http::error::end_of_stream) {
            stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
            return;
        }
        if (ec) return;
        auto message = parser_->release();
        stream_.expires_never();
        if (websocket::is_upgrade(message)) {
            auto request = to_request(message);
            std::make_shared<WebSocketSession>(stream_.release_socket(), service_, std::move(request))->start(message);
            return;
        }
        keep_alive_ = message.keep_alive();
        version_ = message.version();
        const std::uint64_t generation = ++generation_;
        gone_callbacks_.clear();
        auto answered = std::make_shared<bool>(false);
        Respond respond = [self = shared_from_this(), answered](HttpResponse response) {
            if (*answered) return;
            *answered = true;
            self->gone_callbacks_.clear();
            self->write(std::move(response));
        };
        auto request = to_request(message);
        request.on_client_gone = [weak = weak_from_this(), answered](std::function<void()> callback) {
            if (auto self = weak.lock(); self && !*answered) self->gone_callbacks_.push_back(std::move(callback));
        };
        try {
            service_.handle(request, respond);
        } catch (const std::exception& error) {  // a platform bug must not take the server down
            std::cerr << "switchboard-sandbox: error on " << message.method_string() << " " << message.target() << ": "
                      << error.what() << "\n";
            respond(HttpResponse::json(
                500, {{"message", std::string("switchboard-sandbox error: ") + error.what()}, {"code", 0}}));
        }
        if (!*answered && !gone_callbacks_.empty()) watch_for_close(generation);
    }

    /// While a request waits for its answer (a long poll), the socket is not read; this notices the client closing.
    void watch_for_close(std::uint64_t generation) {
        stream_.socket().async_wait(
            tcp::socket::wait_read, [self = shared_from_this(), generation](beast::error_code ec) {
                if (generation != self->generation_ || self->gone_callbacks_.empty()) return;  // answered meanwhile
                char byte = 0;
                beast::error_code peek_ec;
                std::size_t got = 0;
                if (!ec) {
                    auto& socket = self->stream_.socket();
                    socket.non_blocking(true, peek_ec);  // never block the loop on a spurious wakeup
                    if (!peek_ec) got = socket.receive(asio::buffer(&byte, 1), tcp::socket::message_peek, peek_ec);
                    if (peek_ec == asio::error::would_block) return self->watch_for_close(generation);
                }
                if (!ec && !peek_ec && got > 0) return;  // the client sent more (pipelining): it is still there
                auto callbacks = std::move(self->gone_callbacks_);
                self->gone_callbacks_.clear();
                beast::error_code ignored;
                self->stream_.socket().close(ignored);
                for (auto& callback : callbacks) {
                    try {
                        callback();
                    } catch (const std::exception& error) {
                        std::cerr << "switchboard-sandbox: error after a client went away: " << error.what() << "\n";
                    }
                }
            });
    }

    void write(HttpResponse response) {
        if (response.drop) {
            beast::error_code ignored;
            stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
            stream_.socket().close(ignored);
            return;
        }
        auto message = std::make_shared<http::response<http::string_body>>();
        message->version(version_);
        message->result(static_cast<unsigned>(response.status));
        message->set(http::field::server, "switchboard-sandbox");
        bool has_type = false;
        for (auto& [name, value] : response.headers) {
            message->insert(name, value);
            if (beast::iequals(name, "content-type")) has_type = true;
        }
        if (!response.body.empty() && !has_type) message->set(http::field::content_type, "application/json");
        message->keep_alive(keep_alive_);
        message->body() = std::move(response.body);
        message->prepare_payload();
        response_ = message;
        stream_.expires_after(std::chrono::seconds(30));
        http::async_write(stream_, *message, beast::bind_front_handler(&HttpSession::on_write, shared_from_this()));
    }

    void on_write(beast::error_code ec, std::size_t) {
        response_.reset();
        if (ec) return;
        if (!keep_alive_) {
            stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
            return;
        }
        do_read();
    }

    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;
    Service& service_;
    std::optional<http::request_parser<http::string_body>> parser_;
    std::shared_ptr<http::response<http::string_body>> response_;
    std::vector<std::function<void()>> gone_callbacks_;  // of the request being answered
    std::uint64_t generation_ = 0;                       // which request of the connection that is
    unsigned version_ = 11;
    bool keep_alive_ = true;
};

}  // namespace

struct Server::Impl {
    asio::io_context io{1};
    tcp::acceptor acceptor{io};
    AsioLoop loop{io};
    asio::signal_set signals{io, SIGINT, SIGTERM};
    Service* service = nullptr;

    void do_accept() {
        acceptor.async_accept(io, [this](beast::error_code ec, tcp::socket socket) {
            if (!ec) {
                beast::error_code ignored;
                socket.set_option(tcp::no_delay(true), ignored);
                std::make_shared<HttpSession>(std::move(socket), *service)->run();
            }
            if (acceptor.is_open()) do_accept();
        });
    }
};

Server::Server(const std::string& address, std::uint16_t port) : impl_(std::make_unique<Impl>()) {
    beast::error_code ec;
    const auto ip = asio::ip::make_address(address, ec);
    if (ec) throw std::runtime_error("switchboard-sandbox: '" + address + "' is not an IP address");
    const tcp::endpoint endpoint(ip, port);
    auto& acceptor = impl_->acceptor;
    acceptor.open(endpoint.protocol(), ec);
    if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) acceptor.bind(endpoint, ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        throw std::runtime_error("switchboard-sandbox: cannot listen on " + address + ":" + std::to_string(port) +
                                 ": " + ec.message() + " (pick another --port, or 0 for a free one)");
}

Server::~Server() = default;

std::uint16_t Server::port() const { return impl_->acceptor.local_endpoint().port(); }

Loop& Server::loop() { return impl_->loop; }

void Server::run(Service& service) {
    impl_->service = &service;
    impl_->signals.async_wait([this](beast::error_code, int) { impl_->io.stop(); });
    impl_->do_accept();
    impl_->io.run();
}

void Server::stop() { impl_->io.stop(); }

}  // namespace switchboard::sandbox
