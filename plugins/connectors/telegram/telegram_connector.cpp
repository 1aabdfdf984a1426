#include "telegram_connector.hpp"

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <switchboard/rate_limit.hpp>
#include <thread>

#include "telegram_http.hpp"

namespace switchboard::telegram {
namespace {

namespace asio = boost::asio;
using std::chrono::milliseconds;

// An offset saved this long ago has been written by the host: it may be sent (and so confirmed). Confirming only
// what is already stored keeps a crash from leaving the store behind the server (which would look like a gap).
constexpr std::int64_t kSettleMs = 50;
// While delivered updates wait to be handled, the loop checks the store this often instead of asking Telegram again,
// and asks Telegram at least this often.
constexpr std::int64_t kIdleStepMs = 25;
constexpr std::int64_t kIdleMaxMs = 1000;
// The server time of the last successful poll is saved at most this often (and at the start and end of a session).
constexpr std::int64_t kLastPollSaveMs = 5000;
// Updates delivered and not confirmed, at most (a poll returns 100 at most from the first unconfirmed one, so this
// is a safety net).
constexpr std::size_t kMaxUnconfirmed = 1000;
// Sends split in parts remember the parts already sent, per idempotency key, so a retry goes on where it stopped.
constexpr std::size_t kMaxProgress = 10000;
// Chats' static buckets are paced this much under the configured rate: a send that reaches Telegram a little later
// than the one before it was granted must still find a token there.
constexpr double kRateMargin = 0.9;

std::int64_t wall_ms() {
    return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::int64_t steady_ms() {
    return std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::optional<std::int64_t> parse_int(const std::optional<std::string>& text) {
    if (!text || text->empty()) return std::nullopt;
    try {
        std::size_t used = 0;
        const long long value = std::stoll(*text, &used);
        if (used == text->size()) return value;
    } catch (const std::exception&) {
    }
    return std::nullopt;
}

// The bot's user id: the number before ':' in its token (getMe confirms it).
std::int64_t token_user_id(const std::string& token) { return parse_int(token.substr(0, token.find(':'))).value_or(0); }

std::vector<std::string> split_ids(const std::string& joined) {
    std::vector<std::string> ids;
    std::size_t start = 0;
    while (start <= joined.size()) {
        const auto comma = joined.find(',', start);
        const auto id = joined.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!id.empty()) ids.push_back(id);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return ids;
}

}  // namespace

// Each runner is an io_context and thread of the connector's own, not the host's: Asio keeps per-thread state in
// template statics, and under hidden visibility this library has its own copies (README "Asio"). Polling has its
// own so that the store reads deciding the offset (ConnectorHost::is_processed, a blocking call) never hold up sends.
struct TelegramConnector::Runner {
    asio::io_context io{1};
    asio::executor_work_guard<asio::io_context::executor_type> guard = asio::make_work_guard(io);
    std::thread thread{[this] { io.run(); }};

    void finish() {
        guard.reset();
        io.stop();
        if (thread.joinable()) thread.join();
    }
};

struct TelegramConnector::Core : std::enable_shared_from_this<TelegramConnector::Core> {
    Core(asio::io_context& poll_io_, asio::io_context& send_io_, const PluginContext& context,
         TelegramSettings settings_, const Endpoint& api)
        : poll_io(poll_io_),
          logger(context.logger()),
          connection(context.instance_name()),
          settings(std::move(settings_)),
          poll_http(make_http_client(poll_io_, api, settings, 1, logger)),
          send_http(make_http_client(send_io_, api, settings, settings.http_connections, logger)) {}

    asio::io_context& poll_io;
    Logger& logger;
    std::string connection;
    TelegramSettings settings;
    std::shared_ptr<HttpClient> poll_http;
    std::shared_ptr<HttpClient> send_http;
    ConnectorHost* host = nullptr;
    RateLimitScheduler* scheduler = nullptr;

    // Intake: deliver() and report() only while open; stop() closes it.
    std::mutex intake_mutex;
    bool intake_open = false;

    // The poll loop (poll thread only, but for the flags).
    std::atomic<bool> stopping{false};
    std::function<void()> cancel_wait;  // ends the wait the loop is in
    std::mutex done_mutex;
    std::condition_variable done_cv;
    bool poll_running = false;
    std::optional<UpdateLedger> ledger;
    std::optional<std::int64_t> saved_offset;  // the latest "offset" saved
    std::int64_t saved_at = 0;                 // when (steady ms)
    std::int64_t skew_ms = 0;                  // the server clock ahead of ours, as message dates show
    std::int64_t last_poll_saved_at = std::numeric_limits<std::int64_t>::min() / 2;
    std::int64_t backlog_warned_at = std::numeric_limits<std::int64_t>::min() / 2;
    std::int64_t store_warned_at = std::numeric_limits<std::int64_t>::min() / 2;
    std::mt19937_64 random{std::random_device{}()};

    // Sends.
    std::mutex mutex;
    std::set<std::string> buckets_defined;
    struct Progress {
        std::vector<std::string> ids;  // of the parts sent
        std::uint64_t serial = 0;      // which progress_order entry is this one's
    };
    std::map<std::string, Progress> progress;                          // by idempotency key
    std::deque<std::pair<std::string, std::uint64_t>> progress_order;  // oldest first; stale entries are skipped
    std::uint64_t progress_serial = 0;

    [[nodiscard]] LogFields fields() const { return LogFields{connection, {}, {}}; }

    bool deliver(Message message) {
        std::lock_guard lock(intake_mutex);
        if (!intake_open) return false;
        host->deliver(std::move(message));
        return true;
    }

    void report(ConnectionEvent::Type type, std::string detail) {
        std::lock_guard lock(intake_mutex);
        if (intake_open) host->report(ConnectionEvent{type, std::move(detail)});
    }

    // ---- the poll loop ----------------------------------------------------------------------------------------

    // Waits on the poll thread for a callback-style operation, or for stop(): nullopt when stopping.
    template <class T>
    asio::awaitable<std::optional<T>> wait_for(std::function<void(std::function<void(T)>)> start) {
        struct Slot {
            explicit Slot(asio::io_context& io) : timer(io) {}
            asio::steady_timer timer;
            std::optional<T> value;
        };
        auto slot = std::make_shared<Slot>(poll_io);
        slot->timer.expires_at(asio::steady_timer::time_point::max());
        asio::io_context* io = &poll_io;
        start([slot, io](T value) {
            asio::post(*io, [slot, value = std::move(value)]() mutable {
                slot->value = std::move(value);
                slot->timer.cancel();
            });
        });
        if (!slot->value && !stopping) {
            cancel_wait = [slot] { slot->timer.cancel(); };
            boost::system::error_code ec;
            co_await slot->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            cancel_wait = nullptr;
        }
        if (stopping) co_return std::nullopt;
        co_return std::move(slot->value);
    }

    asio::awaitable<void> sleep_ms(std::int64_t ms) {
        if (stopping) co_return;
        asio::steady_timer timer(poll_io, milliseconds(ms));
        cancel_wait = [&timer] { timer.cancel(); };
        boost::system::error_code ec;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        cancel_wait = nullptr;
    }

    // One Bot API call of the poll loop, through the scheduler (route @p method); nullopt when stopping. (Every
    // argument of a co_await here is a named object: GCC 12 destroys temporaries in co_await expressions twice.)
    asio::awaitable<std::optional<Result<HttpResponse>>> call(std::string method, std::string body,
                                                              std::int64_t timeout_ms) {
        RateLimitScheduler* limits = scheduler;
        std::function<void(std::function<void(Result<void>)>)> acquire =
            [limits, method](std::function<void(Result<void>)> done) {
                limits->acquire(RateRequest{method, {}, RequestPriority::live}, std::move(done));
            };
        auto granted = co_await wait_for<Result<void>>(std::move(acquire));
        if (!granted) co_return std::nullopt;
        if (!*granted) co_return Result<HttpResponse>(granted->error());
        auto http = poll_http;
        std::function<void(std::function<void(Result<HttpResponse>)>)> request =
            [http, method, body = std::move(body), timeout_ms](std::function<void(Result<HttpResponse>)> done) {
                http->request(method, body, milliseconds(timeout_ms), std::move(done));
            };
        auto response = co_await wait_for<Result<HttpResponse>>(std::move(request));
        RateLimitInfo info;
        if (response && *response) info = rate_limit_info(parse_response((*response)->status, (*response)->body));
        scheduler->observe(method, info);
        co_return response;
    }

    std::int64_t backoff(std::uint32_t& failures) {
        const double unit = std::uniform_real_distribution<double>(0.0, 1.0)(random);
        return backoff_ms(failures++, settings.reconnect_min_ms, settings.reconnect_max_ms, unit);
    }

    // Drops the handled front of the ledger; warns (once a while) when an update waits long or the store fails.
    void advance() {
        std::optional<Error> error;
        ledger->advance([this](const Message& message) { return host->is_processed(message); }, &error);
        const std::int64_t now = steady_ms();
        if (error && now - store_warned_at >= settings.unconfirmed_warn_ms) {
            store_warned_at = now;
            logger.warn("cannot tell whether delivered updates were handled (" + error->to_string() +
                            "); they stay unconfirmed until the store answers",
                        fields());
        }
        if (auto oldest = ledger->oldest(); oldest && now - oldest->second >= settings.unconfirmed_warn_ms &&
                                            now - backlog_warned_at >= settings.unconfirmed_warn_ms) {
            backlog_warned_at = now;
            logger.warn("update " + std::to_string(oldest->first) + " has waited " +
                            format_duration_ms(now - oldest->second) + " to be handled; it and " +
                            std::to_string(ledger->unconfirmed() - 1) +
                            " later update(s) stay unconfirmed (Telegram keeps them 24 h)",
                        fields());
        }
    }

    void save_offset_if_moved() {
        const auto next = ledger->next_offset();
        if (!next || (saved_offset && *next <= *saved_offset)) return;
        host->save_state("offset", std::to_string(*next));
        saved_offset = next;
        saved_at = steady_ms();
    }

    std::int64_t server_now() const { return wall_ms() + skew_ms; }

    void save_last_poll(bool now) {
        const std::int64_t at = steady_ms();
        if (!now && at - last_poll_saved_at < kLastPollSaveMs) return;
        host->save_state("last_poll", std::to_string(server_now()));
        last_poll_saved_at = at;
    }

    asio::awaitable<void> poll_loop() {
        auto self = shared_from_this();
        try {
            co_await run_polls();
        } catch (const std::exception& e) {
            logger.error(std::string("polling stopped: ") + e.what(), fields());
            report(ConnectionEvent::Type::finished, std::string("polling failed: ") + e.what());
        }
        // What was handled meanwhile, for the next start (no request confirms it now: the next run does).
        if (ledger) {
            advance();
            save_offset_if_moved();
            if (last_poll_saved_at > std::numeric_limits<std::int64_t>::min() / 2) save_last_poll(true);
        }
        {
            std::lock_guard lock(done_mutex);
            poll_running = false;
        }
        done_cv.notify_all();
    }

    // A response the poll loop cannot go on from: 401 and 404 end the connection for good.
    bool fatal(const ApiResponse& api, const std::string& method) {
        if (api.error_code != 401 && api.error_code != 404) return false;
        const Error error = response_error(api, method);
        const std::string reason = api.error_code == 401 ? "token rejected (401 Unauthorized)"
                                                         : "Bot API not found (404): the token or api_base is wrong";
        logger.error(reason + ": " + error.message + "; the connection stays down", fields());
        report(ConnectionEvent::Type::finished,
               reason + ": check the connection's token (from @BotFather) and api_base");
        return true;
    }

    asio::awaitable<void> run_polls() {
        const std::int64_t request_timeout = settings.request_timeout_ms;
        std::uint32_t failures = 0;
        BotUser bot{token_user_id(settings.token), ""};
        // Who the bot is (its own messages are not delivered) and whether the token works at all.
        for (;;) {
            std::string method = "getMe";
            std::string body = "{}";
            auto response = co_await call(std::move(method), std::move(body), request_timeout);
            if (!response) co_return;
            if (*response) {
                const ApiResponse api = parse_response((*response)->status, (*response)->body);
                if (api.ok) {
                    if (auto user = parse_bot_user(api.result)) bot = *user;
                    break;
                }
                if (fatal(api, "getMe")) co_return;
                const auto delay = backoff(failures);
                logger.warn(response_error(api, "getMe").message + "; retrying in " + std::to_string(delay) + " ms",
                            fields());
                co_await sleep_ms(delay);
            } else {
                const auto delay = backoff(failures);
                logger.warn("getMe: " + (*response).error().message + "; retrying in " + std::to_string(delay) + " ms",
                            fields());
                co_await sleep_ms(delay);
            }
            if (stopping) co_return;
        }
        logger.info("polling getUpdates as @" + bot.username + " (user " + std::to_string(bot.id) + ")", fields());

        ledger.emplace(parse_int(host->load_state("offset")), kMaxUnconfirmed);
        saved_offset = ledger->next_offset();
        std::optional<std::int64_t> sendable = saved_offset;  // saved at least kSettleMs ago: may be confirmed
        std::optional<std::int64_t> last_sent;
        bool connected = false;
        std::size_t last_fresh = 1;
        std::int64_t idle_waited = 0;
        failures = 0;

        // A failed poll: report the drop once, then wait (capped exponential backoff with jitter).
        const auto failed = [&](const std::string& detail) -> std::int64_t {
            if (connected) {
                connected = false;
                report(ConnectionEvent::Type::disconnected, detail);
            }
            return backoff(failures);
        };

        while (!stopping) {
            advance();
            save_offset_if_moved();
            if (sendable != saved_offset && steady_ms() - saved_at >= kSettleMs) sendable = saved_offset;
            const bool settled = ledger->unconfirmed() == 0 && sendable == saved_offset;
            // Nothing new came last time and nothing more can be confirmed: wait for the pipeline, not the server.
            if (connected && last_fresh == 0 && !settled && sendable == last_sent && idle_waited < kIdleMaxMs) {
                co_await sleep_ms(kIdleStepMs);
                idle_waited += kIdleStepMs;
                continue;
            }
            idle_waited = 0;
            const bool first = !connected;
            const std::optional<std::int64_t> stored_offset = saved_offset;
            const std::optional<std::int64_t> stored_last_poll =
                first ? parse_int(host->load_state("last_poll")) : std::nullopt;
            // The first poll of a session and polls with something left to confirm return at once.
            const std::int64_t timeout_s = first || !settled ? 0 : settings.poll_timeout_s;
            std::string method = "getUpdates";
            std::string body = get_updates_body(sendable, settings.poll_limit, timeout_s, settings.allowed_updates);
            const std::int64_t timeout_ms = timeout_s * 1000 + request_timeout;
            auto response = co_await call(std::move(method), std::move(body), timeout_ms);
            if (!response) break;
            if (!*response) {
                const std::string detail = "getUpdates: " + (*response).error().message;
                const auto delay = failed(detail);
                logger.warn(detail + "; polling again in " + std::to_string(delay) + " ms", fields());
                co_await sleep_ms(delay);
                continue;
            }
            const ApiResponse api = parse_response((*response)->status, (*response)->body);
            if (!api.ok) {
                if (fatal(api, "getUpdates")) co_return;
                if (api.error_code == 429) {
                    // The scheduler holds the route for retry_after: the next acquire waits it out.
                    logger.warn(response_error(api, "getUpdates").message, fields());
                    continue;
                }
                if (api.error_code == 409) {
                    const bool webhook = api.description.find("webhook") != std::string::npos;
                    const std::string cause = webhook ? "a webhook is set for this bot (409 Conflict)"
                                                      : "another instance is polling this bot (409 Conflict)";
                    const auto delay = failed(cause);
                    logger.error(cause + ": Telegram says \"" + api.description + "\"; " +
                                     (webhook ? "delete the webhook (deleteWebhook) to poll"
                                              : "only one process may poll a bot token: stop the other one") +
                                     "; polling again in " + std::to_string(delay) + " ms",
                                 fields());
                    co_await sleep_ms(delay);
                    continue;
                }
                const Error error = response_error(api, "getUpdates");
                const auto delay = failed("getUpdates: " + error.message);
                logger.warn(error.message + "; polling again in " + std::to_string(delay) + " ms", fields());
                co_await sleep_ms(delay);
                continue;
            }
            auto updates = parse_updates(api.result, bot.id);
            if (!updates) {
                const auto delay = failed(updates.error().message);
                logger.error(updates.error().message + "; polling again in " + std::to_string(delay) + " ms", fields());
                co_await sleep_ms(delay);
                continue;
            }
            failures = 0;
            last_sent = sendable;
            std::int64_t newest_date = 0;
            for (const Update& update : *updates) newest_date = std::max(newest_date, update.date_ms);
            if (newest_date > 0) skew_ms = std::max(skew_ms, newest_date - wall_ms());
            if (first) {
                GapInputs inputs;
                inputs.stored_offset = stored_offset;
                inputs.last_poll_ms = stored_last_poll;
                if (!updates->empty()) inputs.first_update_id = updates->front().update_id;
                inputs.now_ms = std::max(server_now(), newest_date);
                const auto gap = detect_gap(inputs);
                if (gap) {
                    logger.warn("updates may have been lost while this bot was not polling: " + gap->reason, fields());
                    host->save_state("gap", gap->to_json());
                } else {
                    host->save_state("gap", "");
                }
                save_last_poll(true);
                connected = true;
                report(ConnectionEvent::Type::connected,
                       gap ? "getUpdates answered; " + gap->reason : std::string("getUpdates answered"));
            } else {
                save_last_poll(false);
            }
            auto taken = ledger->take(*updates, steady_ms());
            for (const auto& [id, why] : taken.not_delivered) {
                logger.debug("update " + std::to_string(id) + " not delivered: " + why, fields());
            }
            last_fresh = taken.fresh;
            for (Message& message : taken.deliver) {
                if (!deliver(std::move(message))) co_return;
            }
        }
    }

    // ---- sends --------------------------------------------------------------------------------------------------

    // The static buckets a send into @p chat takes, defined in the scheduler on first use.
    std::vector<std::string> buckets_for(const std::string& chat) {
        std::vector<std::string> names;
        std::lock_guard lock(mutex);
        const auto need = [&](std::string name, double rate, std::uint32_t burst) {
            if (buckets_defined.insert(name).second) scheduler->define(name, rate, burst);
            names.push_back(std::move(name));
        };
        if (settings.send_rate > 0) {
            const auto burst = static_cast<std::uint32_t>(std::max(1.0, std::floor(settings.send_rate / 6)));
            need("sendMessage", std::max(settings.send_rate - burst, 1.0) * kRateMargin, burst);
        }
        if (settings.chat_rate > 0) need("chat " + chat, settings.chat_rate * kRateMargin, settings.chat_burst);
        if (!chat.empty() && chat.front() == '-' && settings.group_per_minute > 0) {
            // At most group_per_minute in any minute: burst + rate * 60 s stays under it.
            const std::uint32_t per_minute = settings.group_per_minute;
            const std::uint32_t burst = std::max<std::uint32_t>(1, per_minute / 4);
            need("group " + chat, std::max<double>(per_minute - burst, 1) / 60.0 * kRateMargin, burst);
        }
        return names;
    }

    struct SendState {
        OutboundMessage message;
        std::string chat;
        std::vector<std::string> parts;
        std::vector<std::string> ids;
        SendCallback done;
    };

    void keep_progress(const SendState& state) {
        if (state.ids.empty() || state.message.idempotency_key.empty()) return;
        std::lock_guard lock(mutex);
        const std::uint64_t serial = ++progress_serial;
        progress[state.message.idempotency_key] = Progress{state.ids, serial};
        progress_order.emplace_back(state.message.idempotency_key, serial);
        while (progress_order.size() > kMaxProgress) {
            const auto& [key, oldest] = progress_order.front();
            if (auto it = progress.find(key); it != progress.end() && it->second.serial == oldest) progress.erase(it);
            progress_order.pop_front();
        }
    }

    std::vector<std::string> take_progress(const std::string& key) {
        if (key.empty()) return {};
        std::lock_guard lock(mutex);
        auto it = progress.find(key);
        if (it == progress.end()) return {};
        std::vector<std::string> ids = std::move(it->second.ids);
        progress.erase(it);  // its progress_order entry is skipped when it comes up
        return ids;
    }

    void finish_send(const std::shared_ptr<SendState>& state, Error error) {
        keep_progress(*state);
        state->done(std::move(error));
    }

    void send_part(std::shared_ptr<SendState> state) {
        const std::size_t index = state->ids.size();
        const std::string route = "sendMessage " + state->chat;
        auto self = shared_from_this();
        scheduler->acquire(RateRequest{route, buckets_for(state->chat), RequestPriority::live},
                           [self, state, route, index](Result<void> granted) {
                               if (!granted) {
                                   self->finish_send(state, granted.error());
                                   return;
                               }
                               self->post_part(state, route, index);
                           });
    }

    void post_part(std::shared_ptr<SendState> state, std::string route, std::size_t index) {
        const auto& message = state->message;
        std::string body = send_message_body(state->chat, state->parts[index],
                                             index == 0 ? message.reply_to : std::optional<std::string>());
        auto self = shared_from_this();
        send_http->request(
            "sendMessage", std::move(body), milliseconds(settings.request_timeout_ms),
            [self, state, route, index](Result<HttpResponse> response) {
                const std::size_t count = state->parts.size();
                const std::string what =
                    "send to chat " + state->chat +
                    (count > 1 ? " (part " + std::to_string(index + 1) + " of " + std::to_string(count) + ")"
                               : std::string());
                if (!response) {
                    self->scheduler->observe(route, RateLimitInfo{});
                    self->finish_send(state, fail_retryable("network_error", what + ": " + response.error().message));
                    return;
                }
                const ApiResponse api = parse_response(response->status, response->body);
                self->scheduler->observe(route, rate_limit_info(api));
                if (!api.ok) {
                    Error error = response_error(api, what);
                    if (error.code == "unreachable") {
                        self->logger.warn(error.message, LogFields{self->connection, state->chat, {}});
                    }
                    self->finish_send(state, std::move(error));
                    return;
                }
                // Telegram took it; without an id it cannot be deleted, but sending it again would double it.
                auto id = parse_sent_message_id(api.result);
                state->ids.push_back(id ? *id : std::string());
                if (state->ids.size() < count) {
                    self->send_part(state);
                    return;
                }
                std::string joined;
                for (const auto& part : state->ids) joined += (joined.empty() ? "" : ",") + part;
                state->done(SentMessage{std::move(joined)});
            });
    }

    void delete_next(std::string chat, std::vector<std::string> ids, std::size_t index, RemoveCallback done) {
        if (index == ids.size()) {
            done(Result<void>{});
            return;
        }
        const std::string route = "deleteMessage " + chat;
        auto self = shared_from_this();
        scheduler->acquire(
            RateRequest{route, {}, RequestPriority::live},
            [self, route, chat = std::move(chat), ids = std::move(ids), index,
             done = std::move(done)](Result<void> granted) mutable {
                if (!granted) {
                    done(granted.error());
                    return;
                }
                const std::string id = ids[index];
                self->send_http->request(
                    "deleteMessage", delete_message_body(chat, id), milliseconds(self->settings.request_timeout_ms),
                    [self, route, chat, ids = std::move(ids), index, done = std::move(done),
                     id](Result<HttpResponse> response) mutable {
                        const std::string what = "delete message " + id + " in chat " + chat;
                        if (!response) {
                            self->scheduler->observe(route, RateLimitInfo{});
                            done(fail_retryable("network_error", what + ": " + response.error().message));
                            return;
                        }
                        const ApiResponse api = parse_response(response->status, response->body);
                        self->scheduler->observe(route, rate_limit_info(api));
                        if (!api.ok) {
                            Error error = response_error(api, what);
                            if (error.code != "message_not_found") {  // already gone is what was asked
                                done(std::move(error));
                                return;
                            }
                        }
                        self->delete_next(std::move(chat), std::move(ids), index + 1, std::move(done));
                    });
            });
    }
};

TelegramConnector::TelegramConnector(const PluginContext& context, TelegramSettings settings) {
    auto api = parse_endpoint(settings.api_base);
    if (!api) throw ErrorException(fail("bad_config", "api_base: " + api.error().message));
    poll_runner_ = std::make_unique<Runner>();
    send_runner_ = std::make_unique<Runner>();
    core_ = std::make_shared<Core>(poll_runner_->io, send_runner_->io, context, std::move(settings), *api);
}

TelegramConnector::~TelegramConnector() {
    stop();
    core_->poll_http->shutdown();
    core_->send_http->shutdown();
    // Sends still in flight are abandoned here (the host drained deliveries before destroying connectors).
    poll_runner_->finish();
    send_runner_->finish();
    core_.reset();
    poll_runner_.reset();
    send_runner_.reset();
}

ConnectorCapabilities TelegramConnector::capabilities() const {
    ConnectorCapabilities capabilities;
    capabilities.can_delete = true;
    capabilities.history = false;  // the Bot API has no history: recovery is the getUpdates offset
    capabilities.private_messages = true;
    capabilities.max_text_length = 0;  // longer texts are split at 4096 UTF-16 code units (see README)
    return capabilities;
}

void TelegramConnector::start(ConnectorHost& host) {
    auto core = core_;
    core->host = &host;
    core->scheduler = &host.rate_limits();
    {
        std::lock_guard lock(core->intake_mutex);
        core->intake_open = true;
    }
    {
        std::lock_guard lock(core->done_mutex);
        core->poll_running = true;
    }
    asio::co_spawn(core->poll_io, core->poll_loop(), asio::detached);
}

void TelegramConnector::stop() {
    auto core = core_;
    {
        std::lock_guard lock(core->intake_mutex);
        core->intake_open = false;
    }
    core->stopping = true;
    asio::post(core->poll_io, [core] {
        if (core->cancel_wait) core->cancel_wait();
        core->poll_http->shutdown();
    });
    // The loop ends within one step (its waits are cancelled); its last saves happen before stop() returns.
    std::unique_lock lock(core->done_mutex);
    if (!core->done_cv.wait_for(lock, std::chrono::seconds(10), [&] { return !core->poll_running; })) {
        core->logger.error("the poll loop did not stop within 10 s", core->fields());
    }
}

void TelegramConnector::send(const OutboundMessage& message, SendCallback done) {
    auto core = core_;
    // The delivery engine's grant on the send route ends here: the chat's own turn (its buckets) follows.
    core->scheduler->observe(send_route(message.to), RateLimitInfo{});
    if (utf16_length(message.text) == 0 || message.text.find_first_not_of(" \t\r\n") == std::string::npos) {
        done(fail("empty_text", "send to chat " + message.to.target + ": Telegram does not send an empty text"));
        return;
    }
    auto state = std::make_shared<Core::SendState>();
    state->message = message;
    state->chat = message.to.target;  // a person's private chat has the person's user id
    state->parts = split_text(message.text);
    state->ids = core->take_progress(message.idempotency_key);
    if (state->ids.size() >= state->parts.size()) state->ids.clear();  // not the same text: start over
    state->done = std::move(done);
    core->send_part(std::move(state));
}

void TelegramConnector::remove(const Address& where, const std::string& message_id, RemoveCallback done) {
    auto ids = split_ids(message_id);
    if (ids.empty()) {
        done(fail("message_not_found", "delete: no message id given"));
        return;
    }
    core_->delete_next(where.target, std::move(ids), 0, std::move(done));
}

}  // namespace switchboard::telegram
