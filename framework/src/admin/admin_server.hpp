#pragma once
// The admin interface (DESIGN §7): an HTTP/1.1 server on Boost.Beast, off unless `switchboard.admin.listen` is set.
//
//   GET  /             the status page (one self-contained HTML file; it reads /api/status)
//   GET  /healthz      200 while the process runs
//   GET  /readyz       200 when the store is open and every connection is up or recovering within its grace,
//                      else 503 with the reasons
//   GET  /metrics      Prometheus text exposition format
//   GET  /api/status   JSON: connections, channels, cursors, recovery, queues, deliveries, plugins   (token)
//   POST /api/send     an envelope in JSON → its DeliveryReport                                      (token)
//   POST /api/reload   reloads the config: 200 with what changed, or 409/422 with why nothing did    (token)
//
// Everything under /api/ needs `Authorization: Bearer <token>` (compared in constant time); a wrong or missing
// token is 401. Bodies over the limit are 413, malformed JSON 400 with what is wrong, an unknown path 404, a wrong
// method 405. The routing (AdminRoutes) is apart from the sockets, so tests drive it directly.
//
// Beast is confined to admin_server.cpp.

#include "admin/metrics.hpp"

#include <switchboard/plugin.hpp>
#include <switchboard/result.hpp>

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace switchboard::admin {

/// What the host answers through the admin interface. Every function may be called on any of the host's I/O
/// threads, concurrently.
struct AdminApi {
    /// Whether the host is ready; fills @p reasons (one line each) when it is not.
    std::function<bool(std::vector<std::string>& reasons)> ready;
    /// The /api/status document.
    std::function<nlohmann::json()> status;
    /// Routes the envelope described by @p request (already checked to be a JSON object) and calls @p reply once
    /// with the HTTP status and the JSON answer: the DeliveryReport, or an error.
    std::function<void(const nlohmann::json& request, std::function<void(unsigned, nlohmann::json)> reply)> send;
    /// Reloads the config and calls @p reply once with the HTTP status and the JSON answer: what changed, or why
    /// nothing did. May be empty (then /api/reload is 503).
    std::function<void(std::function<void(unsigned, nlohmann::json)> reply)> reload;
    /// Rendered at /metrics; may be null (then /metrics is 404).
    const Metrics* metrics = nullptr;
};

/// One HTTP request as AdminRoutes sees it.
struct AdminRequest {
    std::string method;  // "GET", "POST", ...
    std::string target;  // path and query
    std::string authorization;
    std::string body;
};

/// One HTTP response.
struct AdminResponse {
    unsigned status = 200;
    std::string content_type = "application/json";
    std::string body;
};

/// The admin interface's routing and checks, without sockets.
class AdminRoutes {
public:
    AdminRoutes(AdminApi api, std::string token);

    /// Answers @p request through @p reply, exactly once (later, on another thread, for /api/send).
    void handle(const AdminRequest& request, std::function<void(AdminResponse)> reply) const;

    /// A JSON error body: `{"error": CODE, "message": MESSAGE}`.
    [[nodiscard]] static AdminResponse error(unsigned status, const std::string& code, const std::string& message);

private:
    [[nodiscard]] bool authorized(const std::string& header) const;

    AdminApi api_;
    std::string token_;
};

struct AdminOptions {
    /// `host:port` (`[::1]:port` for IPv6); port 0 picks a free one.
    std::string listen;
    /// The bearer token for /api/; empty refuses every /api/ request.
    std::string token;
    /// Largest request body accepted.
    std::size_t body_limit = 64 * 1024;
};

class AdminServer {
public:
    AdminServer(boost::asio::io_context& io, AdminOptions options, AdminApi api, Logger& logger);
    ~AdminServer();
    AdminServer(const AdminServer&) = delete;
    AdminServer& operator=(const AdminServer&) = delete;

    /// Binds and starts accepting; returns the port it listens on, or why it cannot (the address in the message).
    [[nodiscard]] Result<std::uint16_t> start();

    /// Stops accepting and closes open connections. Call before the io_context stops.
    void stop();

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace switchboard::admin
