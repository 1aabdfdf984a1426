#pragma once
// The console connector: standard input and output as one channel, with lines that simulate other people
// (`/as USER`) and private messages (`/dm USER`). The default config uses it so a bot answers with no account.

#include <switchboard/connector.hpp>

#include <atomic>
#include <cstdint>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>

namespace switchboard::console {

/// What one typed line means.
struct ConsoleLine {
    enum class Type {
        message,        ///< Say `text` (as `user` if set, privately if `is_private`).
        switch_speaker, ///< From now on speak as `user` (privately if `is_private`).
        help,           ///< Print the console commands.
        quit,           ///< End the session (as end of input does).
        ignore,         ///< An empty line.
        error,          ///< Not understood; `text` says why.
    };
    Type type = Type::ignore;
    std::string user;
    std::string text;
    bool is_private = false;
};

/// Parses one line. `//text` sends `/text` literally.
[[nodiscard]] ConsoleLine parse_console_line(const std::string& line);

struct ConsoleSettings {
    std::string channel = "console";  ///< The channel id.
    std::string user = "you";         ///< Who types, until `/as` or `/dm` says otherwise.
    std::string bot_name = "switchboard";
    bool banner = false;              ///< Print the console commands at start.
};

class ConsoleConnector : public Connector {
public:
    /// Reads lines from @p input_fd, writes to @p output.
    ConsoleConnector(ConsoleSettings settings, int input_fd, std::ostream& output);
    ~ConsoleConnector() override;

    ConnectorCapabilities capabilities() const override;
    void start(ConnectorHost& host) override;
    void stop() override;
    void send(const OutboundMessage& message, SendCallback done) override;

private:
    void read_loop(ConnectorHost& host);
    void handle_line(ConnectorHost& host, const std::string& line);
    void print(const std::string& line);
    std::string next_id();

    ConsoleSettings settings_;
    int input_fd_;
    std::ostream& output_;
    std::mutex output_mutex_;
    int wake_pipe_[2] = {-1, -1};
    std::thread reader_;
    std::string speaker_;
    bool speaking_privately_ = false;
    std::int64_t run_id_;
    std::uint64_t sequence_ = 0;
    std::atomic<std::uint64_t> sent_ = 0;
};

}  // namespace switchboard::console
