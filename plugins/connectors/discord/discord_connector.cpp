#include "discord_connector.hpp"

#include <switchboard/rate_limit.hpp>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <thread>

#include <atomic>
#include <map>
#include <set>
#include <mutex>

namespace switchboard::discord {
namespace {

/// What a REST call hands back: the response (or a network error) and what it said about limits.
using CallDone = std::function<void(Result<HttpResponse>, const RateLimitInfo&)>;

bool success(unsigned status) { return status >= 200 && status < 300; }

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

// The connector runs on an io_context and thread of its own, not the host's: Asio keeps per-thread state in template
// statics, and a plugin built with hidden visibility has its own copies of them, so handlers this library registered
// crashed when the host's threads ran them (the IRC connector found the same).
struct DiscordConnector::Runner {
    boost::asio::io_context io{1};
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard = boost::asio::make_work_guard(io);
    std::thread thread{[this] { io.run(); }};

    void finish() {
        guard.reset();
        io.stop();
        if (thread.joinable()) thread.join();
    }
};

struct DiscordConnector::Core : std::enable_shared_from_this<DiscordConnector::Core> {
    Core(boost::asio::io_context& io_, const PluginContext& context, DiscordSettings settings_, Endpoint api)
        : io(io_), logger(context.logger()), connection(context.instance_name()),
          settings(std::move(settings_)), rest(make_rest_client(io, std::move(api), settings, logger)) {}

    boost::asio::io_context& io;
    Logger& logger;
    std::string connection;
    DiscordSettings settings;
    std::shared_ptr<RestClient> rest;
    std::shared_ptr<Gateway> gateway;
    ConnectorHost* host = nullptr;
    RateLimitScheduler* scheduler = nullptr;

    mutable std::mutex mutex;
    std::string self_id;
    std::map<std::string, std::string, std::less<>> dm_channels;  // user id -> DM channel id
    std::set<std::string, std::less<>> dm_channel_ids;              // every DM channel seen or opened

    // One REST request, acquired on @p route first unless the delivery engine already did, and always observed.
    void call(std::string route, bool acquire, RequestPriority priority, std::string method, std::string target,
              std::string body, CallDone done) {
        auto self = shared_from_this();
        auto go = [self, route, method, target, body, done]() mutable {
            self->rest->request(std::move(method), std::move(target), std::move(body),
                                [self, route, done](Result<HttpResponse> response) {
                                    RateLimitInfo info;
                                    if (response) info = parse_rate_limit(response->status, response->rate, response->body);
                                    if (self->scheduler) self->scheduler->observe(route, info);
                                    done(std::move(response), info);
                                });
        };
        if (!acquire || scheduler == nullptr) {
            go();
            return;
        }
        scheduler->acquire(RateRequest{route, {}, priority}, [go, done](Result<void> granted) mutable {
            if (!granted) {
                done(granted.error(), RateLimitInfo{});
                return;
            }
            go();
        });
    }

    std::optional<std::string> cached_dm(const std::string& user) const {
        std::lock_guard lock(mutex);
        auto it = dm_channels.find(user);
        if (it == dm_channels.end()) return std::nullopt;
        return it->second;
    }

    void remember_dm(const std::string& user, const std::string& channel) {
        std::lock_guard lock(mutex);
        dm_channels[user] = channel;
        dm_channel_ids.insert(channel);
    }

    // What a channel's history messages are: private in a DM channel, else group (guild channels, which is what
    // recovery watches).
    MessageKind kind_of(const std::string& channel) const {
        std::lock_guard lock(mutex);
        return dm_channel_ids.count(channel) != 0 ? MessageKind::private_message : MessageKind::group;
    }

    void forget_dm(const std::string& user) {
        std::lock_guard lock(mutex);
        dm_channels.erase(user);
    }

    // The channel for @p to: itself, or the person's DM channel (opened once with POST /users/@me/channels).
    void resolve_channel(const Address& to, std::function<void(Result<std::string>)> done) {
        if (!to.is_user) {
            done(ok_string(to.target));
            return;
        }
        if (auto cached = cached_dm(to.target)) {
            done(ok_string(*cached));
            return;
        }
        const std::string user = to.target;
        const std::string body = nlohmann::json{{"recipient_id", user}}.dump();
        auto self = shared_from_this();
        call("POST /users/@me/channels", true, RequestPriority::live, "POST", "/users/@me/channels", body,
             [self, user, done](Result<HttpResponse> response, const RateLimitInfo& info) {
                 if (!response) {
                     done(response.error());
                     return;
                 }
                 if (!success(response->status)) {
                     done(response_error(response->status, response->body, info, "opening a DM with user " + user));
                     return;
                 }
                 auto channel = parse_dm_channel(response->body);
                 if (!channel) {
                     done(fail_retryable("bad_payload", "opening a DM with user " + user + ": " + channel.error().message));
                     return;
                 }
                 self->remember_dm(user, *channel);
                 done(ok_string(*channel));
             });
    }

    static std::string describe(const Address& to, const std::string& channel) {
        return to.is_user ? "send to user " + to.target + " (DM channel " + channel + ")" : "send to channel " + channel;
    }

    struct SendState {
        OutboundMessage message;
        std::string channel;
        std::vector<std::string> parts;
        std::vector<std::string> ids;
        SendCallback done;
    };

    void send_part(std::shared_ptr<SendState> state) {
        const std::size_t index = state->ids.size();
        const auto& message = state->message;
        std::optional<std::string> nonce;
        if (!message.idempotency_key.empty()) nonce = nonce_for(message.idempotency_key, index);
        std::string body = create_message_body(state->parts[index], nonce, index == 0 ? message.reply_to : std::nullopt);
        auto self = shared_from_this();
        // The delivery engine acquired the send route for the first part; later parts acquire their own turn.
        call(send_route(message.to), index > 0, RequestPriority::live, "POST", "/channels/" + state->channel + "/messages",
             std::move(body), [self, state](Result<HttpResponse> response, const RateLimitInfo& info) {
                 const std::string what = describe(state->message.to, state->channel);
                 if (!response) {
                     state->done(fail_retryable(response.error().code, what + ": " + response.error().message,
                                                response.error().retry_after_ms));
                     return;
                 }
                 if (!success(response->status)) {
                     Error error = response_error(response->status, response->body, info, what);
                     if (state->message.to.is_user && response->status == 404) self->forget_dm(state->message.to.target);
                     state->done(std::move(error));
                     return;
                 }
                 auto id = parse_created_message(response->body);
                 if (!id) {
                     // Discord took it; a resend with the same nonce returns the same message.
                     state->done(fail_retryable("bad_payload", what + ": " + id.error().message));
                     return;
                 }
                 state->ids.push_back(*id);
                 if (state->ids.size() < state->parts.size()) {
                     self->send_part(state);
                     return;
                 }
                 std::string joined;
                 for (const auto& part_id : state->ids) joined += (joined.empty() ? "" : ",") + part_id;
                 state->done(SentMessage{std::move(joined)});
             });
    }

    void delete_next(std::string channel, std::vector<std::string> ids, std::size_t index, RemoveCallback done) {
        if (index == ids.size()) {
            done(Result<void>{});
            return;
        }
        auto self = shared_from_this();
        const std::string id = ids[index];
        call("DELETE /channels/" + channel + "/messages", true, RequestPriority::live, "DELETE",
             "/channels/" + channel + "/messages/" + id, {},
             [self, channel, ids = std::move(ids), index, done, id](Result<HttpResponse> response,
                                                                    const RateLimitInfo& info) mutable {
                 if (!response) {
                     done(response.error());
                     return;
                 }
                 if (!success(response->status)) {
                     Error error = response_error(response->status, response->body, info,
                                                  "delete message " + id + " in channel " + channel);
                     if (error.code != "unknown_message") {  // already gone is what we wanted
                         done(std::move(error));
                         return;
                     }
                 }
                 self->delete_next(std::move(channel), std::move(ids), index + 1, std::move(done));
             });
    }
};

DiscordConnector::DiscordConnector(const PluginContext& context, DiscordSettings settings) {
    auto api = parse_endpoint(settings.api_base);
    if (!api) throw ErrorException(fail("bad_config", "api_base: " + api.error().message));
    runner_ = std::make_unique<Runner>();
    core_ = std::make_shared<Core>(runner_->io, context, std::move(settings), std::move(*api));
}

DiscordConnector::~DiscordConnector() {
    if (core_->gateway) core_->gateway->stop();
    core_->rest->shutdown();
    // Sends still in flight are abandoned here (the host drained deliveries before destroying connectors); their
    // coroutines are destroyed with the io_context, after the last reference to the core here is gone.
    runner_->finish();
    core_.reset();
    runner_.reset();
}

ConnectorCapabilities DiscordConnector::capabilities() const {
    ConnectorCapabilities capabilities;
    capabilities.can_delete = true;
    capabilities.history = true;
    capabilities.private_messages = true;
    capabilities.max_text_length = 0;  // longer texts are split into several messages (see README)
    return capabilities;
}

void DiscordConnector::start(ConnectorHost& host) {
    auto core = core_;
    core->host = &host;
    core->scheduler = &host.rate_limits();
    const auto burst = static_cast<std::uint32_t>(std::max(1.0, core->settings.global_rate));
    core->scheduler->define("global", core->settings.global_rate, burst);
    GatewayHooks hooks;
    std::weak_ptr<Core> weak = core;
    hooks.fetch_gateway_bot = [weak](HttpCallback done) {
        auto core = weak.lock();
        if (!core) return;
        core->call("GET /gateway/bot", true, RequestPriority::live, "GET", "/gateway/bot", {},
                   [done](Result<HttpResponse> response, const RateLimitInfo&) { done(std::move(response)); });
    };
    hooks.on_ready = [weak](const ReadyInfo& ready) {
        if (auto core = weak.lock()) {
            std::lock_guard lock(core->mutex);
            core->self_id = ready.user_id;
        }
    };
    hooks.on_message = [weak](Message message) {
        auto core = weak.lock();
        if (!core) return;
        if (message.kind == MessageKind::private_message) core->remember_dm(message.author.id, message.channel);
        core->host->deliver(std::move(message));
    };
    hooks.on_event = [weak](const ConnectionEvent& event) {
        if (auto core = weak.lock()) core->host->report(event);
    };
    hooks.load_state = [weak](const std::string& key) -> std::optional<std::string> {
        if (auto core = weak.lock()) return core->host->load_state(key);
        return std::nullopt;
    };
    hooks.save_state = [weak](std::string key, std::string value) {
        if (auto core = weak.lock()) core->host->save_state(std::move(key), std::move(value));
    };
    core->gateway = make_gateway(core->io, core->settings, std::move(hooks), core->logger);
    core->gateway->start();
}

void DiscordConnector::stop() {
    // Only intake stops: sends still draining after stop() keep using REST until the connector is destroyed.
    if (core_->gateway) core_->gateway->stop();
}

void DiscordConnector::send(const OutboundMessage& message, SendCallback done) {
    auto state = std::make_shared<Core::SendState>();
    state->message = message;
    state->parts = split_text(message.text, 2000);
    state->done = std::move(done);
    auto core = core_;
    core->resolve_channel(message.to, [core, state](Result<std::string> channel) {
        if (!channel) {
            // The engine's grant on the send route saw no response of its own.
            if (core->scheduler) core->scheduler->observe(send_route(state->message.to), RateLimitInfo{});
            state->done(channel.error());
            return;
        }
        state->channel = *channel;
        core->send_part(state);
    });
}

void DiscordConnector::remove(const Address& where, const std::string& message_id, RemoveCallback done) {
    auto ids = split_ids(message_id);
    if (ids.empty()) {
        done(fail("unknown_message", "delete: no message id given"));
        return;
    }
    auto core = core_;
    core->resolve_channel(where, [core, ids = std::move(ids), done](Result<std::string> channel) mutable {
        if (!channel) {
            done(channel.error());
            return;
        }
        core->delete_next(*channel, std::move(ids), 0, std::move(done));
    });
}

void DiscordConnector::fetch_history(const HistoryRequest& request, HistoryCallback done) {
    const std::uint32_t limit = std::clamp<std::uint32_t>(request.limit, 1, 100);
    std::string target = "/channels/" + request.channel + "/messages?limit=" + std::to_string(limit);
    if (request.after_message_id) target += "&after=" + *request.after_message_id;
    const bool newest = !request.after_message_id.has_value();
    auto core = core_;
    const std::string channel = request.channel;
    core->call("GET /channels/" + channel + "/messages", true, RequestPriority::backfill, "GET", std::move(target), {},
               [core, channel, limit, newest, done](Result<HttpResponse> response, const RateLimitInfo& info) {
                   const std::string what = "history of channel " + channel;
                   if (!response) {
                       done(fail_retryable(response.error().code, what + ": " + response.error().message));
                       return;
                   }
                   if (!success(response->status)) {
                       done(response_error(response->status, response->body, info, what));
                       return;
                   }
                   std::string self;
                   {
                       std::lock_guard lock(core->mutex);
                       self = core->self_id;
                   }
                   std::size_t skipped = 0;
                   auto page = parse_history(response->body, limit, self, core->kind_of(channel), skipped);
                   if (!page) {
                       done(fail_retryable(page.error().code, what + ": " + page.error().message));
                       return;
                   }
                   if (skipped > 0) {
                       core->logger.warn(what + ": skipped " + std::to_string(skipped) + " message(s) that did not parse",
                                         LogFields{core->connection, channel, {}});
                   }
                   if (newest) page->complete = true;  // nothing is newer than the newest page
                   done(std::move(*page));
               });
}

GatewayStats DiscordConnector::gateway_stats() const {
    return core_->gateway ? core_->gateway->stats() : GatewayStats{};
}

}  // namespace switchboard::discord
