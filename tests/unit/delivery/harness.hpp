#pragma once
// The delivery engine under test: an io_context run by two threads, the memory store, a fake directory, a capturing
// logger, and an inline store executor and the system clock unless the test passes others.

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fakes.hpp"
#include "routing/delivery_engine.hpp"

namespace switchboard::delivery_test {

inline std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

/// A plan of @p to, best effort unless the test changes it, due in 10 s.
inline routing::PlannedDelivery planned(std::string plan_id, const std::vector<Address>& to,
                                        std::string text = "hello") {
    routing::PlannedDelivery delivery;
    delivery.plan_id = std::move(plan_id);
    for (const Address& address : to) delivery.plan.recipients.push_back(Recipient{address.to_string(), address});
    delivery.text = std::move(text);
    delivery.deadline_ms = now_ms() + 10'000;
    return delivery;
}

/// Outbox entries of @p plan_id by recipient text.
inline std::map<std::string, OutboxEntry> outbox_of(Store& store, const std::string& plan_id) {
    std::map<std::string, OutboxEntry> result;
    auto entries = store.outbox_plan(plan_id);
    if (!entries) return result;
    for (OutboxEntry& entry : *entries) result.emplace(entry.recipient.to_string(), std::move(entry));
    return result;
}

/// Outcomes of @p report by recipient text.
inline std::map<std::string, RecipientOutcome> outcomes_of(const DeliveryReport& report) {
    std::map<std::string, RecipientOutcome> result;
    for (const RecipientOutcome& outcome : report.recipients) result.emplace(outcome.address.to_string(), outcome);
    return result;
}

class Harness {
public:
    explicit Harness(routing::EngineOptions options = {}, routing::StoreExecutor executor = {}, Store* store = nullptr,
                     routing::Clock clock = {})
        : guard_(boost::asio::make_work_guard(io)), store_(store != nullptr ? *store : memory_) {
        for (int i = 0; i < 2; ++i) {
            threads_.emplace_back([this] { io.run(); });
            io_thread_ids.push_back(threads_.back().get_id());
        }
        engine = std::make_unique<routing::DeliveryEngine>(store_, directory, io, std::move(executor), logger, options,
                                                           std::move(clock));
    }
    ~Harness() {
        engine.reset();
        guard_.reset();
        io.stop();
        for (auto& thread : threads_) thread.join();
    }
    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    Store& store() { return store_; }

    boost::asio::io_context io;
    FakeDirectory directory;
    CapturingLogger logger;
    std::vector<std::thread::id> io_thread_ids;
    std::unique_ptr<routing::DeliveryEngine> engine;

private:
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
    std::vector<std::thread> threads_;
    stores::MemoryStore memory_;
    Store& store_;
};

}  // namespace switchboard::delivery_test
