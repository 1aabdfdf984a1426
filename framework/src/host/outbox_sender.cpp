#include "host/outbox_sender.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <condition_variable>
#include <mutex>

namespace switchboard::host {

struct OutboxSender::Impl : std::enable_shared_from_this<Impl> {
    Impl(Store& store_, boost::asio::io_context& io_, boost::asio::thread_pool& workers_, Logger& logger_)
        : store(store_), io(io_), workers(workers_), logger(logger_) {}

    std::shared_ptr<Connector> connector_for(const std::string& connection) {
        std::lock_guard lock(mutex);
        auto it = connectors.find(connection);
        return it == connectors.end() ? nullptr : it->second;
    }

    void attempt(OutboxEntry entry) {
        auto connector = connector_for(entry.recipient.connection);
        if (!connector) {
            finish(std::move(entry), fail("unknown_connection", "no running connection named '" +
                                                                    entry.recipient.connection + "'"));
            return;
        }
        OutboundMessage message{entry.recipient, entry.text, entry.reply_to,
                                entry.plan_id + "|" + entry.recipient.to_string()};
        ++entry.attempts;
        auto self = shared_from_this();
        connector->send(message, [self, entry = std::move(entry)](Result<SentMessage> result) mutable {
            // Completions may arrive on an I/O thread: the store is only touched from the workers.
            boost::asio::post(self->workers, [self, entry = std::move(entry), result = std::move(result)]() mutable {
                self->complete(std::move(entry), std::move(result));
            });
        });
    }

    void complete(OutboxEntry entry, Result<SentMessage> result) {
        if (result) {
            entry.state = OutboxState::sent;
            entry.sent_message_id = result->message_id;
            entry.error.clear();
            record(entry);
            done();
            return;
        }
        const Error& error = result.error();
        if (error.retryable && entry.attempts < OutboxSender::kMaxAttempts) {
            entry.error = error.code;
            record(entry);
            const auto backoff = std::chrono::milliseconds(
                std::max<std::int64_t>(error.retry_after_ms, 100LL << std::min(entry.attempts, 6)));
            logger.warn("send to " + entry.recipient.to_string() + " failed (" + error.to_string() +
                        "), retrying in " + std::to_string(backoff.count()) + " ms");
            auto timer = std::make_shared<boost::asio::steady_timer>(io, backoff);
            timer->async_wait([self = shared_from_this(), timer, entry = std::move(entry)](
                                  const boost::system::error_code&) mutable { self->attempt(std::move(entry)); });
            return;
        }
        finish(std::move(entry), error);
    }

    void finish(OutboxEntry entry, const Error& error) {
        entry.state = OutboxState::failed;
        entry.error = error.code;
        logger.error("send to " + entry.recipient.to_string() + " failed for good: " + error.to_string());
        record(entry);
        done();
    }

    void record(const OutboxEntry& entry) {
        if (auto updated = store.outbox_update(entry); !updated) {
            logger.error("could not record outbox state of " + entry.plan_id + ": " + updated.error().to_string());
        }
    }

    void done() {
        std::lock_guard lock(mutex);
        if (--in_flight == 0) idle.notify_all();
    }

    Store& store;
    boost::asio::io_context& io;
    boost::asio::thread_pool& workers;
    Logger& logger;
    std::mutex mutex;
    std::condition_variable idle;
    std::map<std::string, std::shared_ptr<Connector>> connectors;
    std::size_t in_flight = 0;
};

OutboxSender::OutboxSender(Store& store, boost::asio::io_context& io, boost::asio::thread_pool& workers,
                           Logger& logger)
    : impl_(std::make_shared<Impl>(store, io, workers, logger)) {}

OutboxSender::~OutboxSender() = default;

void OutboxSender::add_connection(const std::string& name, std::shared_ptr<Connector> connector) {
    std::lock_guard lock(impl_->mutex);
    impl_->connectors[name] = std::move(connector);
}

void OutboxSender::send(std::vector<OutboxEntry> entries) {
    {
        std::lock_guard lock(impl_->mutex);
        impl_->in_flight += entries.size();
    }
    for (OutboxEntry& entry : entries) impl_->attempt(std::move(entry));
}

bool OutboxSender::wait_idle(std::chrono::milliseconds timeout) {
    std::unique_lock lock(impl_->mutex);
    return impl_->idle.wait_for(lock, timeout, [this] { return impl_->in_flight == 0; });
}

void OutboxSender::clear() {
    std::lock_guard lock(impl_->mutex);
    impl_->connectors.clear();
}

}  // namespace switchboard::host
