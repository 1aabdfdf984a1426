#pragma once
// The sandbox's shared HTTP + WebSocket core: one plain-TCP port, one I/O thread. A platform (discord.cpp,
// telegram.cpp) implements Service and never sees Beast or Asio: requests, responses, sockets and timers cross this
// header as plain types, so the heavy headers stay in server.cpp alone.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace switchboard::sandbox {

/// One HTTP request, already read whole. Header names are lower-case.
struct HttpRequest {
    std::string method;                                        ///< "GET", "POST", …
    std::string target;                                        ///< as sent: path and query
    std::string path;                                          ///< percent-decoded, without the query
    std::vector<std::pair<std::string, std::string>> query;    ///< percent-decoded, in order
    std::vector<std::pair<std::string, std::string>> headers;  ///< names lower-case
    std::string body;

    /// @brief The first query parameter named @p name, if any.
    std::optional<std::string> query_param(std::string_view name) const;
    /// @brief The first header named @p name (lower-case), or "" when absent.
    std::string header(std::string_view name) const;

    /// @brief Registers a callback that runs once, on the loop's thread, if the client closes its connection while
    /// this request is still unanswered (a long poll forgets a poller that went away). Set by the server; calling it
    /// after the answer was given does nothing.
    std::function<void(std::function<void()>)> on_client_gone;
};

/// @brief Splits `a=1&b=two` (a query string or an `application/x-www-form-urlencoded` body), percent-decoding each
/// name and value and reading `+` as a space.
std::vector<std::pair<std::string, std::string>> parse_form(std::string_view text);

/// One HTTP response. A JSON body gets `Content-Type: application/json` unless a header says otherwise.
struct HttpResponse {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    bool drop = false;  ///< close the connection without writing anything (a network failure, as the client sees it)

    /// @brief A response whose body is @p body serialised, with the JSON content type.
    static HttpResponse json(int status, const nlohmann::json& body);
    /// @brief An empty response (e.g. 204).
    static HttpResponse empty(int status);
    /// @brief No response at all: the server closes the connection (fault injection).
    static HttpResponse dropped();
};

/// What a platform is handed for one accepted WebSocket. Calls after the socket closed are ignored.
class WebSocket {
public:
    virtual ~WebSocket() = default;
    /// @brief Queues one text frame.
    virtual void send(std::string text) = 0;
    /// @brief Sends a close frame with @p code once every queued frame is out, then waits for the peer's.
    virtual void close(std::uint16_t code, std::string reason = {}) = 0;
    /// @brief Closes the TCP connection at once, without a close frame (a network drop, as the peer sees it).
    virtual void drop() = 0;
    /// @brief The peer's address and port, for logs.
    virtual std::string peer() const = 0;
};

/// How a WebSocket ended, as the platform learns it (once).
struct WebSocketClosed {
    std::optional<std::uint16_t> code;  ///< the code of the peer's close frame; empty on a bare TCP drop
    std::string reason;
};

/// A platform's side of one WebSocket.
class WebSocketHandler {
public:
    virtual ~WebSocketHandler() = default;
    /// @brief One whole message from the peer (text or binary).
    virtual void on_message(std::string_view data) = 0;
    /// @brief The socket is gone; called exactly once, also after the platform's own close() or drop().
    virtual void on_closed(const WebSocketClosed& how) = 0;
};

/// A cancellable one-shot timer on the server's thread.
class Timer {
public:
    virtual ~Timer() = default;
    virtual void cancel() = 0;
};
using TimerPtr = std::shared_ptr<Timer>;

/// The server's event loop as a platform sees it: everything runs on one thread, so a platform needs no locks.
class Loop {
public:
    virtual ~Loop() = default;
    /// @brief Runs @p task after @p delay on the loop's thread, unless the returned timer is cancelled first.
    virtual TimerPtr after(std::chrono::milliseconds delay, std::function<void()> task) = 0;
};

using Respond = std::function<void(HttpResponse)>;

/// One platform served on the port.
class Service {
public:
    virtual ~Service() = default;
    /// @brief Answers @p request by calling @p respond exactly once, now or later (from a timer).
    virtual void handle(const HttpRequest& request, Respond respond) = 0;
    /// @brief A WebSocket was accepted on @p request's target; returns its handler (nullptr closes it with 1008).
    virtual std::shared_ptr<WebSocketHandler> open(const HttpRequest& request, std::shared_ptr<WebSocket> socket) = 0;
};

/// The listening socket and its I/O thread.
class Server {
public:
    /// @brief Binds @p address:@p port (0 picks a free port). Throws std::runtime_error when it cannot.
    Server(const std::string& address, std::uint16_t port);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    /// @brief The port actually bound.
    std::uint16_t port() const;
    /// @brief The loop that platform code schedules on.
    Loop& loop();
    /// @brief Serves @p service until SIGINT or SIGTERM (or stop()); returns then.
    void run(Service& service);
    /// @brief Makes run() return; callable from any thread.
    void stop();

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

/// Milliseconds since the Unix epoch, from the system clock.
std::int64_t unix_ms();

}  // namespace switchboard::sandbox
