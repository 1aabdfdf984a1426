#include "host/work_sharing.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace switchboard::host {

namespace {

using json = nlohmann::json;
using SteadyClock = std::chrono::steady_clock;

constexpr const char* kBots = "bots";          // the group taking inbound messages
constexpr const char* kSenders = "senders";    // the group taking sends (only holders take)
constexpr const char* kResults = "results";    // the group taking a host's outcomes (only that host takes)
// Inbound messages taken per poll: small enough that a burst spreads over the hosts.
constexpr std::size_t kTakeAtOnce = 32;

std::string inbound_queue(const std::string& connection) { return "inbound:" + connection; }
std::string send_queue(const std::string& connection) { return "send:" + connection; }
std::string result_queue(const std::string& host) { return "result:" + host; }

json error_json(const Error& error) {
    return {{"code", error.code},
            {"message", error.message},
            {"retryable", error.retryable},
            {"retry_after_ms", error.retry_after_ms}};
}

}  // namespace

std::string encode_message(const Message& message) {
    json out{{"id", message.id},
             {"connection", message.connection},
             {"channel", message.channel},
             {"author", {{"id", message.author.id}, {"name", message.author.display_name}, {"bot", message.author.is_bot}}},
             {"text", message.text},
             {"ts", message.timestamp_ms},
             {"kind", to_string(message.kind)},
             {"recovered", message.recovered}};
    if (message.reply_to) out["reply_to"] = *message.reply_to;
    return out.dump();
}

Result<Message> decode_message(std::string_view payload) {
    try {
        const json in = json::parse(payload);
        Message message;
        message.id = in.at("id").get<std::string>();
        message.connection = in.at("connection").get<std::string>();
        message.channel = in.at("channel").get<std::string>();
        const json& author = in.at("author");
        message.author = Author{author.at("id").get<std::string>(), author.at("name").get<std::string>(),
                                author.at("bot").get<bool>()};
        message.text = in.at("text").get<std::string>();
        message.timestamp_ms = in.at("ts").get<std::int64_t>();
        const auto kind = parse_message_kind(in.at("kind").get<std::string>());
        if (!kind) return fail("bad_queue_item", "unknown message kind '" + in.at("kind").get<std::string>() + "'");
        message.kind = *kind;
        if (auto it = in.find("reply_to"); it != in.end()) message.reply_to = it->get<std::string>();
        message.recovered = in.at("recovered").get<bool>();
        return message;
    } catch (const json::exception& e) {
        return fail("bad_queue_item", std::string("not a message as a host queues it: ") + e.what());
    }
}

/// A connection held by another host, as the delivery engine sees it.
class WorkSharing::Remote final : public Connector {
public:
    Remote(WorkSharing& owner, std::string connection, std::shared_ptr<Connector> local)
        : owner_(owner), connection_(std::move(connection)), capabilities_(local->capabilities()) {
        capabilities_.can_delete = false;  // a deletion is not passed on (compensation stays on the holder's sends)
    }
    ConnectorCapabilities capabilities() const override { return capabilities_; }
    void start(ConnectorHost&) override {}
    void stop() override {}
    void send(const OutboundMessage& message, SendCallback done) override {
        owner_.send_request(connection_, message, std::move(done));
    }

private:
    WorkSharing& owner_;
    const std::string connection_;
    ConnectorCapabilities capabilities_;
};

WorkSharing::WorkSharing(SharedQueues& queues, Store& store, std::vector<std::string> connections,
                         WorkSharingOptions options, std::function<void(Message)> handle, LocalSend send,
                         Logger& logger)
    : queues_(queues),
      store_(store),
      connections_(std::move(connections)),
      options_(std::move(options)),
      handle_(std::move(handle)),
      send_(std::move(send)),
      logger_(logger) {}

WorkSharing::~WorkSharing() { stop(std::chrono::milliseconds(0)); }

void WorkSharing::start() {
    writer_ = std::thread([this] { write_loop(); });
    poller_ = std::thread([this] { poll_loop(); });
}

void WorkSharing::stop(std::chrono::milliseconds timeout) {
    {
        std::unique_lock lock(mutex_);
        if (!writer_.joinable() && !poller_.joinable()) return;
        stopping_ = true;
        wake_.notify_all();
    }
    if (poller_.joinable()) poller_.join();
    {
        std::unique_lock lock(mutex_);
        if (!wake_.wait_for(lock, timeout, [this] { return pushes_.empty() && !writing_; })) {
            logger_.warn("work sharing: " + std::to_string(pushes_.size()) +
                         " item(s) not pushed before the stop (messages among them are recovered by the next holder)");
        }
        pushes_.clear();
        wake_.notify_all();
    }
    if (writer_.joinable()) writer_.join();
    std::map<std::string, Waiting> waiting;
    {
        std::lock_guard lock(mutex_);
        waiting.swap(waiting_);
    }
    for (auto& [id, w] : waiting) {
        w.done(fail_retryable("shutting_down", "the host stopped before the holder answered this send"));
    }
}

void WorkSharing::publish(const Message& message) {
    enqueue(Push{inbound_queue(message.connection), encode_message(message), {}, {}});
    std::lock_guard lock(mutex_);
    ++stats_["published"];
}

void WorkSharing::serve(const std::string& connection, bool serving) {
    std::lock_guard lock(mutex_);
    if (serving) {
        serving_.insert(connection);
    } else {
        serving_.erase(connection);
    }
}

std::shared_ptr<Connector> WorkSharing::remote(const std::string& connection, std::shared_ptr<Connector> local) {
    return std::make_shared<Remote>(*this, connection, std::move(local));
}

std::map<std::string, std::uint64_t> WorkSharing::stats() const {
    std::lock_guard lock(mutex_);
    return stats_;
}

void WorkSharing::enqueue(Push push) {
    std::lock_guard lock(mutex_);
    pushes_.push_back(std::move(push));
    wake_.notify_all();
}

// Pushes in order; a failed push is tried again (with backoff) before anything after it, so a connection's messages
// keep their order in its queue.
void WorkSharing::write_loop() {
    std::chrono::milliseconds backoff{0};
    bool warned = false;
    std::unique_lock lock(mutex_);
    for (;;) {
        wake_.wait(lock, [this] { return !pushes_.empty() || (stopping_ && pushes_.empty()); });
        if (pushes_.empty()) return;
        writing_ = true;
        Push push = pushes_.front();
        lock.unlock();
        auto pushed = queues_.push(push.queue, push.payload);
        if (pushed && !push.confirm.empty()) {
            if (auto confirmed = queues_.done(push.confirm_queue, kSenders, push.confirm); !confirmed) {
                logger_.warn("work sharing: could not confirm a send (" + confirmed.error().to_string() +
                             "); another holder may send it again (a nonce keeps Discord from doubling it)");
            }
        }
        lock.lock();
        writing_ = false;
        if (pushed) {
            if (!pushes_.empty()) pushes_.pop_front();
            backoff = std::chrono::milliseconds(0);
            warned = false;
        } else {
            if (!warned) {
                logger_.warn("work sharing: could not push to '" + push.queue + "' (" + pushed.error().to_string() +
                             "); trying again, in order");
            }
            warned = true;
            backoff = std::clamp(backoff * 2, std::chrono::milliseconds(50), std::chrono::milliseconds(2000));
            wake_.wait_for(lock, backoff, [this] { return stopping_ && pushes_.empty(); });
        }
        wake_.notify_all();
    }
}

void WorkSharing::poll_loop() {
    std::chrono::milliseconds idle{1};
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        lock.unlock();
        const bool busy = poll_once();
        lock.lock();
        idle = busy ? std::chrono::milliseconds(1) : std::min(idle * 2, std::chrono::milliseconds(20));
        wake_.wait_for(lock, idle, [this] { return stopping_; });
    }
}

bool WorkSharing::poll_once() {
    bool busy = false;
    // Inbound messages of every connection, for this host's bots.
    std::vector<std::string> inbound;
    for (const std::string& connection : connections_) inbound.push_back(inbound_queue(connection));
    auto items = queues_.take(inbound, kBots, options_.host_id, kTakeAtOnce, options_.reclaim_after);
    if (!items) {
        logger_.warn("work sharing: could not take inbound messages (" + items.error().to_string() + ")");
    } else {
        busy = busy || !items->empty();
        for (QueueItem& item : *items) {
            auto message = decode_message(item.payload);
            if (!message) {
                logger_.error("work sharing: dropped item " + item.id + " of '" + item.queue + "': " +
                              message.error().message);
                std::vector<std::string> id{item.id};
                (void)queues_.done(item.queue, kBots, id);
                continue;
            }
            MessageKey key{message->connection, message->channel, message->id};
            {
                std::lock_guard lock(mutex_);
                taken_.push_back(Taken{item.queue, item.id, std::move(key)});
                ++stats_["taken"];
            }
            handle_(std::move(*message));
        }
    }
    // Sends other hosts pass through the connections this host holds.
    std::vector<std::string> sends;
    {
        std::lock_guard lock(mutex_);
        for (const std::string& connection : serving_) sends.push_back(send_queue(connection));
    }
    if (!sends.empty()) {
        auto requests = queues_.take(sends, kSenders, options_.host_id, 128, options_.reclaim_after);
        if (requests) {
            busy = busy || !requests->empty();
            serve_sends(std::move(*requests));
        }
    }
    // Outcomes of the sends this host passed on.
    bool asked = false;
    {
        std::lock_guard lock(mutex_);
        asked = !waiting_.empty();
    }
    if (asked) {
        std::vector<std::string> mine{result_queue(options_.host_id)};
        auto results = queues_.take(mine, kResults, options_.host_id, 256, options_.reclaim_after);
        if (results) {
            busy = busy || !results->empty();
            take_results(std::move(*results));
        }
        expire_waiting();
    }
    confirm_processed();
    return busy;
}

// Taken messages the store now counts as processed (committed here, or dropped as duplicates) are confirmed.
void WorkSharing::confirm_processed() {
    std::vector<Taken> taken;
    {
        std::lock_guard lock(mutex_);
        taken.swap(taken_);
    }
    std::map<std::string, std::vector<std::string>> done;
    std::vector<Taken> open;
    // One dedup lookup for all of them.
    std::vector<Message> keys(taken.size());
    for (std::size_t i = 0; i < taken.size(); ++i) {
        keys[i].connection = taken[i].key.connection;
        keys[i].channel = taken[i].key.channel;
        keys[i].id = taken[i].key.message_id;
    }
    const auto processed = taken.empty() ? Result<std::vector<bool>>(std::vector<bool>{}) : store_.are_processed(keys);
    for (std::size_t i = 0; i < taken.size(); ++i) {
        if (processed && (*processed)[i]) {
            done[taken[i].queue].push_back(taken[i].id);
        } else {
            open.push_back(std::move(taken[i]));
        }
    }
    for (auto& [queue, ids] : done) {
        if (auto confirmed = queues_.done(queue, kBots, ids); !confirmed) {
            logger_.warn("work sharing: could not confirm handled messages (" + confirmed.error().to_string() +
                         "); another host may take them again, and drop them as duplicates");
        }
    }
    std::lock_guard lock(mutex_);
    stats_["confirmed"] += taken.size() - open.size();
    taken_.insert(taken_.begin(), std::make_move_iterator(open.begin()), std::make_move_iterator(open.end()));
}

void WorkSharing::serve_sends(std::vector<QueueItem> items) {
    for (QueueItem& item : items) {
        json request;
        OutboundMessage message;
        std::string id;
        std::string origin;
        try {
            request = json::parse(item.payload);
            id = request.at("id").get<std::string>();
            origin = request.at("origin").get<std::string>();
            auto to = Address::parse(request.at("to").get<std::string>());
            if (!to) throw std::invalid_argument("bad address");
            message.to = std::move(*to);
            message.text = request.at("text").get<std::string>();
            message.idempotency_key = request.at("key").get<std::string>();
            if (auto it = request.find("reply_to"); it != request.end()) message.reply_to = it->get<std::string>();
        } catch (const std::exception& e) {
            logger_.error("work sharing: dropped send " + item.id + " of '" + item.queue + "': " + e.what());
            std::vector<std::string> drop{item.id};
            (void)queues_.done(item.queue, kSenders, drop);
            continue;
        }
        {
            std::lock_guard lock(mutex_);
            // No longer held here: the next holder takes it once it waited.
            if (!serving_.contains(message.to.connection)) continue;
            ++stats_["sent_for_others"];
        }
        send_(message, [this, id, origin, queue = item.queue, item_id = item.id](Result<SentMessage> sent) {
            json outcome{{"id", id}, {"ok", sent.has_value()}};
            if (sent) {
                outcome["message_id"] = sent->message_id;
            } else {
                outcome["error"] = error_json(sent.error());
            }
            enqueue(Push{result_queue(origin), outcome.dump(), {item_id}, queue});
        });
    }
}

void WorkSharing::take_results(std::vector<QueueItem> items) {
    std::vector<std::string> ids;
    for (QueueItem& item : items) {
        ids.push_back(item.id);
        Result<SentMessage> outcome = fail("bad_queue_item", "unreadable outcome");
        std::string id;
        try {
            const json in = json::parse(item.payload);
            id = in.at("id").get<std::string>();
            if (in.at("ok").get<bool>()) {
                outcome = SentMessage{in.at("message_id").get<std::string>()};
            } else {
                const json& error = in.at("error");
                outcome = Error{error.at("code").get<std::string>(), error.at("message").get<std::string>(),
                                error.at("retryable").get<bool>(), error.at("retry_after_ms").get<std::int64_t>()};
            }
        } catch (const json::exception& e) {
            logger_.error("work sharing: dropped outcome " + item.id + ": " + e.what());
            continue;
        }
        SendCallback done;
        {
            std::lock_guard lock(mutex_);
            auto it = waiting_.find(id);
            if (it == waiting_.end()) continue;  // timed out already
            done = std::move(it->second.done);
            waiting_.erase(it);
            ++stats_["sent_through_others"];
        }
        done(std::move(outcome));
    }
    if (!ids.empty()) (void)queues_.done(result_queue(options_.host_id), kResults, ids);
}

void WorkSharing::expire_waiting() {
    std::vector<SendCallback> expired;
    {
        std::lock_guard lock(mutex_);
        const auto now = SteadyClock::now();
        for (auto it = waiting_.begin(); it != waiting_.end();) {
            if (it->second.deadline <= now) {
                expired.push_back(std::move(it->second.done));
                it = waiting_.erase(it);
            } else {
                ++it;
            }
        }
    }
    for (auto& done : expired) {
        done(fail_retryable("remote_send_timeout",
                            "no host holding the connection answered this send within " +
                                std::to_string(options_.send_timeout.count()) + " ms",
                            1000));
    }
}

void WorkSharing::send_request(const std::string& connection, const OutboundMessage& message, SendCallback done) {
    std::string id;
    {
        std::lock_guard lock(mutex_);
        id = options_.host_id + "-" + std::to_string(++next_request_);
        waiting_[id] = Waiting{std::move(done), SteadyClock::now() + options_.send_timeout};
    }
    json request{{"id", id},
                 {"origin", options_.host_id},
                 {"to", message.to.to_string()},
                 {"text", message.text},
                 {"key", message.idempotency_key}};
    if (message.reply_to) request["reply_to"] = *message.reply_to;
    enqueue(Push{send_queue(connection), request.dump(), {}, {}});
}

}  // namespace switchboard::host
