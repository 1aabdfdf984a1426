#include "irc_connector.hpp"

#include "irc_protocol.hpp"

#include <switchboard/rate_limit.hpp>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <functional>
#include <cstdio>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>

namespace switchboard::irc {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

namespace {

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string json_string(std::string_view text) {
    std::string out = "\"";
    for (char c : text) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char buffer[8];
                    std::snprintf(buffer, sizeof buffer, "\\u%04x", static_cast<unsigned>(c));
                    out += buffer;
                } else {
                    out.push_back(c);
                }
        }
    }
    return out + "\"";
}

// A line for the log: printable, short.
std::string excerpt(std::string_view line) {
    std::string out;
    for (char c : line.substr(0, 120)) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) {
            char buffer[8];
            std::snprintf(buffer, sizeof buffer, "\\x%02x", u);
            out += buffer;
        } else {
            out.push_back(c);
        }
    }
    if (line.size() > 120) out += "... (" + std::to_string(line.size()) + " bytes)";
    return out;
}

constexpr std::string_view kBarrierToken = "switchboard-joined";
constexpr std::string_view kLagToken = "switchboard-lag";
// The source the server will show for us until we have seen it: nick!~user@ plus the longest host (63).
constexpr std::size_t kUnknownHostLength = 63;

}  // namespace

ChannelJoin parse_channel_join(const std::string& text) {
    ChannelJoin join;
    const auto space = text.find(' ');
    join.name = text.substr(0, space);
    if (space != std::string::npos) {
        const auto start = text.find_first_not_of(' ', space);
        if (start != std::string::npos) join.key = text.substr(start);
    }
    return join;
}

/// The client: every member below runs on strand_ (public entry points post there).
class IrcClient : public std::enable_shared_from_this<IrcClient> {
public:
    IrcClient(IrcSettings settings, Logger& logger, asio::io_context& io, std::string connection)
        : settings_(std::move(settings)), logger_(logger), connection_(std::move(connection)),
          strand_(asio::make_strand(io)), resolver_(strand_), deadline_(strand_), ping_timer_(strand_),
          reconnect_timer_(strand_), recovery_timer_(strand_), random_(std::random_device{}()) {
        for (const ChannelJoin& join : settings_.channels) {
            ChannelState state;
            state.name = join.name;
            state.key = join.key;
            channels_.emplace(irc_lower(join.name), std::move(state));
        }
    }

    void start(ConnectorHost& host) {
        host_ = &host;
        host.rate_limits().define("global", settings_.flood_rate, std::max<std::uint32_t>(1, settings_.flood_burst));
        asio::post(strand_, [self = shared_from_this()] { self->connect(); });
    }

    void stop() {
        auto closed = std::make_shared<std::promise<void>>();  // outlives a wait that gave up
        auto done = closed->get_future();
        {
            // Whatever was posted before this is queued ahead of the teardown and runs (and answers) first;
            // nothing is posted after it.
            std::lock_guard lock(post_mutex_);
            if (stopped_) return;
            stopped_ = true;
            asio::post(strand_, [self = shared_from_this(), closed] {
                self->teardown("stopping", false);
                self->reconnect_timer_.cancel();
                closed->set_value();
            });
        }
        done.wait_for(std::chrono::seconds(10));
    }

    void send(const OutboundMessage& message, SendCallback done) {
        std::unique_lock lock(post_mutex_);
        if (stopped_) {
            lock.unlock();
            return done(stopping_error());
        }
        asio::post(strand_, [self = shared_from_this(), message, done = std::move(done)]() mutable {
            self->do_send(message, std::move(done));
        });
    }

    void fetch_history(const HistoryRequest& request, HistoryCallback done) {
        std::unique_lock lock(post_mutex_);
        if (stopped_) {
            lock.unlock();
            return done(stopping_error());
        }
        asio::post(strand_, [self = shared_from_this(), request, done = std::move(done)]() mutable {
            self->do_fetch_history(request, std::move(done));
        });
    }

private:
    enum class State { idle, connecting, registering, joining, ready };

    struct ChannelState {
        std::string name;  // as configured
        std::string key;
        bool joined = false;
        bool history_mode = false;  // the channel has chanhistory's +H: a JOIN replays (maybe nothing)
        bool holding = false;       // live lines wait in `held` until the recovery policy has had the replay
        std::vector<Message> held;
        std::optional<std::vector<Message>> replay;  // what the server replayed on this JOIN
    };

    struct Batch {
        std::string type;
        std::string target;
        std::vector<Message> messages;
    };

    struct PendingWrite {
        std::string line;
        std::function<void(bool)> written;  // called with false when the connection dropped first
    };

    struct HistoryQuery {
        std::string channel;  // lower-cased
        std::uint32_t limit = 0;
        HistoryCallback done;
        std::unique_ptr<asio::steady_timer> timeout;
    };

    static Error stopping_error() {
        return Error{"cancelled", "the IRC connector is stopping; the send stays pending for the next start", true,
                     1000};
    }

    // ---- connecting -------------------------------------------------------------------------------------------

    void connect() {
        if (stopped_) return;
        ++generation_;
        state_ = State::connecting;
        read_buffer_.clear();
        logger_.info("connecting to " + settings_.host + ":" + std::to_string(settings_.port) +
                         (settings_.tls ? " (TLS)" : ""),
                     LogFields{connection_, {}, {}});
        arm_deadline(settings_.connect_timeout, "connect timed out");
        resolver_.async_resolve(settings_.host, std::to_string(settings_.port),
                                [self = shared_from_this(), g = generation_](error_code ec,
                                                                              tcp::resolver::results_type results) {
                                    self->on_resolve(g, ec, std::move(results));
                                });
    }

    void on_resolve(std::uint64_t g, error_code ec, tcp::resolver::results_type results) {
        if (g != generation_ || stopped_) return;
        if (ec) return fail_io("resolve " + settings_.host, ec);
        if (settings_.tls) {
            tls_context_ = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
            if (settings_.tls_verify) {
                error_code loaded;
                if (settings_.tls_ca_file.empty()) {
                    tls_context_->set_default_verify_paths(loaded);
                } else {
                    tls_context_->load_verify_file(settings_.tls_ca_file, loaded);
                }
                if (loaded) return fail_io("load the certificates to trust (" + settings_.tls_ca_file + ")", loaded);
                tls_context_->set_verify_mode(asio::ssl::verify_peer);
            } else {
                tls_context_->set_verify_mode(asio::ssl::verify_none);
            }
            tls_ = std::make_unique<asio::ssl::stream<tcp::socket>>(strand_, *tls_context_);
            if (settings_.tls_verify) tls_->set_verify_callback(asio::ssl::host_name_verification(settings_.host));
            error_code not_an_address;
            asio::ip::make_address(settings_.host, not_an_address);
            if (not_an_address) SSL_set_tlsext_host_name(tls_->native_handle(), settings_.host.c_str());  // SNI: names only
        } else {
            socket_ = std::make_unique<tcp::socket>(strand_);
        }
        asio::async_connect(lowest(), results,
                            [self = shared_from_this(), g](error_code ec, const tcp::endpoint&) {
                                self->on_connect(g, ec);
                            });
    }

    void on_connect(std::uint64_t g, error_code ec) {
        if (g != generation_ || stopped_) return;
        if (ec) return fail_io("connect", ec);
        error_code ignored;
        lowest().set_option(tcp::no_delay(true), ignored);  // a line goes out when granted, not after the last ACK
        if (tls_) {
            tls_->async_handshake(asio::ssl::stream_base::client, [self = shared_from_this(), g](error_code ec) {
                self->on_handshake(g, ec);
            });
            return;
        }
        on_handshake(g, {});
    }

    void on_handshake(std::uint64_t g, error_code ec) {
        if (g != generation_ || stopped_) return;
        if (ec) return fail_io("TLS handshake", ec);
        state_ = State::registering;
        arm_deadline(settings_.register_timeout, "registration timed out");
        caps_offered_.clear();
        caps_enabled_.clear();
        isupport_.clear();
        nick_attempt_ = 0;
        nick_ = settings_.nick;
        own_source_.clear();
        batches_.clear();
        if (!settings_.password.empty()) write_line("PASS " + settings_.password, "PASS (hidden)");
        write_line("CAP LS 302");
        write_line("NICK " + nick_);
        write_line("USER " + settings_.username + " 0 * :" + settings_.realname);
        read();
    }

    // ---- reading ----------------------------------------------------------------------------------------------

    // What the server sent is acknowledged at once, not after the kernel's delayed-ACK time (up to 40 ms on
    // Linux): a server that writes with Nagle's algorithm on (InspIRCd does) holds its next line to us until our
    // ACK of the previous one, so a channel busier than one line per 40 ms reached the bot some 20 ms late on
    // average (irc_relay_bench at 100 lines/s: p50 24 ms before, 0.5 ms after). Linux re-arms delayed ACKs after
    // each receive, so this is asked again every time.
    void acknowledge_at_once() {
#ifdef TCP_QUICKACK
        const int on = 1;
        ::setsockopt(lowest().native_handle(), IPPROTO_TCP, TCP_QUICKACK, &on, sizeof on);
#endif
    }

    void read() {
        auto handler = [self = shared_from_this(), g = generation_](error_code ec, std::size_t n) {
            self->on_read(g, ec, n);
        };
        if (tls_) {
            tls_->async_read_some(asio::buffer(chunk_), std::move(handler));
        } else {
            socket_->async_read_some(asio::buffer(chunk_), std::move(handler));
        }
    }

    void on_read(std::uint64_t g, error_code ec, std::size_t n) {
        if (g != generation_ || stopped_) return;
        if (ec) return fail_io("read", ec);
        acknowledge_at_once();
        read_buffer_.append(chunk_.data(), n);
        std::size_t start = 0;
        for (;;) {
            const auto newline = read_buffer_.find('\n', start);
            if (newline == std::string::npos) break;
            std::string_view line(read_buffer_.data() + start, newline - start);
            start = newline + 1;
            if (discarding_) {  // the tail of an overlong line
                discarding_ = false;
                continue;
            }
            handle_raw(line);
            if (g != generation_ || stopped_) return;  // the line ended the session
        }
        read_buffer_.erase(0, start);
        if (read_buffer_.size() > kMaxInboundLine) {
            logger_.warn("skipped an overlong line from the server (" + std::to_string(read_buffer_.size()) +
                             "+ bytes without an end of line): " + excerpt(read_buffer_),
                         LogFields{connection_, {}, {}});
            read_buffer_.clear();
            discarding_ = true;
        }
        read();
    }

    void handle_raw(std::string_view raw) {
        if (!raw.empty() && raw.back() == '\r') raw.remove_suffix(1);
        if (raw.empty()) return;
        if (raw.size() > kMaxInboundLine) {
            ++skipped_lines_;
            logger_.warn("skipped an overlong line from the server (" + std::to_string(raw.size()) +
                             " bytes): " + excerpt(raw),
                         LogFields{connection_, {}, {}});
            return;
        }
        auto line = parse_line(raw);
        if (!line) {
            ++skipped_lines_;
            logger_.warn("skipped a line that is not IRC: " + excerpt(raw), LogFields{connection_, {}, {}});
            return;
        }
        handle(*line, raw);
    }

    void handle(const IrcLine& line, std::string_view raw) {
        const std::string& c = line.command;
        if (c == "PING") return write_now("PONG :" + (line.params.empty() ? std::string("x") : line.params.back()));
        if (c == "PONG") return on_pong(line);
        if (c == "CAP") return on_cap(line);
        if (c == "AUTHENTICATE") return on_authenticate(line);
        if (c == "001") return on_welcome(line);
        if (c == "005") return on_isupport(line);
        if (c == "376" || c == "422") return on_end_of_motd();
        if (c == "433" || c == "432" || c == "436" || c == "437") return on_nick_refused(line);
        if (c == "903") return end_cap("SASL authentication succeeded");
        if (c == "902" || c == "904" || c == "905" || c == "906" || c == "908") return on_sasl_failed(line);
        if (c == "JOIN") return on_join(line);
        if (c == "324") return on_channel_modes(line);
        if (c == "366") return on_joined(line.param(1));
        if (c == "403" || c == "405" || c == "471" || c == "473" || c == "474" || c == "475" || c == "477" ||
            c == "489") {
            return on_join_refused(line);
        }
        if (c == "401" || c == "404" || c == "411" || c == "412") {
            // A send the server refused after we had reported it sent (IRC has no send acknowledgement).
            logger_.warn("the server refused a message to " + excerpt(line.param(1)) + " (" + c + " " +
                             excerpt(line.params.empty() ? "" : line.params.back()) + ")",
                         LogFields{connection_, line.param(1), {}});
            return;
        }
        if (c == "BATCH") return on_batch(line);
        if (c == "PRIVMSG") return on_privmsg(line, raw);
        if (c == "NICK") return on_nick(line);
        if (c == "KICK") return on_kick(line);
        if (c == "FAIL") return on_fail(line);
        if (c == "ERROR") {
            logger_.warn("server says: ERROR " + excerpt(line.param(0)), LogFields{connection_, {}, {}});
            return;
        }
    }

    // ---- registration -----------------------------------------------------------------------------------------

    void on_cap(const IrcLine& line) {
        // :server CAP <nick> <sub> [*] :<caps>
        if (line.params.size() < 3) return;
        const std::string& sub = line.param(1);
        if (sub == "LS" || sub == "NEW") {
            const bool more = line.params.size() >= 4 && line.param(2) == "*";
            for (auto& [name, value] : parse_caps(line.params.back())) caps_offered_[name] = value;
            if (more || state_ != State::registering || cap_requested_) return;
            std::vector<std::string> wanted{"server-time", "message-tags", "batch", "echo-message"};
            if (caps_offered_.count("draft/chathistory") != 0) wanted.emplace_back("draft/chathistory");
            if (caps_offered_.count("chathistory") != 0) wanted.emplace_back("chathistory");
            if (!settings_.sasl_user.empty()) wanted.emplace_back("sasl");
            std::string request;
            for (const std::string& cap : wanted) {
                if (caps_offered_.count(cap) == 0) {
                    if (cap == "sasl") {
                        logger_.error("SASL is configured but the server offers no sasl capability; going on "
                                      "without logging in",
                                      LogFields{connection_, {}, {}});
                    }
                    continue;
                }
                request += (request.empty() ? "" : " ") + cap;
            }
            if (request.empty()) return end_cap("the server offers none of the capabilities used");
            cap_requested_ = true;
            write_line("CAP REQ :" + request);
        } else if (sub == "ACK") {
            for (auto& [name, value] : parse_caps(line.params.back())) caps_enabled_.insert(name);
            if (caps_enabled_.count("sasl") != 0 && !settings_.sasl_user.empty() && !sasl_started_) {
                sasl_started_ = true;
                write_line("AUTHENTICATE PLAIN");
                return;
            }
            end_cap("capabilities enabled: " + line.params.back());
        } else if (sub == "NAK") {
            logger_.warn("server refused the capabilities " + line.params.back(), LogFields{connection_, {}, {}});
            end_cap("capabilities refused");
        }
    }

    void on_authenticate(const IrcLine& line) {
        if (line.param(0) != "+") return;
        for (const std::string& chunk : sasl_plain_chunks(settings_.sasl_user, settings_.sasl_password)) {
            write_line("AUTHENTICATE " + chunk, /*log_as=*/"AUTHENTICATE (credentials)");
        }
    }

    void on_sasl_failed(const IrcLine& line) {
        logger_.error("SASL login as '" + settings_.sasl_user + "' failed (" + line.command + " " +
                          excerpt(line.params.empty() ? "" : line.params.back()) +
                          "); check sasl_user and sasl_password",
                      LogFields{connection_, {}, {}});
        fail_session("SASL authentication failed");
    }

    void end_cap(const std::string& why) {
        if (cap_ended_) return;
        cap_ended_ = true;
        logger_.debug("CAP END: " + why, LogFields{connection_, {}, {}});
        write_line("CAP END");
    }

    void on_nick_refused(const IrcLine& line) {
        if (state_ != State::registering) {
            logger_.warn("nick change refused: " + excerpt(line.params.empty() ? "" : line.params.back()),
                         LogFields{connection_, {}, {}});
            return;
        }
        const std::size_t nicklen = isupport_number("NICKLEN", 30);
        ++nick_attempt_;
        std::string next;
        if (nick_attempt_ <= settings_.alt_nicks.size()) {
            next = settings_.alt_nicks[nick_attempt_ - 1];
        } else if (nick_attempt_ == settings_.alt_nicks.size() + 1) {
            next = settings_.nick.substr(0, nicklen > 1 ? nicklen - 1 : 1) + "_";
        } else {
            const std::string digits = std::to_string(std::uniform_int_distribution<int>(100, 999)(random_));
            next = settings_.nick.substr(0, nicklen > 3 ? nicklen - 3 : 1) + digits;
        }
        logger_.warn("nick '" + line.param(1) + "' refused (" + line.command + "); trying '" + next + "'",
                     LogFields{connection_, {}, {}});
        nick_ = next;
        write_line("NICK " + next);
    }

    void on_welcome(const IrcLine& line) {
        nick_ = line.param(0);
        registered_ = true;
        cap_ended_ = true;  // a server without CAP registers us anyway
        logger_.info("registered as " + nick_, LogFields{connection_, {}, {}});
    }

    void on_isupport(const IrcLine& line) {
        for (std::size_t i = 1; i + 1 < line.params.size(); ++i) {
            const std::string& token = line.params[i];
            const auto equals = token.find('=');
            isupport_[token.substr(0, equals)] = equals == std::string::npos ? "" : token.substr(equals + 1);
        }
    }

    std::size_t isupport_number(const std::string& key, std::size_t fallback) const {
        auto it = isupport_.find(key);
        if (it == isupport_.end() || it->second.empty()) return fallback;
        try {
            return static_cast<std::size_t>(std::stoul(it->second));
        } catch (...) {
            return fallback;
        }
    }

    bool server_has_history_mode() const {
        // chanhistory adds the parameter mode H (CHANMODES=A,B,C,D: H is in group C).
        auto it = isupport_.find("CHANMODES");
        return it != isupport_.end() && it->second.find('H') != std::string::npos;
    }

    bool chathistory_enabled() const {
        return caps_enabled_.count("draft/chathistory") != 0 || caps_enabled_.count("chathistory") != 0;
    }

    void on_end_of_motd() {
        if (state_ != State::registering || !registered_) return;
        state_ = State::joining;
        pending_joins_ = 0;
        for (auto& [lower, channel] : channels_) {
            channel.joined = false;
            channel.history_mode = false;
            channel.replay.reset();
            channel.holding = true;
            if (!safe_param(channel.name) || (!channel.key.empty() && !safe_param(channel.key))) {
                logger_.error("channel name or key is not sendable: " + excerpt(channel.name),
                              LogFields{connection_, channel.name, {}});
                continue;
            }
            write_line("JOIN " + channel.name + (channel.key.empty() ? "" : " " + channel.key),
                       channel.key.empty() ? "" : "JOIN " + channel.name + " (key)");
            if (server_has_history_mode()) write_line("MODE " + channel.name);
            ++pending_joins_;
        }
        // Everything the server sends because of the JOINs (names, modes, the replayed history) comes before the
        // answer to this PING.
        write_line("PING :" + std::string(kBarrierToken));
    }

    void on_join(const IrcLine& line) {
        if (irc_lower(line.nick()) != irc_lower(nick_)) return;
        own_source_ = line.source;
        auto it = channels_.find(irc_lower(line.param(0)));
        if (it == channels_.end()) return;
        it->second.joined = true;
        logger_.info("joined " + it->second.name, LogFields{connection_, it->second.name, {}});
    }

    void on_joined(const std::string& channel) {
        auto it = channels_.find(irc_lower(channel));
        if (it != channels_.end()) it->second.joined = true;
    }

    void on_channel_modes(const IrcLine& line) {
        auto it = channels_.find(irc_lower(line.param(1)));
        if (it == channels_.end()) return;
        it->second.history_mode = line.param(2).find('H') != std::string::npos;
    }

    void on_join_refused(const IrcLine& line) {
        auto it = channels_.find(irc_lower(line.param(1)));
        const std::string name = it != channels_.end() ? it->second.name : line.param(1);
        logger_.error("cannot join " + name + " (" + line.command + " " +
                          excerpt(line.params.empty() ? "" : line.params.back()) + ")",
                      LogFields{connection_, name, {}});
        if (it != channels_.end()) release(it->second);
    }

    void on_pong(const IrcLine& line) {
        const std::string& token = line.params.empty() ? std::string() : line.params.back();
        if (token == kBarrierToken && state_ == State::joining) return on_joins_done();
        if (token.rfind(kLagToken, 0) == 0 && awaiting_pong_) {
            awaiting_pong_ = false;
            const auto lag = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - ping_sent_);
            logger_.debug("lag " + std::to_string(lag.count()) + " ms", LogFields{connection_, {}, {}});
            schedule_ping(settings_.ping_interval);
        }
    }

    void on_joins_done() {
        deadline_.cancel();
        state_ = State::ready;
        attempt_ = 0;
        std::string joined, failed;
        bool waiting = false;
        std::vector<ChannelState*> no_history;
        for (auto& [lower, channel] : channels_) {
            std::string& list = channel.joined ? joined : failed;
            list += (list.empty() ? "" : ", ") + channel.name;
            if (channel.joined && channel.history_mode && !channel.replay) channel.replay.emplace();  // empty replay
            if (channel.replay) {
                waiting = true;
            } else if (!chathistory_enabled() || !channel.joined) {
                no_history.push_back(&channel);
            } else {
                waiting = true;  // the policy asks with CHATHISTORY
            }
        }
        const std::string history = chathistory_enabled() ? "CHATHISTORY" : server_has_history_mode() ? "replay on join" : "none";
        if (waiting) {
            recovery_timer_.expires_after(settings_.recovery_wait);
            recovery_timer_.async_wait([self = shared_from_this(), g = generation_](error_code ec) {
                if (!ec && g == self->generation_) self->on_recovery_wait_over();
            });
        }
        schedule_ping(settings_.ping_interval);
        connected_once_ = true;
        session_up_ = true;
        report(ConnectionEvent::Type::connected,
               "registered as " + nick_ + " on " + settings_.host + ":" + std::to_string(settings_.port) +
                   "; joined " + (joined.empty() ? "no channel" : joined) +
                   (failed.empty() ? "" : "; not joined " + failed) + "; history: " + history);
        // Held lines go only after `connected`: the host takes events and messages in order, and a line handled
        // while the connection still counted as down could not be relayed to another of its channels.
        for (ChannelState* channel : no_history) release(*channel);
    }

    void on_recovery_wait_over() {
        for (auto& [lower, channel] : channels_) {
            if (!channel.holding) continue;
            if (channel.replay && !channel.replay->empty()) {
                logger_.info("no recovery policy asked for the " + std::to_string(channel.replay->size()) +
                                 " replayed line(s) within " + std::to_string(settings_.recovery_wait.count()) +
                                 " ms; they are not delivered",
                             LogFields{connection_, channel.name, {}});
            }
            channel.replay.reset();
            release(channel);
        }
    }

    void on_nick(const IrcLine& line) {
        if (irc_lower(line.nick()) == irc_lower(nick_)) {
            nick_ = line.param(0);
            own_source_.clear();
        }
    }

    void on_kick(const IrcLine& line) {
        if (irc_lower(line.param(1)) != irc_lower(nick_)) return;
        auto it = channels_.find(irc_lower(line.param(0)));
        if (it == channels_.end()) return;
        logger_.warn("kicked from " + it->second.name + " by " + line.nick() + "; joining again",
                     LogFields{connection_, it->second.name, {}});
        it->second.joined = false;
        write_line("JOIN " + it->second.name + (it->second.key.empty() ? "" : " " + it->second.key));
    }

    void on_fail(const IrcLine& line) {
        logger_.warn("server says: FAIL " + excerpt(std::string(line.param(0)) + " " + line.param(1) + " " +
                                                    (line.params.empty() ? "" : line.params.back())),
                     LogFields{connection_, {}, {}});
        if (line.param(0) != "CHATHISTORY") return;
        // FAIL CHATHISTORY <code> <subcommand> [target] :text
        for (auto it = history_queries_.begin(); it != history_queries_.end(); ++it) {
            if (line.params.size() >= 4 && irc_lower(line.param(3)) != it->channel) continue;
            auto query = std::move(*it);
            history_queries_.erase(it);
            query.done(fail("history_refused", "the server refused CHATHISTORY: " + line.params.back()));
            if (auto c = channels_.find(query.channel); c != channels_.end()) release(c->second);
            return;
        }
    }

    // ---- batches and messages ---------------------------------------------------------------------------------

    void on_batch(const IrcLine& line) {
        const std::string& reference = line.param(0);
        if (reference.size() < 2) return;
        if (reference.front() == '+') {
            Batch batch;
            batch.type = line.param(1);
            batch.target = line.param(2);
            batches_[reference.substr(1)] = std::move(batch);
            if (batches_.size() > 64) {  // a server that never closes its batches
                logger_.warn("more than 64 open batches; forgetting them", LogFields{connection_, {}, {}});
                batches_.clear();
            }
            return;
        }
        if (reference.front() != '-') return;
        auto it = batches_.find(reference.substr(1));
        if (it == batches_.end()) return;
        Batch batch = std::move(it->second);
        batches_.erase(it);
        if (batch.type != "chathistory" && batch.type != "draft/chathistory") return;
        const std::string lower = irc_lower(batch.target);
        for (auto q = history_queries_.begin(); q != history_queries_.end(); ++q) {
            if (q->channel != lower) continue;
            auto query = std::move(*q);
            history_queries_.erase(q);
            HistoryPage page;
            const bool complete = batch.messages.size() < query.limit;
            page.complete = complete;
            page.messages = std::move(batch.messages);
            query.done(std::move(page));  // the policy feeds inside done(): before the held live lines
            if (auto c = channels_.find(lower); c != channels_.end() && complete) release(c->second);
            return;
        }
        auto channel = channels_.find(lower);
        if (channel == channels_.end()) return;
        // Replayed on JOIN: kept for the recovery policy.
        if (!channel->second.replay) channel->second.replay.emplace();
        for (Message& message : batch.messages) channel->second.replay->push_back(std::move(message));
    }

    void on_privmsg(const IrcLine& line, std::string_view raw) {
        const std::string target = line.param(0);
        if (line.source.empty() || line.params.size() < 2 || target.empty()) {
            ++skipped_lines_;
            logger_.warn("skipped a PRIVMSG without source, target or text: " + excerpt(raw),
                         LogFields{connection_, {}, {}});
            return;
        }
        const std::string nick = line.nick();
        const std::string& text = line.params[1];
        if (line.tags.count("batch") != 0 && is_own_nick(nick)) return;  // what we said in an earlier session
        const bool own = irc_lower(nick) == irc_lower(nick_);
        if (own) {
            own_source_ = line.source;  // echo-message: the exact source the server shows for us
            return;
        }
        if (auto ctcp = parse_ctcp(text)) {
            logger_.debug("skipped CTCP " + excerpt(ctcp->verb) + " from " + nick, LogFields{connection_, {}, {}});
            return;
        }
        if (!valid_utf8(text)) {
            ++skipped_lines_;
            logger_.warn("skipped a message from " + nick + " that is not valid UTF-8: " + excerpt(text),
                         LogFields{connection_, target, {}});
            return;
        }
        if (text.empty()) return;
        const bool to_channel = is_channel(target);
        if (!to_channel && irc_lower(target) != irc_lower(nick_)) return;  // not for us (a STATUSMSG, ...)

        Message message;
        const auto time = line.tag("time");
        const auto parsed_time = time ? parse_server_time(*time) : std::nullopt;
        message.timestamp_ms = parsed_time ? *parsed_time : now_ms();
        const auto msgid = line.tag("msgid");
        message.id = msgid && !msgid->empty() ? *msgid : fallback_message_id(message.timestamp_ms, nick, text);
        message.author = Author{nick, nick, line.tags.count("bot") != 0 || line.tags.count("draft/bot") != 0};
        if (auto reply = line.tag("+draft/reply"); reply && !reply->empty()) message.reply_to = *reply;
        if (auto reply = line.tag("+reply"); reply && !reply->empty()) message.reply_to = *reply;
        message.text = text;
        message.raw = "{\"line\":" + json_string(repair_utf8(raw)) + "}";
        ChannelState* channel = nullptr;
        if (to_channel) {
            auto it = channels_.find(irc_lower(target));
            channel = it == channels_.end() ? nullptr : &it->second;
            message.channel = channel ? channel->name : target;
            message.kind = MessageKind::group;
        } else {
            message.channel = "@" + nick;
            message.kind = MessageKind::private_message;
        }
        if (const auto batch = line.tag("batch")) {
            auto it = batches_.find(*batch);
            if (it != batches_.end()) {
                message.recovered = true;
                it->second.messages.push_back(std::move(message));
                return;
            }
        }
        if (channel && channel->holding) {
            channel->held.push_back(std::move(message));
            return;
        }
        deliver(std::move(message));
    }

    bool is_own_nick(const std::string& nick) const {
        const std::string lower = irc_lower(nick);
        if (lower == irc_lower(nick_) || lower == irc_lower(settings_.nick)) return true;
        return std::any_of(settings_.alt_nicks.begin(), settings_.alt_nicks.end(),
                           [&](const std::string& alt) { return irc_lower(alt) == lower; });
    }

    bool is_channel(const std::string& target) const {
        auto it = isupport_.find("CHANTYPES");
        const std::string types = it != isupport_.end() ? it->second : "#&";
        return !target.empty() && types.find(target.front()) != std::string::npos;
    }

    void deliver(Message message) {
        if (stopped_ || host_ == nullptr) return;
        host_->deliver(std::move(message));
    }

    void release(ChannelState& channel) {
        channel.holding = false;
        std::vector<Message> held = std::move(channel.held);
        channel.held.clear();
        for (Message& message : held) deliver(std::move(message));
    }

    // ---- history for the recovery policy ----------------------------------------------------------------------

    void do_fetch_history(const HistoryRequest& request, HistoryCallback done) {
        if (stopped_) return done(fail("cancelled", "the connector is stopping"));
        if (state_ != State::ready) {
            Error error{"not_connected", "not connected to " + settings_.host + "; history is fetched after rejoining",
                        true, 1000};
            return done(error);
        }
        auto it = channels_.find(irc_lower(request.channel));
        if (it == channels_.end()) {
            return done(fail("unknown_channel", "channel " + request.channel + " is not joined by this connection"));
        }
        ChannelState& channel = it->second;
        if (request.limit == 0) {  // the policy wants nothing (first start): live lines may flow
            channel.replay.reset();
            release(channel);
            return done(HistoryPage{});
        }
        if (channel.replay) {
            HistoryPage page;
            auto& replay = *channel.replay;
            auto from = replay.begin();
            if (request.after_message_id) {
                auto at = std::find_if(replay.begin(), replay.end(),
                                       [&](const Message& m) { return m.id == *request.after_message_id; });
                if (at != replay.end()) from = at + 1;
            }
            if (static_cast<std::size_t>(replay.end() - from) > request.limit) from = replay.end() - request.limit;
            page.messages.assign(std::make_move_iterator(from), std::make_move_iterator(replay.end()));
            page.complete = true;
            channel.replay.reset();
            done(std::move(page));  // the policy feeds the page inside done(): before the held live lines
            release(channel);
            return;
        }
        if (chathistory_enabled() && channel.joined) {
            const std::size_t server_max = isupport_number("CHATHISTORY", 0);
            std::uint32_t limit = request.limit;
            if (server_max > 0 && limit > server_max) limit = static_cast<std::uint32_t>(server_max);
            const std::string reference =
                request.after_message_id ? "msgid=" + *request.after_message_id : std::string("*");
            if (request.after_message_id && !safe_param(*request.after_message_id)) {
                release(channel);
                return done(fail("bad_cursor", "the stored message id cannot be sent to the server"));
            }
            HistoryQuery query;
            query.channel = it->first;
            query.limit = limit;
            query.done = std::move(done);
            query.timeout = std::make_unique<asio::steady_timer>(strand_, settings_.register_timeout);
            query.timeout->async_wait([self = shared_from_this(), lower = it->first, g = generation_](error_code ec) {
                if (!ec && g == self->generation_) self->on_history_timeout(lower);
            });
            history_queries_.push_back(std::move(query));
            write_line(std::string("CHATHISTORY ") + (request.after_message_id ? "AFTER " : "LATEST ") + channel.name +
                       " " + reference + " " + std::to_string(limit));
            return;
        }
        release(channel);
        done(fail("no_history", "the server " + settings_.host + " keeps no history of " + channel.name +
                                    " (no replay on join, no CHATHISTORY)"));
    }

    void on_history_timeout(const std::string& lower) {
        for (auto it = history_queries_.begin(); it != history_queries_.end(); ++it) {
            if (it->channel != lower) continue;
            auto query = std::move(*it);
            history_queries_.erase(it);
            query.done(Error{"timeout", "no CHATHISTORY answer in time", true, 1000});
            if (auto c = channels_.find(lower); c != channels_.end()) release(c->second);
            return;
        }
    }

    // ---- sending ----------------------------------------------------------------------------------------------

    void do_send(const OutboundMessage& message, SendCallback done) {
        if (state_ != State::ready || stopped_) {
            return done(Error{"not_connected", "not connected to " + settings_.host + " (reconnecting)", true, 1000});
        }
        const std::string& target = message.to.target;
        if (!safe_param(target)) {
            return done(fail("bad_target", "'" + excerpt(target) + "' is not an IRC nick or channel"));
        }
        const std::size_t source_length =
            own_source_.empty() ? nick_.size() + 2 + settings_.username.size() + kUnknownHostLength + 1
                                : own_source_.size();
        auto lines = split_text(message.text, privmsg_budget(source_length, target));
        if (lines.empty()) return done(SentMessage{});
        auto job = std::make_shared<SendJob>();
        job->prefix = "PRIVMSG " + target + " :";
        // The message it answers, as an IRCv3 client tag (first line only), where the server relays tags.
        if (message.reply_to && !message.reply_to->empty() && caps_enabled_.count("message-tags") != 0) {
            job->first_tags = "@+draft/reply=" + escape_tag_value(*message.reply_to) + " ";
        }
        job->lines = std::move(lines);
        job->route = send_route(message.to);
        job->done = std::move(done);
        job->generation = generation_;
        send_line(job);  // the delivery engine acquired the first line's token; the others acquire their own
    }

    struct SendJob {
        std::string prefix;
        std::vector<std::string> lines;
        std::size_t next = 0;
        std::string route;
        SendCallback done;
        std::uint64_t generation = 0;
        std::string first_tags;
    };

    void send_line(const std::shared_ptr<SendJob>& job) {
        if (job->generation != generation_ || state_ != State::ready || stopped_) {
            return job->done(Error{"disconnected", "the connection dropped while sending; it will be resent", true, 1000});
        }
        const std::size_t index = job->next++;
        const bool last = index + 1 == job->lines.size();
        const std::string line = (index == 0 ? job->first_tags : std::string()) + job->prefix + job->lines[index];
        if (last) {
            write_now(line, [job](bool written) {
                if (written) {
                    job->done(SentMessage{});
                } else {
                    job->done(Error{"disconnected", "the connection dropped while sending", true, 1000});
                }
            });
            return;
        }
        write_now(line);
        host_->rate_limits().acquire(RateRequest{job->route, {}, RequestPriority::live},
                                     [self = shared_from_this(), job](Result<void> granted) {
                                         // Grants come on the host's threads, cancellations even after stop().
                                         std::unique_lock lock(self->post_mutex_);
                                         if (self->stopped_) {
                                             lock.unlock();
                                             return job->done(stopping_error());
                                         }
                                         asio::post(self->strand_, [self, job, granted] {
                                             if (!granted) return job->done(granted.error());
                                             self->send_line(job);
                                         });
                                     });
    }

    // A line the server counts against its flood limit: it waits for a token of the connection's "global" bucket
    // (the route "irc commands"), in order with the other such lines. Registration, JOIN, MODE, CHATHISTORY, ...
    void write_line(std::string line, const std::string& log_as = "") {
        paced_.emplace_back(std::move(line), log_as);
        if (!pacing_) acquire_paced();
    }

    void acquire_paced() {
        if (paced_.empty() || host_ == nullptr) return;
        pacing_ = true;
        host_->rate_limits().acquire(
            RateRequest{"irc commands", {}, RequestPriority::live},
            [self = shared_from_this(), g = generation_](Result<void> granted) {
                std::unique_lock lock(self->post_mutex_);
                if (self->stopped_) return;
                asio::post(self->strand_, [self, g, granted] {
                    if (g != self->generation_ || self->paced_.empty()) return;  // that session is gone
                    self->pacing_ = false;
                    if (!granted) return;  // the scheduler is shutting down
                    auto [line, log_as] = std::move(self->paced_.front());
                    self->paced_.pop_front();
                    self->write_now(std::move(line), nullptr, log_as);
                    self->acquire_paced();
                });
            });
    }

    // A line written at once: PONG, our lag PING, and the lines of a send (which hold their tokens already).
    void write_now(std::string line, std::function<void(bool)> written = nullptr, const std::string& log_as = "") {
        // Nothing with CR, LF or NUL reaches the wire: the line ends where one would start another command.
        const auto bad = line.find_first_of(std::string_view("\r\n\0", 3));
        if (bad != std::string::npos) line.resize(bad);
        // Tags have a budget of their own (4096 bytes for client tags); the rest is held to 512 with CR LF.
        std::size_t tags = 0;
        if (!line.empty() && line.front() == '@') {
            const auto space = line.find(' ');
            tags = space == std::string::npos ? line.size() : space + 1;
            if (tags > 4096) {
                line.erase(0, tags);
                tags = 0;
            }
        }
        if (line.size() - tags > kMaxLine - 2) {
            std::size_t cut = tags + kMaxLine - 2;
            while (cut > tags && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;
            line.resize(cut);
        }
        logger_.debug(">> " + (log_as.empty() ? excerpt(line) : log_as), LogFields{connection_, {}, {}});
        writes_.push_back(PendingWrite{line + "\r\n", std::move(written)});
        if (writes_.size() == 1) write_next();
    }

    void write_next() {
        if (writes_.empty() || (!socket_ && !tls_)) return;
        auto handler = [self = shared_from_this(), g = generation_](error_code ec, std::size_t) {
            self->on_write(g, ec);
        };
        if (tls_) {
            asio::async_write(*tls_, asio::buffer(writes_.front().line), std::move(handler));
        } else {
            asio::async_write(*socket_, asio::buffer(writes_.front().line), std::move(handler));
        }
    }

    void on_write(std::uint64_t g, error_code ec) {
        if (g != generation_) return;
        if (ec) return fail_io("write", ec);
        auto written = std::move(writes_.front().written);
        writes_.pop_front();
        if (written) written(true);
        write_next();
    }

    // ---- timers, failure, reconnect ---------------------------------------------------------------------------

    void arm_deadline(std::chrono::milliseconds after, std::string what) {
        deadline_.expires_after(after);
        deadline_.async_wait([self = shared_from_this(), g = generation_, what = std::move(what)](error_code ec) {
            if (!ec && g == self->generation_) self->fail_session(what);
        });
    }

    void schedule_ping(std::chrono::milliseconds after) {
        ping_timer_.expires_after(after);
        ping_timer_.async_wait([self = shared_from_this(), g = generation_](error_code ec) {
            if (ec || g != self->generation_) return;
            if (self->awaiting_pong_) {
                return self->fail_session("no PONG within " + std::to_string(self->settings_.ping_timeout.count()) +
                                          " ms (lag too high or the connection is dead)");
            }
            self->awaiting_pong_ = true;
            self->ping_sent_ = Clock::now();
            self->write_now("PING :" + std::string(kLagToken) + "-" + std::to_string(now_ms()));
            self->schedule_ping(self->settings_.ping_timeout);
        });
    }

    void fail_io(const std::string& step, error_code ec) { fail_session(step + ": " + ec.message()); }

    void fail_session(const std::string& why) {
        if (stopped_) return;
        teardown(why, true);
        schedule_reconnect();
    }

    void teardown(const std::string& why, bool report_it) {
        ++generation_;  // every handler of the old session now returns at once
        const bool was_up = session_up_;
        session_up_ = false;
        state_ = State::idle;
        registered_ = false;
        cap_requested_ = cap_ended_ = sasl_started_ = awaiting_pong_ = discarding_ = false;
        error_code ignored;
        resolver_.cancel();
        deadline_.cancel();
        ping_timer_.cancel();
        recovery_timer_.cancel();
        if (tls_) tls_->next_layer().close(ignored);
        if (socket_) socket_->close(ignored);
        // Closed sockets may still have handlers queued that refer to them: keep them until the next session.
        old_sockets_.clear();
        if (socket_) old_sockets_.push_back(std::shared_ptr<void>(std::move(socket_)));
        if (tls_) old_sockets_.push_back(std::shared_ptr<void>(std::move(tls_)));
        old_sockets_.push_back(std::shared_ptr<void>(std::move(tls_context_)));
        for (PendingWrite& write : writes_) {
            if (write.written) write.written(false);
        }
        writes_.clear();
        paced_.clear();
        pacing_ = false;
        for (HistoryQuery& query : history_queries_) {
            query.done(Error{"disconnected", "the connection dropped before the history arrived", true, 1000});
        }
        history_queries_.clear();
        // Lines received live are delivered even though the replay they waited for is gone.
        for (auto& [lower, channel] : channels_) {
            channel.replay.reset();
            release(channel);
            channel.joined = false;
        }
        if (report_it) {
            logger_.warn("connection lost: " + why, LogFields{connection_, {}, {}});
            if (was_up) report(ConnectionEvent::Type::disconnected, why);
        } else {
            logger_.info("closed: " + why, LogFields{connection_, {}, {}});
        }
    }

    void schedule_reconnect() {
        const auto base = settings_.reconnect_min.count() << std::min<unsigned>(attempt_, 16);
        const auto capped = std::min<std::int64_t>(base, settings_.reconnect_max.count());
        ++attempt_;
        // Full jitter in the upper half: hosts reconnecting after one outage spread out.
        const auto delay =
            std::chrono::milliseconds(std::uniform_int_distribution<std::int64_t>(capped / 2, capped)(random_));
        logger_.info("reconnecting in " + std::to_string(delay.count()) + " ms (attempt " + std::to_string(attempt_) + ")",
                     LogFields{connection_, {}, {}});
        reconnect_timer_.expires_after(delay);
        reconnect_timer_.async_wait([self = shared_from_this()](error_code ec) {
            if (!ec) self->connect();
        });
    }

    void report(ConnectionEvent::Type type, std::string detail) {
        if (stopped_ || host_ == nullptr) return;
        host_->report(ConnectionEvent{type, std::move(detail)});
    }

    tcp::socket& lowest() { return tls_ ? tls_->next_layer() : *socket_; }

    IrcSettings settings_;
    Logger& logger_;
    std::string connection_;
    ConnectorHost* host_ = nullptr;
    std::atomic<bool> stopped_ = false;
    std::mutex post_mutex_;  // orders stop() against posts from other threads

    asio::strand<asio::io_context::executor_type> strand_;
    tcp::resolver resolver_;
    std::unique_ptr<asio::ssl::context> tls_context_;
    std::unique_ptr<tcp::socket> socket_;
    std::unique_ptr<asio::ssl::stream<tcp::socket>> tls_;
    std::vector<std::shared_ptr<void>> old_sockets_;
    asio::steady_timer deadline_;
    asio::steady_timer ping_timer_;
    asio::steady_timer reconnect_timer_;
    asio::steady_timer recovery_timer_;
    std::mt19937_64 random_;

    std::uint64_t generation_ = 0;
    State state_ = State::idle;
    unsigned attempt_ = 0;
    bool session_up_ = false;
    bool connected_once_ = false;
    std::array<char, 16384> chunk_{};
    std::string read_buffer_;
    bool discarding_ = false;
    std::uint64_t skipped_lines_ = 0;
    std::deque<PendingWrite> writes_;
    std::deque<std::pair<std::string, std::string>> paced_;  // (line, what to log instead) waiting for a token
    bool pacing_ = false;                                     // an acquire for paced_.front() is out

    std::map<std::string, std::string, std::less<>> caps_offered_;
    std::set<std::string, std::less<>> caps_enabled_;
    std::map<std::string, std::string, std::less<>> isupport_;
    bool cap_requested_ = false;
    bool cap_ended_ = false;
    bool sasl_started_ = false;
    bool registered_ = false;
    std::string nick_;
    std::size_t nick_attempt_ = 0;
    std::string own_source_;
    std::size_t pending_joins_ = 0;
    bool awaiting_pong_ = false;
    Clock::time_point ping_sent_{};

    std::map<std::string, ChannelState> channels_;  // by lower-cased name
    std::map<std::string, Batch> batches_;
    std::vector<HistoryQuery> history_queries_;
};

IrcConnector::IrcConnector(IrcSettings settings, Logger& logger, std::string connection)
    : io_(std::make_unique<asio::io_context>(1)),
      client_(std::make_shared<IrcClient>(std::move(settings), logger, *io_, std::move(connection))) {
    // Its own io_context and thread, not the host's: Asio keeps per-thread state in template statics, and a plugin
    // built with hidden visibility has its own copy of them, so this library's Asio code must only ever run on
    // threads that this library's io_context::run() entered (on the host's threads it crashed).
    thread_ = std::thread([io = io_.get()] {
        auto guard = asio::make_work_guard(*io);
        io->run();
    });
}

IrcConnector::~IrcConnector() { stop(); }

ConnectorCapabilities IrcConnector::capabilities() const {
    ConnectorCapabilities capabilities;
    capabilities.history = true;
    capabilities.private_messages = true;
    capabilities.max_text_length = 0;  // long text is split into lines
    return capabilities;
}

void IrcConnector::start(ConnectorHost& host) { client_->start(host); }

void IrcConnector::stop() {
    client_->stop();
    if (thread_.joinable()) {
        io_->stop();
        thread_.join();
    }
}

void IrcConnector::send(const OutboundMessage& message, SendCallback done) { client_->send(message, std::move(done)); }

void IrcConnector::fetch_history(const HistoryRequest& request, HistoryCallback done) {
    client_->fetch_history(request, std::move(done));
}

}  // namespace switchboard::irc
