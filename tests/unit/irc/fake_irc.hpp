#pragma once
// For the connector's unit tests: a scripted IRC server on a loopback socket (the test thread plays the server,
// line by line, with deadlines) and a ConnectorHost that records what the connector delivers and reports.

#include "irc_test_client.hpp"
#include "test_support.hpp"

#include <switchboard/connector.hpp>
#include <switchboard/rate_limit.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace switchboard::testing_support {

/// One accepted connection of the scripted server.
class FakeIrcPeer {
public:
    explicit FakeIrcPeer(int fd) : fd_(fd) {}
    ~FakeIrcPeer() { close(); }
    FakeIrcPeer(const FakeIrcPeer&) = delete;
    FakeIrcPeer& operator=(const FakeIrcPeer&) = delete;

    void send(const std::string& line) { send_raw(line + "\r\n"); }
    void send_raw(const std::string& bytes) {
        std::size_t sent = 0;
        while (sent < bytes.size()) {
            const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
            if (n <= 0) return;
            sent += static_cast<std::size_t>(n);
        }
    }
    /// The next line from the connector, or nullopt after @p timeout or when it closed.
    std::optional<std::string> read_line(std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            const auto newline = buffer_.find('\n');
            if (newline != std::string::npos) {
                std::string line = buffer_.substr(0, newline);
                buffer_.erase(0, newline + 1);
                if (!line.empty() && line.back() == '\r') line.pop_back();
                received_.push_back(line);
                return line;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0 || closed_) return std::nullopt;
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
            char chunk[65536];
            const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n <= 0) {
                closed_ = true;
                continue;
            }
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
    }
    /// Reads lines until one starts with @p prefix; returns it.
    std::optional<std::string> expect(const std::string& prefix, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) return std::nullopt;
            auto line = read_line(left);
            if (!line) return std::nullopt;
            if (line->rfind(prefix, 0) == 0) return line;
        }
    }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    [[nodiscard]] bool closed() const { return closed_; }
    [[nodiscard]] const std::vector<std::string>& received() const { return received_; }

private:
    int fd_;
    std::string buffer_;
    bool closed_ = false;
    std::vector<std::string> received_;
};

class FakeIrcServer {
public:
    FakeIrcServer() {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        int yes = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof address;
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 || ::listen(fd_, 8) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
            throw std::runtime_error("fake IRC server: cannot listen on loopback");
        }
        port_ = ntohs(address.sin_port);
    }
    ~FakeIrcServer() { ::close(fd_); }
    [[nodiscard]] std::uint16_t port() const { return port_; }

    /// The next connection, or null after @p timeout.
    std::unique_ptr<FakeIrcPeer> accept(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return nullptr;
        const int peer = ::accept(fd_, nullptr, nullptr);
        return peer < 0 ? nullptr : std::make_unique<FakeIrcPeer>(peer);
    }

    /// Plays a plain registration: answers CAP LS with @p caps (none: "CAP unknown"), ACKs what is requested, then
    /// 001, 005 and the end of MOTD as @p nick. Returns the peer, registered.
    std::unique_ptr<FakeIrcPeer> accept_registered(const std::string& nick = "bot", const std::string& caps = "",
                                                   const std::string& isupport = "CHANTYPES=#") {
        auto peer = accept();
        if (!peer) return nullptr;
        if (!peer->expect("CAP LS")) return nullptr;
        if (caps.empty()) {
            peer->send(":fake 421 * CAP :Unknown command");
        } else {
            peer->send(":fake CAP * LS :" + caps);
            auto request = peer->expect("CAP REQ");
            if (!request) return nullptr;
            peer->send(":fake CAP * ACK :" + request->substr(request->find(':') + 1));
            if (!peer->expect("CAP END")) return nullptr;
        }
        peer->send(":fake 001 " + nick + " :Welcome");
        peer->send(":fake 005 " + nick + " " + isupport + " :are supported by this server");
        peer->send(":fake 376 " + nick + " :End of MOTD");
        return peer;
    }

private:
    int fd_ = -1;
    std::uint16_t port_ = 0;
};

class UnlimitedScheduler final : public RateLimitScheduler {
public:
    void define(const std::string& name, double rate, std::uint32_t burst) override {
        std::lock_guard lock(mutex_);
        defined[name] = {rate, burst};
    }
    void acquire(RateRequest request, RateGrant grant) override {
        {
            std::lock_guard lock(mutex_);
            routes.push_back(request.route);
        }
        grant({});
    }
    void observe(const std::string&, const RateLimitInfo&) override {}
    RateLimitStats stats() const override { return {}; }

    std::mutex mutex_;
    std::map<std::string, std::pair<double, std::uint32_t>> defined;
    std::vector<std::string> routes;
};

class RecordingHost final : public ConnectorHost {
public:
    void deliver(Message message) override {
        std::lock_guard lock(mutex_);
        messages_.push_back(std::move(message));
        events_before_.push_back(events_.size());
    }
    void report(const ConnectionEvent& event) override {
        std::lock_guard lock(mutex_);
        events_.push_back(event);
    }
    void report_members(const std::string&, std::vector<std::string>) override {}
    RateLimitScheduler& rate_limits() override { return scheduler; }
    std::optional<std::string> load_state(const std::string&) override { return std::nullopt; }
    void save_state(std::string, std::string) override {}
    Result<bool> is_processed(const Message& message) override {  // what it recorded counts as handled
        std::lock_guard lock(mutex_);
        for (const Message& m : messages_) {
            if (m.channel == message.channel && m.id == message.id) return true;
        }
        return false;
    }

    std::vector<Message> messages() {
        std::lock_guard lock(mutex_);
        return messages_;
    }
    /// How many events had been reported when message @p index was delivered.
    std::size_t events_before_message(std::size_t index) {
        std::lock_guard lock(mutex_);
        return index < events_before_.size() ? events_before_[index] : 0;
    }
    std::vector<ConnectionEvent> events() {
        std::lock_guard lock(mutex_);
        return events_;
    }
    std::size_t count(ConnectionEvent::Type type) {
        std::lock_guard lock(mutex_);
        std::size_t n = 0;
        for (const auto& e : events_) n += e.type == type ? 1 : 0;
        return n;
    }
    bool wait_messages(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        return wait_until([&] { return messages().size() >= n; }, timeout);
    }
    bool wait_event(ConnectionEvent::Type type, std::size_t n = 1,
                    std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
        return wait_until([&] { return count(type) >= n; }, timeout);
    }

    UnlimitedScheduler scheduler;

private:
    std::mutex mutex_;
    std::vector<Message> messages_;
    std::vector<ConnectionEvent> events_;
    std::vector<std::size_t> events_before_;  // per message: events_.size() when it was delivered
};

}  // namespace switchboard::testing_support
