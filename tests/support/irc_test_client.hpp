#pragma once
// A tiny blocking IRC client for tests: plain sockets, one line at a time, every wait with a deadline. It plays the
// people in a channel (and the operator who KILLs the bot); it answers the server's PINGs while it waits.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace switchboard::testing_support {

/// One line the client received, split just enough for tests.
struct IrcTestLine {
    std::string raw;      ///< The whole line without CR LF.
    std::string tags;     ///< Without the leading '@'.
    std::string source;   ///< Without the leading ':'.
    std::string command;  ///< As sent.
    std::vector<std::string> params;

    [[nodiscard]] std::string nick() const { return source.substr(0, source.find('!')); }
    [[nodiscard]] const std::string& param(std::size_t i) const {
        static const std::string empty;
        return i < params.size() ? params[i] : empty;
    }
};

inline IrcTestLine split_irc_test_line(const std::string& raw) {
    IrcTestLine line;
    line.raw = raw;
    std::size_t at = 0;
    const auto word = [&]() {
        const auto end = raw.find(' ', at);
        std::string w = raw.substr(at, end == std::string::npos ? std::string::npos : end - at);
        at = end == std::string::npos ? raw.size() : end + 1;
        return w;
    };
    if (at < raw.size() && raw[at] == '@') line.tags = word().substr(1);
    if (at < raw.size() && raw[at] == ':') line.source = word().substr(1);
    line.command = word();
    while (at < raw.size()) {
        if (raw[at] == ':') {
            line.params.push_back(raw.substr(at + 1));
            break;
        }
        line.params.push_back(word());
    }
    return line;
}

class IrcTestClient {
public:
    /// Connects to 127.0.0.1:@p port (throws on failure).
    explicit IrcTestClient(std::uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        if (fd_ < 0) throw std::runtime_error("socket() failed");
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_port = htons(port);
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
            ::close(fd_);
            fd_ = -1;
            throw std::runtime_error("cannot connect to 127.0.0.1:" + std::to_string(port));
        }
    }
    ~IrcTestClient() {
        if (fd_ >= 0) ::close(fd_);
    }
    IrcTestClient(const IrcTestClient&) = delete;
    IrcTestClient& operator=(const IrcTestClient&) = delete;

    /// Sends NICK and USER and waits for the welcome (001). @p caps: also request IRCv3 capabilities first.
    bool register_as(const std::string& nick, std::chrono::milliseconds timeout = std::chrono::seconds(10),
                     const std::string& caps = "") {
        nick_ = nick;
        if (!caps.empty()) send("CAP REQ :" + caps);
        if (!caps.empty()) send("CAP END");
        send("NICK " + nick);
        send("USER " + nick + " 0 * :test client " + nick);
        return wait_for([](const IrcTestLine& l) { return l.command == "001"; }, timeout).has_value();
    }

    /// Joins @p channel and waits for the end of its names list.
    bool join(const std::string& channel, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        send("JOIN " + channel);
        return wait_for([&](const IrcTestLine& l) { return l.command == "366" && l.param(1) == channel; }, timeout)
            .has_value();
    }

    /// Sends one line (CR LF added); raw bytes are sent as they are, for hostile-input tests.
    void send(const std::string& line) { send_raw(line + "\r\n"); }

    void send_raw(const std::string& bytes) {
        std::size_t sent = 0;
        while (sent < bytes.size()) {
            const ssize_t n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    pollfd p{fd_, POLLOUT, 0};
                    ::poll(&p, 1, 1000);
                    continue;
                }
                throw std::runtime_error("send failed");
            }
            sent += static_cast<std::size_t>(n);
        }
    }

    void privmsg(const std::string& target, const std::string& text) { send("PRIVMSG " + target + " :" + text); }

    /// Reads lines until @p match holds for one (returned) or @p timeout passes (nullopt). Every line read is kept
    /// in lines().
    std::optional<IrcTestLine> wait_for(const std::function<bool(const IrcTestLine&)>& match,
                                        std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            while (auto raw = take_line()) {
                IrcTestLine line = split_irc_test_line(*raw);
                if (line.command == "PING") send("PONG :" + line.param(0));
                lines_.push_back(line);
                if (match(line)) return line;
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                                    std::chrono::steady_clock::now());
            if (left.count() <= 0 || closed_) return std::nullopt;
            pollfd p{fd_, POLLIN, 0};
            const int ready = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 200)));
            if (ready <= 0) continue;
            char chunk[65536];
            const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n <= 0) {
                closed_ = true;
                continue;
            }
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
    }

    /// Reads until @p count PRIVMSGs from @p from have arrived in total (counting those read before), or timeout.
    std::vector<std::string> texts_from(const std::string& from) const {
        std::vector<std::string> texts;
        for (const IrcTestLine& line : lines_) {
            if (line.command == "PRIVMSG" && line.nick() == from) texts.push_back(line.param(1));
        }
        return texts;
    }
    bool wait_for_texts_from(const std::string& from, std::size_t count, std::chrono::milliseconds timeout) {
        if (texts_from(from).size() >= count) return true;
        std::size_t seen = texts_from(from).size();
        return wait_for(
                   [&](const IrcTestLine& l) {
                       if (l.command == "PRIVMSG" && l.nick() == from) ++seen;
                       return seen >= count;
                   },
                   timeout)
            .has_value();
    }

    /// Reads whatever arrives within @p time (to see that nothing more comes).
    void drain(std::chrono::milliseconds time) {
        wait_for([](const IrcTestLine&) { return false; }, time);
    }

    [[nodiscard]] const std::vector<IrcTestLine>& lines() const { return lines_; }
    [[nodiscard]] bool closed() const { return closed_; }
    [[nodiscard]] const std::string& nick() const { return nick_; }

private:
    std::optional<std::string> take_line() {
        const auto newline = buffer_.find('\n');
        if (newline == std::string::npos) return std::nullopt;
        std::string line = buffer_.substr(0, newline);
        buffer_.erase(0, newline + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        return line;
    }

    int fd_ = -1;
    std::string buffer_;
    std::vector<IrcTestLine> lines_;
    bool closed_ = false;
    std::string nick_;
};

}  // namespace switchboard::testing_support
