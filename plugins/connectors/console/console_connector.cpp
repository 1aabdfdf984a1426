#include "console_connector.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <system_error>

namespace switchboard::console {
namespace {

constexpr const char* kHelp =
    "* console commands:\n"
    "*   TEXT             say TEXT in the channel\n"
    "*   /as USER [TEXT]  speak in the channel as USER (from now on, or just TEXT)\n"
    "*   /dm USER [TEXT]  speak privately to the bot as USER (from now on, or just TEXT)\n"
    "*   //TEXT           say /TEXT\n"
    "*   /help            this list\n"
    "*   /quit            stop (as end of input does)\n";

std::int64_t now_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// "USER [TEXT]" after a command word.
ConsoleLine speaker_line(const std::string& rest, bool is_private, const char* command) {
    ConsoleLine line;
    const auto space = rest.find(' ');
    line.user = rest.substr(0, space);
    line.is_private = is_private;
    if (line.user.empty()) {
        line.type = ConsoleLine::Type::error;
        line.text = std::string(command) + " needs a user name: " + command + " USER [TEXT]";
        return line;
    }
    const auto text_start = space == std::string::npos ? std::string::npos : rest.find_first_not_of(' ', space);
    if (text_start == std::string::npos) {
        line.type = ConsoleLine::Type::switch_speaker;
    } else {
        line.type = ConsoleLine::Type::message;
        line.text = rest.substr(text_start);
    }
    return line;
}

}  // namespace

ConsoleLine parse_console_line(const std::string& raw) {
    std::string line = raw;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    ConsoleLine result;
    if (line.empty()) return result;
    if (line.rfind("//", 0) == 0) {
        result.type = ConsoleLine::Type::message;
        result.text = line.substr(1);
        return result;
    }
    if (line.front() != '/') {
        result.type = ConsoleLine::Type::message;
        result.text = line;
        return result;
    }
    const auto space = line.find(' ');
    const std::string command = line.substr(0, space);
    const std::string rest =
        space == std::string::npos ? std::string() : line.substr(line.find_first_not_of(' ', space) == std::string::npos
                                                                     ? line.size()
                                                                     : line.find_first_not_of(' ', space));
    if (command == "/as") return speaker_line(rest, false, "/as");
    if (command == "/dm") return speaker_line(rest, true, "/dm");
    if (command == "/help") {
        result.type = ConsoleLine::Type::help;
    } else if (command == "/quit") {
        result.type = ConsoleLine::Type::quit;
    } else {
        result.type = ConsoleLine::Type::error;
        result.text = "unknown command " + command + "; /help lists the commands, //TEXT says /TEXT";
    }
    return result;
}

ConsoleConnector::ConsoleConnector(ConsoleSettings settings, int input_fd, std::ostream& output)
    : settings_(std::move(settings)), input_fd_(input_fd), output_(output), speaker_(settings_.user),
      run_id_(now_ms()) {
    if (::pipe(wake_pipe_) != 0) {
        throw std::system_error(errno, std::generic_category(), "console: cannot create a pipe");
    }
}

ConsoleConnector::~ConsoleConnector() {
    stop();
    ::close(wake_pipe_[0]);
    ::close(wake_pipe_[1]);
}

ConnectorCapabilities ConsoleConnector::capabilities() const {
    ConnectorCapabilities capabilities;
    capabilities.private_messages = true;
    return capabilities;
}

void ConsoleConnector::start(ConnectorHost& host) {
    if (settings_.banner) print(kHelp);
    reader_ = std::thread([this, &host] { read_loop(host); });
}

void ConsoleConnector::stop() {
    if (!reader_.joinable()) return;
    const char byte = 'x';
    [[maybe_unused]] auto written = ::write(wake_pipe_[1], &byte, 1);
    reader_.join();
}

void ConsoleConnector::read_loop(ConnectorHost& host) {
    // Nobody can speak on a console that is not running, so there is never anything to recover.
    host.report({ConnectionEvent::Type::resumed, "console on standard input; nothing can be missed while closed"});
    std::string buffer;
    char chunk[4096];
    std::string finish_reason = "end of input";
    for (;;) {
        pollfd fds[2] = {{input_fd_, POLLIN, 0}, {wake_pipe_[0], POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            finish_reason = std::string("poll failed: ") + std::strerror(errno);
            break;
        }
        if (fds[1].revents != 0) return;  // stop(): the host is shutting down and expects no more reports
        const ssize_t n = ::read(input_fd_, chunk, sizeof chunk);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            finish_reason = std::string("read failed: ") + std::strerror(errno);
            break;
        }
        if (n == 0) break;
        buffer.append(chunk, static_cast<std::size_t>(n));
        bool quit = false;
        for (auto newline = buffer.find('\n'); newline != std::string::npos; newline = buffer.find('\n')) {
            const std::string line = buffer.substr(0, newline);
            buffer.erase(0, newline + 1);
            if (parse_console_line(line).type == ConsoleLine::Type::quit) {
                quit = true;
                finish_reason = "/quit";
                break;
            }
            handle_line(host, line);
        }
        if (quit) break;
    }
    if (finish_reason == "end of input" && !buffer.empty()) handle_line(host, buffer);
    host.report({ConnectionEvent::Type::finished, finish_reason});
}

void ConsoleConnector::handle_line(ConnectorHost& host, const std::string& text) {
    const ConsoleLine line = parse_console_line(text);
    switch (line.type) {
        case ConsoleLine::Type::ignore:
        case ConsoleLine::Type::quit: return;
        case ConsoleLine::Type::help: print(kHelp); return;
        case ConsoleLine::Type::error: print("* " + line.text + "\n"); return;
        case ConsoleLine::Type::switch_speaker:
            speaker_ = line.user;
            speaking_privately_ = line.is_private;
            print("* now speaking as " + speaker_ +
                  (speaking_privately_ ? " privately to " + settings_.bot_name : " in " + settings_.channel) + "\n");
            return;
        case ConsoleLine::Type::message: break;
    }
    const bool one_off = !line.user.empty();
    const std::string user = one_off ? line.user : speaker_;
    const bool is_private = one_off ? line.is_private : speaking_privately_;
    Message message;
    message.id = next_id();
    message.channel = is_private ? "@" + user : settings_.channel;
    message.author = Author{user, user, false};
    message.text = line.text;
    message.timestamp_ms = now_ms();
    message.kind = is_private ? MessageKind::private_message : MessageKind::group;
    host.deliver(std::move(message));
}

void ConsoleConnector::send(const OutboundMessage& message, SendCallback done) {
    const std::string to = message.to.is_user ? " to @" + message.to.target : "";
    print("<" + settings_.bot_name + to + "> " + message.text + "\n");
    done(SentMessage{"out-" + std::to_string(run_id_) + "-" + std::to_string(++sent_)});
}

void ConsoleConnector::print(const std::string& text) {
    std::lock_guard lock(output_mutex_);
    output_ << text << std::flush;
}

std::string ConsoleConnector::next_id() {
    // Unique across runs (the dedup ledger outlives the process) and ordered within one.
    char id[48];
    std::snprintf(id, sizeof id, "%013lld-%08llu", static_cast<long long>(run_id_),
                  static_cast<unsigned long long>(++sequence_));
    return id;
}

}  // namespace switchboard::console
