#pragma once
// A real redis-server for tests, on a free loopback port with its files in its own TempDir. By default it keeps
// nothing on disk (`--save "" --appendonly no`); a persistent one writes an append-only file synced on every write,
// so that a SIGKILL loses nothing it acknowledged and a restart (same port, same directory) brings the data back.
// start() waits until the server answers PING; the destructor always stops it (SIGCONT, SIGTERM, then SIGKILL).

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "background_process.hpp"
#include "test_support.hpp"

namespace switchboard::testing_support {

/// Where redis-server is, or nullopt when it is not installed (tools/deps.sh test installs it).
inline std::optional<std::filesystem::path> redis_server_binary() {
    for (const char* dir : {"/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"}) {
        const auto path = std::filesystem::path(dir) / "redis-server";
        if (std::filesystem::exists(path)) return path;
    }
    return std::nullopt;
}

struct RedisServerOptions {
    /// Keep the data in an append-only file, fsynced on every write (survives SIGKILL and restart).
    bool persistent = false;
    /// `requirepass`, if not empty.
    std::string password;
};

class RedisServer {
public:
    explicit RedisServer(RedisServerOptions options = {}) : options_(std::move(options)) {}
    ~RedisServer() { stop(); }
    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;

    /// Starts the server on a free port and waits (up to @p timeout) until it answers PING. Tries a few ports in
    /// case another process took the free one first. Returns false (with why()) when it does not come up.
    bool start(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
        for (int attempt = 0; attempt < 3; ++attempt) {
            port_ = free_loopback_port();
            if (launch(timeout)) return true;
            stop();
        }
        return false;
    }

    /// Starts it again after stop() or kill(), on the same port and with the same directory (and so, if
    /// persistent, the same data).
    bool restart(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
        stop();
        return launch(timeout);
    }

    /// SIGTERM (after SIGCONT, in case it is paused), then SIGKILL. Safe to call twice.
    void stop() {
        if (!process_) return;
        process_->signal(SIGCONT);
        process_->stop(std::chrono::seconds(5));
        process_.reset();
    }

    /// Kills it at once (SIGKILL), as a crash would.
    void kill() {
        if (!process_) return;
        process_->signal(SIGCONT);
        process_->kill();
        process_.reset();
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing is answered.
    void pause() {
        if (process_) process_->signal(SIGSTOP);
    }
    /// Lets a paused server go on (SIGCONT).
    void resume() {
        if (process_) process_->signal(SIGCONT);
    }

    [[nodiscard]] std::uint16_t port() const { return port_; }
    [[nodiscard]] const std::string& why() const { return why_; }
    /// `redis://[:password@]127.0.0.1:PORT/DB`.
    [[nodiscard]] std::string url(int database = 0) const {
        const std::string auth = options_.password.empty() ? "" : ":" + options_.password + "@";
        return "redis://" + auth + "127.0.0.1:" + std::to_string(port_) + "/" + std::to_string(database);
    }
    /// The server's own output, for failure messages.
    [[nodiscard]] std::string output() const { return read_file(dir_ / "redis.out") + read_file(dir_ / "redis.err"); }

    /// Runs one command on a fresh connection (database @p database) and returns its reply as text: a string, a
    /// status, an integer in decimal, "(nil)", "(error) ..." or, for an array, the elements joined by '\n'.
    /// "(unreachable) ..." when the server does not answer.
    [[nodiscard]] std::string command(const std::vector<std::string>& args, int database = 0) const {
        timeval timeout{5, 0};
        std::unique_ptr<redisContext, void (*)(redisContext*)> context(
            redisConnectWithTimeout("127.0.0.1", port_, timeout), redisFree);
        if (!context || context->err != 0) {
            return "(unreachable) " + std::string(context ? context->errstr : "no context");
        }
        redisSetTimeout(context.get(), timeout);
        if (!options_.password.empty()) run(*context, {"AUTH", options_.password});
        if (database != 0) run(*context, {"SELECT", std::to_string(database)});
        return run(*context, args);
    }

private:
    static std::string run(redisContext& context, const std::vector<std::string>& args) {
        std::vector<const char*> argv;
        std::vector<std::size_t> lengths;
        for (const std::string& arg : args) {
            argv.push_back(arg.data());
            lengths.push_back(arg.size());
        }
        auto* reply = static_cast<redisReply*>(
            redisCommandArgv(&context, static_cast<int>(argv.size()), argv.data(), lengths.data()));
        if (reply == nullptr) return "(unreachable) " + std::string(context.errstr);
        std::string text = to_text(*reply);
        freeReplyObject(reply);
        return text;
    }

    static std::string to_text(const redisReply& reply) {
        switch (reply.type) {
            case REDIS_REPLY_STRING:
            case REDIS_REPLY_STATUS:
                return std::string(reply.str, reply.len);
            case REDIS_REPLY_ERROR:
                return "(error) " + std::string(reply.str, reply.len);
            case REDIS_REPLY_INTEGER:
                return std::to_string(reply.integer);
            case REDIS_REPLY_NIL:
                return "(nil)";
            case REDIS_REPLY_ARRAY: {
                std::string text;
                for (std::size_t i = 0; i < reply.elements; ++i) {
                    if (i > 0) text += '\n';
                    text += to_text(*reply.element[i]);
                }
                return text;
            }
            default:
                return "(unknown reply)";
        }
    }

    bool launch(std::chrono::milliseconds timeout) {
        const auto binary = redis_server_binary();
        if (!binary) {
            why_ = "redis-server is not installed (tools/deps.sh test installs it)";
            return false;
        }
        std::vector<std::string> args{
            "--port", std::to_string(port_), "--bind", "127.0.0.1",  "--dir",  dir_.path().string(), "--save",
            "",       "--daemonize",         "no",     "--loglevel", "warning"};
        if (options_.persistent) {
            for (const char* arg : {"--appendonly", "yes", "--appendfsync", "always"}) args.emplace_back(arg);
        } else {
            for (const char* arg : {"--appendonly", "no"}) args.emplace_back(arg);
        }
        if (!options_.password.empty()) {
            args.emplace_back("--requirepass");
            args.push_back(options_.password);
        }
        process_ = std::make_unique<BackgroundProcess>(*binary, args, dir_.path(), "redis");
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (!process_->running()) {
                why_ = "redis-server exited at start: " + output();
                return false;
            }
            if (command({"PING"}) == "PONG") return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        why_ = "redis-server did not answer PING in time: " + output();
        return false;
    }

    RedisServerOptions options_;
    TempDir dir_;
    std::uint16_t port_ = 0;
    std::unique_ptr<BackgroundProcess> process_;
    std::string why_;
};

}  // namespace switchboard::testing_support
