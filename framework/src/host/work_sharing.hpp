#pragma once
// Work sharing between hosts (DESIGN §8, `switchboard.cluster.work_sharing: true`, with a store that offers
// SharedQueues — the redis store's Redis Streams):
// - inbound: the host holding a connection's lease does not handle that connection's messages itself; it pushes
//   them, in order, to the queue `inbound:<connection>`. Every host (the holder too) takes messages from every
//   connection's queue as one consumer of the group `bots` and hands them to its own pipeline (dedup, bots, routes,
//   commit). A taken message is confirmed once the store says it was processed; one a host took and never
//   confirmed (the host died) goes to another after `reclaim_after`. At least once from the queue; the dedup ledger
//   makes it once.
// - sends: a host sends through a connection it does not hold by pushing the send to `send:<connection>`; the
//   holder takes it, sends it through its own delivery engine (rate limits, retries, the outbox entry), and pushes
//   the outcome to `result:<host id>` of the host that
//   asked. The asking host's delivery engine sees an ordinary connector (RemoteConnector) whose send completes
//   when the outcome comes back, or fails retryable after `send_timeout`.

#include "host/logging.hpp"

#include <switchboard/connector.hpp>
#include <switchboard/store.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace switchboard::host {

/// A message as one queue item's payload (JSON; `raw` is left out), and back.
[[nodiscard]] std::string encode_message(const Message& message);
[[nodiscard]] Result<Message> decode_message(std::string_view payload);

struct WorkSharingOptions {
    std::string host_id;
    /// An item a host took and has not confirmed for this long goes to another host.
    std::chrono::milliseconds reclaim_after{5000};
    /// A send passed to the holder fails retryable when no outcome came back within this.
    std::chrono::milliseconds send_timeout{30000};
};

class WorkSharing {
public:
    /// Sends one message through this host's own connection (the holder's delivery engine); @p done once.
    using LocalSend = std::function<void(const OutboundMessage& message, SendCallback done)>;

    /// @p handle receives every message this host takes (the pipeline's submit); @p send carries out the sends
    /// this host serves for others.
    WorkSharing(SharedQueues& queues, Store& store, std::vector<std::string> connections, WorkSharingOptions options,
                std::function<void(Message)> handle, LocalSend send, Logger& logger);
    ~WorkSharing();
    WorkSharing(const WorkSharing&) = delete;
    WorkSharing& operator=(const WorkSharing&) = delete;

    void start();
    /// Stops taking; waits (up to @p timeout) until what was queued for pushing is pushed; stops the threads.
    void stop(std::chrono::milliseconds timeout);

    /// The holder's inbound path: queues @p message for `inbound:<its connection>`, in call order. Never blocks.
    void publish(const Message& message);

    /// While this host holds @p connection: serve other hosts' sends to it (@p serving false: stop).
    void serve(const std::string& connection, bool serving);

    /// A connector that sends through whichever host holds @p connection; capabilities as @p local's.
    [[nodiscard]] std::shared_ptr<Connector> remote(const std::string& connection, std::shared_ptr<Connector> local);

    /// Counters for /api/status: taken, confirmed, published, sent for others, sent through others.
    [[nodiscard]] std::map<std::string, std::uint64_t> stats() const;

private:
    class Remote;
    struct Push {
        std::string queue;
        std::string payload;
        std::vector<std::string> confirm;  // then done() these ids of `confirm_queue`, group "senders"
        std::string confirm_queue;
    };
    struct Taken {
        std::string queue;
        std::string id;
        MessageKey key;
    };
    struct Waiting {
        SendCallback done;
        std::chrono::steady_clock::time_point deadline;
    };

    void write_loop();
    void poll_loop();
    bool poll_once();
    void confirm_processed();
    void serve_sends(std::vector<QueueItem> items);
    void take_results(std::vector<QueueItem> items);
    void expire_waiting();
    void enqueue(Push push);
    void send_request(const std::string& connection, const OutboundMessage& message, SendCallback done);

    SharedQueues& queues_;
    Store& store_;
    const std::vector<std::string> connections_;
    const WorkSharingOptions options_;
    std::function<void(Message)> handle_;
    LocalSend send_;
    Logger& logger_;

    mutable std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    std::deque<Push> pushes_;
    bool writing_ = false;
    std::vector<Taken> taken_;                                    // handed to the pipeline, not yet confirmed
    std::set<std::string> serving_;                               // connections held here
    std::map<std::string, Waiting> waiting_;                      // request id → its caller
    std::uint64_t next_request_ = 0;
    std::map<std::string, std::uint64_t> stats_;
    std::thread writer_;
    std::thread poller_;
};

}  // namespace switchboard::host
