// The child of the delivery crash test. `start`: plans an atomic fan-out to N members and carries it out through
// a sink connector that appends each send's idempotency key to a file; `resume`: finishes what the outbox holds as
// pending, as the host does at start. The sink is rate-limited so the parent can kill the child mid-fan-out.
//
// usage: delivery_crash_child start|resume STORE SINK_FILE MEMBERS

#include "routing/delivery_engine.hpp"
#include "sqlite_store.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <future>
#include <iostream>
#include <thread>

using namespace switchboard;

namespace {

struct StderrLogger final : Logger {
    void log(LogLevel level, std::string_view text, const LogFields&) noexcept override {
        if (level >= LogLevel::warn) std::cerr << text << "\n";
    }
};

class EveryoneReachable final : public Directory {
public:
    std::optional<DirectoryChannel> channel(const std::string&) const override { return std::nullopt; }
    std::optional<Address> user(const std::string&) const override { return std::nullopt; }
    std::shared_ptr<const DirectoryGroup> group(const std::string&) const override { return nullptr; }
    std::vector<DirectoryChannel> channels() const override { return {}; }
    bool reachable(const Address&) const override { return true; }
};

/// Appends "KEY\n" per send with one write(2) to an O_APPEND file: a line written is in the file even if the
/// process is killed the next instant. Completes on the I/O context, like a network send.
class FileSink final : public Connector {
public:
    FileSink(const std::string& path, boost::asio::io_context& io)
        : fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644)), io_(io) {}
    ~FileSink() override { ::close(fd_); }
    ConnectorCapabilities capabilities() const override { return {}; }
    void start(ConnectorHost&) override {}
    void stop() override {}
    void send(const OutboundMessage& message, SendCallback done) override {
        const std::string line = message.idempotency_key + "\n";
        const bool ok = ::write(fd_, line.data(), line.size()) == static_cast<ssize_t>(line.size());
        boost::asio::post(io_, [done = std::move(done), ok] {
            if (ok) {
                done(SentMessage{"sent"});
            } else {
                done(fail_retryable("write_failed", "sink write failed"));
            }
        });
    }

private:
    int fd_;
    boost::asio::io_context& io_;
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 5) {
        std::cerr << "usage: delivery_crash_child start|resume STORE SINK_FILE MEMBERS\n";
        return 2;
    }
    const std::string mode = argv[1];
    const int members = std::stoi(argv[4]);
    stores::SqliteStore store(argv[2]);
    boost::asio::io_context io;
    auto guard = boost::asio::make_work_guard(io);
    std::thread io_thread([&] { io.run(); });
    StderrLogger logger;
    EveryoneReachable directory;
    {
        routing::DeliveryEngine engine(store, directory, io, [](std::function<void()> work) { work(); }, logger);
        // 2,000 sends a second: a fan-out to a few thousand members takes long enough to be killed in the middle.
        engine.add_connection("sink", std::make_shared<FileSink>(argv[3], io),
                              routing::ConnectionLimits{4, 2000, 20});
        if (mode == "start") {
            routing::PlannedDelivery delivery;
            delivery.plan_id = "announcement";
            delivery.plan.mode = DeliveryMode::atomic;
            delivery.plan.batch_size = 50;
            for (int i = 0; i < members; ++i) {
                delivery.plan.recipients.push_back({"m" + std::to_string(i), Address::user("sink", std::to_string(i))});
            }
            delivery.text = "hello, everyone";
            delivery.deadline_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch())
                                       .count() +
                                   60'000;
            std::promise<DeliveryReport> report;
            engine.execute(std::move(delivery), false, [&](DeliveryReport r) { report.set_value(std::move(r)); });
            const DeliveryReport final_report = report.get_future().get();
            std::cout << "report " << to_string(final_report.status) << "\n";
        } else {
            auto pending = store.outbox_pending();
            if (!pending) {
                std::cerr << pending.error().to_string() << "\n";
                return 1;
            }
            std::cout << "resuming " << pending->size() << "\n";
            engine.resume(std::move(*pending));
            if (!engine.wait_idle(std::chrono::seconds(60))) return 1;
        }
        engine.clear_connections();
    }
    guard.reset();
    io_thread.join();
    return 0;
}
