// The gateway client on Boost.Beast WebSocket with C++20 coroutines. Everything runs on one strand: the run loop
// (connect, identify or resume, read), the heartbeat and the writer of each WebSocket session.
#include "discord_gateway.hpp"

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include <chrono>
#include <deque>
#include <future>
#include <mutex>
#include <random>

namespace switchboard::discord {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using Strand = asio::strand<asio::io_context::executor_type>;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
// Errors come back through redirect_error into a frame variable. (Structured bindings of co_await results are
// avoided: with GCC 12 they corrupted memory across suspension points.)
auto on_error(beast::error_code& ec) { return asio::redirect_error(asio::use_awaitable, ec); }

// A client close code other than 1000/1001: Discord keeps the session resumable.
constexpr std::uint16_t kResumableClose = 4000;

/// One WebSocket, plain or TLS, behind an interface so the session logic is compiled once.
class WsConnection {
public:
    virtual ~WsConnection() = default;
    virtual asio::awaitable<beast::error_code> connect(const Endpoint& endpoint, const std::string& target,
                                                       milliseconds timeout) = 0;
    virtual asio::awaitable<std::pair<beast::error_code, std::string>> read() = 0;
    virtual asio::awaitable<beast::error_code> write(const std::string& text) = 0;
    virtual asio::awaitable<beast::error_code> close(std::uint16_t code) = 0;
    /// Drops the TCP connection at once.
    virtual void abort() = 0;
    /// The close code the server sent (0 if none).
    [[nodiscard]] virtual int close_code() const = 0;
};

template <class Next>
class WsConnectionOf final : public WsConnection {
public:
    static constexpr bool kTls = !std::is_same_v<Next, beast::tcp_stream>;

    template <class... Args>
    explicit WsConnectionOf(Args&&... args) : ws_(std::forward<Args>(args)...) {}

    asio::awaitable<beast::error_code> connect(const Endpoint& endpoint, const std::string& target,
                                               milliseconds timeout) override {
        tcp::resolver resolver(ws_.get_executor());
        beast::error_code resolve_ec;
        const auto results = co_await resolver.async_resolve(endpoint.host, endpoint.port, on_error(resolve_ec));
        if (resolve_ec) co_return resolve_ec;
        auto& lowest = beast::get_lowest_layer(ws_);
        lowest.expires_after(timeout);
        beast::error_code connect_ec;
        co_await lowest.async_connect(results, on_error(connect_ec));
        if (connect_ec) co_return connect_ec;
        if constexpr (kTls) {
            if (!SSL_set_tlsext_host_name(ws_.next_layer().native_handle(), endpoint.host.c_str())) {
                co_return beast::error_code(static_cast<int>(::ERR_get_error()), asio::error::get_ssl_category());
            }
            ws_.next_layer().set_verify_callback(asio::ssl::host_name_verification(endpoint.host));
            lowest.expires_after(timeout);
            beast::error_code tls_ec;
            co_await ws_.next_layer().async_handshake(asio::ssl::stream_base::client, on_error(tls_ec));
            if (tls_ec) co_return tls_ec;
        }
        lowest.expires_never();
        websocket::stream_base::timeout options{};
        options.handshake_timeout = timeout;  // also bounds the closing handshake
        options.idle_timeout = websocket::stream_base::none();
        options.keep_alive_pings = false;
        ws_.set_option(options);
        ws_.set_option(websocket::stream_base::decorator([](websocket::request_type& request) {
            request.set(beast::http::field::user_agent, "DiscordBot (https://github.com/switchboard/switchboard, 0.1)");
        }));
        ws_.read_message_max(64 * 1024 * 1024);
        beast::error_code handshake_ec;
        const std::string host = endpoint.host_header();  // no temporaries inside co_await (GCC 12)
        co_await ws_.async_handshake(host, target, on_error(handshake_ec));
        if (!handshake_ec) ws_.text(true);
        co_return handshake_ec;
    }

    asio::awaitable<std::pair<beast::error_code, std::string>> read() override {
        beast::error_code ec;
        co_await ws_.async_read(buffer_, on_error(ec));
        std::string text = beast::buffers_to_string(buffer_.data());
        buffer_.consume(buffer_.size());
        co_return std::make_pair(ec, std::move(text));
    }

    asio::awaitable<beast::error_code> write(const std::string& text) override {
        beast::error_code ec;
        co_await ws_.async_write(asio::buffer(text), on_error(ec));
        co_return ec;
    }

    asio::awaitable<beast::error_code> close(std::uint16_t code) override {
        if (!ws_.is_open()) co_return beast::error_code{};
        beast::error_code ec;
        const websocket::close_reason reason(code);
        co_await ws_.async_close(reason, on_error(ec));
        co_return ec;
    }

    void abort() override {
        beast::error_code ignored;
        beast::get_lowest_layer(ws_).socket().shutdown(tcp::socket::shutdown_both, ignored);
        beast::get_lowest_layer(ws_).socket().close(ignored);
    }

    int close_code() const override { return static_cast<int>(ws_.reason().code); }

private:
    websocket::stream<Next> ws_;
    beast::flat_buffer buffer_;
};

/// One WebSocket session's state; coroutines of a session hold it, so an old session's stragglers never touch a new
/// one.
struct Session {
    std::unique_ptr<WsConnection> ws;
    std::deque<std::string> outgoing;
    bool writing = false;
    bool acked = true;
    bool hello = false;
    bool over = false;
    std::optional<std::string> zombie;  // set when the heartbeat gave up on the connection
    std::unique_ptr<asio::steady_timer> heartbeat_timer;
    std::unique_ptr<asio::steady_timer> hello_timer;
};

/// How a session ended and what comes next.
struct SessionEnd {
    enum class Next { resume, identify, fatal } next = Next::resume;
    std::string reason;
    bool established = false;     // READY or RESUMED arrived in this session
    std::int64_t delay_ms = -1;   // a delay the protocol asks for (op 9), else backoff
};

class GatewayImpl final : public Gateway, public std::enable_shared_from_this<GatewayImpl> {
public:
    GatewayImpl(asio::io_context& io, const DiscordSettings& settings, GatewayHooks hooks, Logger& logger)
        : strand_(asio::make_strand(io)), ssl_(asio::ssl::context::tls_client), settings_(settings),
          hooks_(std::move(hooks)), logger_(logger), wait_timer_(strand_), random_(std::random_device{}()) {
        ssl_.set_default_verify_paths();
        ssl_.set_verify_mode(asio::ssl::verify_peer);
    }

    void start() override {
        if (auto saved = hooks_.load_state(kSessionStateKey); saved && !saved->empty()) restore(*saved);
        auto done = std::make_shared<std::promise<void>>();
        finished_ = done->get_future();
        asio::co_spawn(strand_, run(), [self = shared_from_this(), done](std::exception_ptr error) {
            if (error) {
                try {
                    std::rethrow_exception(error);
                } catch (const std::exception& e) {
                    self->logger_.error(std::string("gateway: stopped by an unexpected error: ") + e.what());
                }
            }
            done->set_value();
        });
    }

    void stop() override {
        if (!finished_.valid()) return;
        auto acknowledged = std::make_shared<std::promise<void>>();
        auto acknowledged_future = acknowledged->get_future();
        asio::post(strand_, [self = shared_from_this(), acknowledged] {
            self->stopping_ = true;
            self->wait_timer_.cancel();
            self->save_session(true);
            if (self->session_) self->end_connection(self->session_, "stopping");
            acknowledged->set_value();
        });
        const auto limit = milliseconds(settings_.connect_timeout_ms) + std::chrono::seconds(3);
        if (acknowledged_future.wait_for(limit) != std::future_status::ready) {
            logger_.warn("gateway: stop was not acknowledged in time");
            return;
        }
        if (finished_.wait_for(limit) != std::future_status::ready) {
            logger_.warn("gateway: still busy after stop; nothing more is reported");
        }
    }

    GatewayStats stats() const override {
        std::lock_guard lock(stats_mutex_);
        return stats_;
    }

private:
    void restore(const std::string& saved) {
        const auto state = nlohmann::json::parse(saved, nullptr, false);
        if (state.is_discarded() || !state.is_object() || !state.contains("session_id") ||
            !state["session_id"].is_string() || !state.contains("resume_url") || !state["resume_url"].is_string()) {
            logger_.warn("gateway: saved session state is unreadable; identifying anew");
            return;
        }
        session_id_ = state["session_id"].get<std::string>();
        resume_url_ = state["resume_url"].get<std::string>();
        if (state.contains("seq") && state["seq"].is_number_integer()) seq_ = state["seq"].get<std::int64_t>();
        if (state.contains("user_id") && state["user_id"].is_string()) self_id_ = state["user_id"].get<std::string>();
        logger_.info("gateway: will try to resume session " + session_id_ + " saved by an earlier run");
    }

    void save_session(bool force) {
        if (!force && !seq_dirty_) return;
        if (!force && Clock::now() - last_save_ < std::chrono::seconds(1)) return;
        std::string value;
        if (!session_id_.empty()) {
            nlohmann::json state{{"session_id", session_id_}, {"resume_url", resume_url_}, {"user_id", self_id_}};
            if (seq_) state["seq"] = *seq_;
            value = state.dump();
        }
        hooks_.save_state(kSessionStateKey, std::move(value));
        last_save_ = Clock::now();
        seq_dirty_ = false;
    }

    void forget_session() {
        session_id_.clear();
        resume_url_.clear();
        seq_.reset();
        save_session(true);
    }

    void report(ConnectionEvent::Type type, std::string detail) {
        if (stopping_) return;
        hooks_.on_event(ConnectionEvent{type, std::move(detail)});
    }

    void count(std::uint64_t GatewayStats::*field) {
        std::lock_guard lock(stats_mutex_);
        ++(stats_.*field);
    }

    double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(random_); }

    asio::awaitable<void> wait(std::int64_t ms) {
        if (stopping_) co_return;
        wait_timer_.expires_after(milliseconds(std::max<std::int64_t>(0, ms)));
        beast::error_code cancelled;
        co_await wait_timer_.async_wait(on_error(cancelled));
    }

    asio::awaitable<void> run() {
        auto self = shared_from_this();
        std::uint32_t failures = 0;
        while (!stopping_) {
            const bool resume = !session_id_.empty() && !resume_url_.empty();
            std::string url;
            if (resume) {
                url = resume_url_;
            } else {
                auto bot = co_await gateway_bot();
                if (stopping_) break;
                if (!bot) {
                    if (!bot.error().retryable) {
                        logger_.error("gateway: " + bot.error().message);
                        report(ConnectionEvent::Type::finished, bot.error().message);
                        co_return;
                    }
                    const auto delay = backoff_ms(failures++, settings_.reconnect_min_ms, settings_.reconnect_max_ms,
                                                  uniform());
                    logger_.warn("gateway: " + bot.error().message + "; trying again in " + std::to_string(delay) +
                                 " ms");
                    co_await wait(delay);
                    continue;
                }
                url = bot->url;
                co_await identify_slot(*bot);
                if (stopping_) break;
            }
            SessionEnd end = co_await run_session(url, resume);
            if (stopping_) break;
            if (end.next == SessionEnd::Next::fatal) {
                up_ = false;
                logger_.error("gateway: " + end.reason);
                report(ConnectionEvent::Type::finished, end.reason);
                co_return;
            }
            if (up_) {
                up_ = false;
                report(ConnectionEvent::Type::disconnected, end.reason);
            }
            if (end.next == SessionEnd::Next::identify) {
                forget_session();
            } else {
                save_session(true);
            }
            failures = end.established ? 0 : failures + 1;
            std::int64_t delay = end.delay_ms;
            if (delay < 0) {
                delay = failures == 0 ? static_cast<std::int64_t>(uniform() * static_cast<double>(settings_.reconnect_min_ms))
                                      : backoff_ms(failures - 1, settings_.reconnect_min_ms,
                                                   settings_.reconnect_max_ms, uniform());
            }
            logger_.info("gateway: " + end.reason + "; " +
                         (end.next == SessionEnd::Next::identify ? "identifying anew" : "resuming") + " in " +
                         std::to_string(delay) + " ms");
            co_await wait(delay);
        }
    }

    // The REST call completes on another strand: its result waits in a holder and the coroutine resumes with a bare
    // signal. (Handing the Result itself through use_awaitable's completion crashed with GCC 12.)
    asio::awaitable<Result<HttpResponse>> fetch_gateway_bot() {
        auto self = shared_from_this();
        auto holder = std::make_shared<std::optional<Result<HttpResponse>>>();
        // A named initiation: GCC 12 destroys non-trivial temporaries of a co_await expression twice.
        auto initiation = [self, holder](auto handler) {
            auto shared = std::make_shared<decltype(handler)>(std::move(handler));
            self->hooks_.fetch_gateway_bot([self, shared, holder](Result<HttpResponse> response) {
                holder->emplace(std::move(response));
                asio::post(self->strand_, [shared] { (*shared)(); });
            });
        };
        co_await asio::async_initiate<decltype(asio::use_awaitable), void()>(initiation, asio::use_awaitable);
        Result<HttpResponse> response = std::move(**holder);
        co_return response;
    }

    // GET /gateway/bot once; the URL is kept for later identifies.
    asio::awaitable<Result<GatewayBot>> gateway_bot() {
        if (gateway_bot_) co_return *gateway_bot_;
        auto response = co_await fetch_gateway_bot();
        if (!response) co_return response.error();
        if (response->status < 200 || response->status >= 300) {
            const RateLimitInfo rate = parse_rate_limit(response->status, response->rate, response->body);
            Error error = response_error(response->status, response->body, rate, "GET /gateway/bot");
            if (response->status == 401) {
                error.message = "token rejected (HTTP 401 from GET /gateway/bot): check the connection's token (the "
                                "bot token from the Discord developer portal); not reconnecting";
            }
            co_return error;
        }
        auto parsed = parse_gateway_bot(response->body);
        if (!parsed) {
            logger_.warn("gateway: " + parsed.error().message);
            co_return fail_retryable(parsed.error().code, parsed.error().message);
        }
        gateway_bot_ = *parsed;
        logger_.info("gateway: URL " + parsed->url + ", max_concurrency " + std::to_string(parsed->max_concurrency) +
                     (parsed->identify_remaining
                          ? ", " + std::to_string(*parsed->identify_remaining) + " identifies left today"
                          : std::string()));
        co_return *parsed;
    }

    // At most max_concurrency identifies per 5 s; none while Discord says the day's budget is spent.
    asio::awaitable<void> identify_slot(const GatewayBot& bot) {
        if (bot.identify_remaining && *bot.identify_remaining <= static_cast<std::int64_t>(identifies_since_fetch_)) {
            logger_.error("gateway: the daily identify budget is spent; waiting " +
                          std::to_string(bot.identify_reset_after_ms) + " ms for it to reset");
            co_await wait(bot.identify_reset_after_ms);
            gateway_bot_.reset();
            identifies_since_fetch_ = 0;
            if (stopping_) co_return;
        }
        const auto window = std::chrono::seconds(5);
        for (;;) {
            const auto now = Clock::now();
            while (!identify_times_.empty() && now - identify_times_.front() >= window) identify_times_.pop_front();
            if (identify_times_.size() < bot.max_concurrency) break;
            const auto ready = identify_times_.front() + window;
            co_await wait(std::chrono::duration_cast<milliseconds>(ready - now).count() + 1);
            if (stopping_) co_return;
        }
        identify_times_.push_back(Clock::now());
        ++identifies_since_fetch_;
    }

    void send(const std::shared_ptr<Session>& session, std::string text) {
        if (session->over) return;
        session->outgoing.push_back(std::move(text));
        if (session->writing) return;
        session->writing = true;
        asio::co_spawn(strand_, write_all(session), asio::detached);
    }

    asio::awaitable<void> write_all(std::shared_ptr<Session> session) {
        auto self = shared_from_this();
        while (!session->outgoing.empty() && !session->over) {
            const std::string text = std::move(session->outgoing.front());
            session->outgoing.pop_front();
            const auto ec = co_await session->ws->write(text);
            if (ec) {
                logger_.debug("gateway: write failed: " + ec.message());
                break;
            }
        }
        session->writing = false;
    }

    // Closes the WebSocket with a resumable code; drops the TCP connection if the server does not answer the
    // close in time.
    void end_connection(const std::shared_ptr<Session>& session, const std::string& why) {
        if (session->over) return;
        session->over = true;
        if (session->heartbeat_timer) session->heartbeat_timer->cancel();
        if (session->hello_timer) session->hello_timer->cancel();
        logger_.debug("gateway: closing the connection (" + why + ")");
        auto self = shared_from_this();
        asio::co_spawn(
            strand_,
            [self, session]() -> asio::awaitable<void> {
                asio::steady_timer guard(self->strand_);
                guard.expires_after(std::chrono::seconds(2));
                guard.async_wait([session](beast::error_code ec) {
                    if (!ec) session->ws->abort();
                });
                co_await session->ws->close(kResumableClose);
                guard.cancel();
                session->ws->abort();
            },
            asio::detached);
    }

    asio::awaitable<void> heartbeat(std::shared_ptr<Session> session, std::int64_t interval_ms) {
        auto self = shared_from_this();
        auto& timer = *session->heartbeat_timer;
        timer.expires_after(milliseconds(static_cast<std::int64_t>(static_cast<double>(interval_ms) * uniform())));
        for (;;) {
            beast::error_code ec;
            co_await timer.async_wait(on_error(ec));
            if (ec || session->over || stopping_) co_return;
            if (!session->acked) {
                count(&GatewayStats::zombies);
                session->zombie = "no heartbeat ACK since the previous heartbeat (zombie connection)";
                logger_.warn("gateway: " + *session->zombie + "; reconnecting to resume");
                end_connection(session, "zombie");
                co_return;
            }
            session->acked = false;
            send(session, heartbeat_payload(seq_));
            save_session(false);
            timer.expires_after(milliseconds(interval_ms));
        }
    }

    asio::awaitable<SessionEnd> run_session(const std::string& url, bool resume) {
        auto self = shared_from_this();
        SessionEnd end;
        auto endpoint = parse_endpoint(url);
        if (!endpoint) {
            end.next = SessionEnd::Next::identify;
            end.reason = "gateway URL unusable: " + endpoint.error().message;
            gateway_bot_.reset();
            co_return end;
        }
        const std::string target = (endpoint->path.empty() ? "/" : endpoint->path) + "?v=10&encoding=json";
        auto session = std::make_shared<Session>();
        if (endpoint->tls) {
            session->ws = std::make_unique<WsConnectionOf<beast::ssl_stream<beast::tcp_stream>>>(strand_, ssl_);
        } else {
            session->ws = std::make_unique<WsConnectionOf<beast::tcp_stream>>(strand_);
        }
        session->heartbeat_timer = std::make_unique<asio::steady_timer>(strand_);
        session->hello_timer = std::make_unique<asio::steady_timer>(strand_);
        session_ = session;
        count(&GatewayStats::connections);
        const auto failed_next = resume ? SessionEnd::Next::resume : SessionEnd::Next::identify;

        const milliseconds connect_timeout(settings_.connect_timeout_ms);
        const auto connect_ec = co_await session->ws->connect(*endpoint, target, connect_timeout);
        if (connect_ec || stopping_) {
            end.next = failed_next;
            end.reason = "cannot connect to the gateway " + url + ": " + connect_ec.message();
            session->over = true;
            session_.reset();
            co_return end;
        }
        // No Hello in time: drop the connection.
        session->hello_timer->expires_after(milliseconds(settings_.connect_timeout_ms));
        session->hello_timer->async_wait([this, self, session](beast::error_code ec) {
            if (ec || session->hello || session->over) return;
            session->zombie = "no Hello from the gateway in time";
            end_connection(session, "no hello");
        });

        bool decided = false;
        for (;;) {
            std::pair<beast::error_code, std::string> received = co_await session->ws->read();
            const beast::error_code ec = received.first;
            const std::string text = std::move(received.second);
            if (ec) {
                if (!decided) {
                    if (session->zombie) {
                        end.next = session_id_.empty() ? SessionEnd::Next::identify : SessionEnd::Next::resume;
                        end.reason = *session->zombie;
                    } else if (stopping_) {
                        end.reason = "stopping";
                    } else {
                        const int code = ec == websocket::error::closed ? session->ws->close_code() : 0;
                        const CloseClass closed = classify_close(code);
                        end.reason = code == 0 ? "connection lost (" + ec.message() + ")" : "gateway closed: " + closed.reason;
                        end.next = closed.action == CloseAction::fatal      ? SessionEnd::Next::fatal
                                   : closed.action == CloseAction::identify ? SessionEnd::Next::identify
                                   : session_id_.empty()                   ? SessionEnd::Next::identify
                                                                            : SessionEnd::Next::resume;
                    }
                }
                break;
            }
            if (decided) continue;  // draining until the close completes
            auto frame = parse_frame(text);
            if (!frame) {
                count(&GatewayStats::skipped_payloads);
                logger_.warn("gateway: skipped a payload: " + frame.error().message);
                continue;
            }
            switch (static_cast<Op>(frame->op)) {
                case Op::hello: {
                    if (session->hello) break;
                    auto interval = parse_hello(frame->d);
                    if (!interval) {
                        count(&GatewayStats::skipped_payloads);
                        logger_.warn("gateway: skipped a payload: " + interval.error().message);
                        break;
                    }
                    session->hello = true;
                    session->hello_timer->cancel();
                    asio::co_spawn(strand_, heartbeat(session, *interval), asio::detached);
                    if (resume) {
                        count(&GatewayStats::resumes);
                        logger_.info("gateway: resuming session " + session_id_ +
                                     (seq_ ? " at sequence " + std::to_string(*seq_) : std::string()));
                        send(session, resume_payload(settings_.token, session_id_, seq_));
                    } else {
                        count(&GatewayStats::identifies);
                        logger_.info("gateway: identifying");
                        send(session, identify_payload(settings_.token, settings_.intents));
                    }
                    break;
                }
                case Op::heartbeat_ack: session->acked = true; break;
                case Op::heartbeat: send(session, heartbeat_payload(seq_)); break;
                case Op::reconnect:
                    decided = true;
                    end.next = session_id_.empty() ? SessionEnd::Next::identify : SessionEnd::Next::resume;
                    end.reason = "the gateway asked to reconnect (op 7)";
                    end_connection(session, "op 7");
                    break;
                case Op::invalid_session: {
                    decided = true;
                    const bool resumable = frame->d.is_boolean() && frame->d.get<bool>() && !session_id_.empty();
                    end.next = resumable ? SessionEnd::Next::resume : SessionEnd::Next::identify;
                    end.reason = std::string("invalid session (op 9, ") + (resumable ? "resumable)" : "not resumable)");
                    if (!resumable) {
                        end.delay_ms = 1000 + static_cast<std::int64_t>(uniform() * 4000.0);
                    }
                    end_connection(session, "op 9");
                    break;
                }
                case Op::dispatch:
                    if (frame->s) {
                        seq_ = frame->s;
                        seq_dirty_ = true;
                    }
                    dispatch(session, *frame, end);
                    break;
                default:
                    logger_.debug("gateway: ignored op " + std::to_string(frame->op));
                    break;
            }
        }
        session->over = true;
        session->heartbeat_timer->cancel();
        session->hello_timer->cancel();
        if (session_ == session) session_.reset();
        co_return end;
    }

    void dispatch(const std::shared_ptr<Session>& session, const GatewayFrame& frame, SessionEnd& end) {
        // A resumed session replays what was missed and only then sends RESUMED; a refused Resume gets op 9 and no
        // dispatch at all. So the first replayed dispatch already means "resumed", and the host hears it before the
        // replayed messages: otherwise it would handle them while it still counts the connection as down, and their
        // replies would find nobody reachable.
        if (!end.established && frame.t != "READY") resumed(end);
        if (frame.t == "MESSAGE_CREATE") {
            auto message = parse_message(frame.d, self_id_);
            if (!message) {
                count(&GatewayStats::skipped_payloads);
                logger_.warn("gateway: skipped a payload (sequence " + std::to_string(frame.s.value_or(-1)) +
                             "): " + message.error().message);
                return;
            }
            if (*message && !stopping_) hooks_.on_message(std::move(**message));
            save_session(false);
            return;
        }
        if (frame.t == "READY") {
            auto ready = parse_ready(frame.d);
            if (!ready) {
                count(&GatewayStats::skipped_payloads);
                logger_.warn("gateway: " + ready.error().message + "; reconnecting");
                end_connection(session, "bad READY");
                return;
            }
            session_id_ = ready->session_id;
            resume_url_ = ready->resume_gateway_url;
            self_id_ = ready->user_id;
            end.established = true;
            up_ = true;
            save_session(true);
            if (!stopping_) hooks_.on_ready(*ready);
            report(ConnectionEvent::Type::connected,
                   "new session " + ready->session_id + " as " + ready->user_name + " (" + ready->user_id + ")");
            return;
        }
        if (frame.t == "RESUMED") {
            save_session(true);  // resumed() ran above, for this dispatch or the first replayed one
            return;
        }
        save_session(false);
    }

    // The session was resumed: reported once per session.
    void resumed(SessionEnd& end) {
        end.established = true;
        up_ = true;
        if (!stopping_ && !self_id_.empty()) hooks_.on_ready(ReadyInfo{session_id_, resume_url_, self_id_, {}});
        report(ConnectionEvent::Type::resumed, "resumed session " + session_id_);
    }

    Strand strand_;
    asio::ssl::context ssl_;
    DiscordSettings settings_;
    GatewayHooks hooks_;
    Logger& logger_;
    asio::steady_timer wait_timer_;
    std::mt19937_64 random_;
    std::future<void> finished_;

    // Everything below lives on the strand.
    bool stopping_ = false;
    bool up_ = false;
    std::string session_id_;
    std::string resume_url_;
    std::string self_id_;
    std::optional<std::int64_t> seq_;
    bool seq_dirty_ = false;
    Clock::time_point last_save_{};
    std::optional<GatewayBot> gateway_bot_;
    std::deque<Clock::time_point> identify_times_;
    std::uint64_t identifies_since_fetch_ = 0;
    std::shared_ptr<Session> session_;

    mutable std::mutex stats_mutex_;
    GatewayStats stats_;
};

}  // namespace

std::shared_ptr<Gateway> make_gateway(boost::asio::io_context& io, const DiscordSettings& settings, GatewayHooks hooks,
                                      Logger& logger) {
    return std::make_shared<GatewayImpl>(io, settings, std::move(hooks), logger);
}

}  // namespace switchboard::discord
