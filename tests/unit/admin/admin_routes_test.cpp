// The admin interface's routing and checks (AdminRoutes), without sockets: what each path answers, the bearer token,
// malformed bodies.
#include "admin/admin_server.hpp"

#include <catch2/catch.hpp>

#include <optional>

using namespace switchboard;
using namespace switchboard::admin;

namespace {

struct Fixture {
    Metrics metrics;
    std::vector<nlohmann::json> sent;  // bodies given to send()
    int reloads = 0;                   // calls of reload()
    bool is_ready = true;

    AdminRoutes routes() {
        AdminApi api;
        api.ready = [this](std::vector<std::string>& reasons) {
            if (!is_ready) reasons.push_back("connection 'irc' is disconnected for 40 s");
            return is_ready;
        };
        api.status = [] { return nlohmann::json{{"connections", nlohmann::json::array()}}; };
        api.send = [this](const nlohmann::json& body, std::function<void(unsigned, nlohmann::json)> reply) {
            sent.push_back(body);
            reply(200, nlohmann::json{{"status", "delivered"}});
        };
        api.reload = [this](std::function<void(unsigned, nlohmann::json)> reply) {
            ++reloads;
            reply(409, nlohmann::json{{"error", "cannot_change"}, {"message", "store"}});
        };
        api.metrics = &metrics;
        return AdminRoutes(std::move(api), "s3cret-token");
    }

    AdminResponse call(const std::string& method, const std::string& target, const std::string& authorization = {},
                       const std::string& body = {}) {
        std::optional<AdminResponse> answer;
        int calls = 0;
        routes().handle(AdminRequest{method, target, authorization, body}, [&](AdminResponse response) {
            ++calls;
            answer = std::move(response);
        });
        REQUIRE(calls == 1);
        return *answer;
    }
};

nlohmann::json body_of(const AdminResponse& response) { return nlohmann::json::parse(response.body); }

}  // namespace

TEST_CASE("healthz, readyz, metrics and the status page need no token", "[admin]") {
    Fixture f;
    CHECK(f.call("GET", "/healthz").status == 200);
    CHECK(f.call("GET", "/readyz").status == 200);
    f.is_ready = false;
    const AdminResponse not_ready = f.call("GET", "/readyz");
    CHECK(not_ready.status == 503);
    CHECK(not_ready.body.find("connection 'irc' is disconnected") != std::string::npos);

    const AdminResponse metrics = f.call("GET", "/metrics");
    CHECK(metrics.status == 200);
    CHECK(metrics.content_type == "text/plain; version=0.0.4; charset=utf-8");
    CHECK(metrics.body.find("# TYPE switchboard_deliveries_total counter") != std::string::npos);

    const AdminResponse page = f.call("GET", "/");
    CHECK(page.status == 200);
    CHECK(page.content_type == "text/html; charset=utf-8");
    CHECK(page.body.find("<title>Switchboard status</title>") != std::string::npos);
    // Self-contained: nothing is fetched from another origin.
    CHECK(page.body.find("http://") == std::string::npos);
    CHECK(page.body.find("https://") == std::string::npos);
}

TEST_CASE("/api/ needs the bearer token: missing or wrong is 401", "[admin]") {
    Fixture f;
    const AdminResponse missing = f.call("GET", "/api/status");
    CHECK(missing.status == 401);
    CHECK(body_of(missing)["error"] == "unauthorized");
    CHECK(f.call("GET", "/api/status", "Bearer wrong").status == 401);
    CHECK(f.call("GET", "/api/status", "Bearer s3cret-token-and-more").status == 401);
    CHECK(f.call("GET", "/api/status", "Bearer s3cret-toke").status == 401);
    CHECK(f.call("GET", "/api/status", "Basic s3cret-token").status == 401);
    CHECK(f.call("GET", "/api/status", "Bearer s3cret-token").status == 200);
    CHECK(f.call("GET", "/api/status", "bearer s3cret-token").status == 200);  // the scheme is case-insensitive
    CHECK(f.call("POST", "/api/send", "", R"({"kind":"group"})").status == 401);
    CHECK(f.sent.empty());
}

TEST_CASE("An empty configured token refuses every /api/ request", "[admin]") {
    AdminRoutes routes(AdminApi{}, "");
    unsigned status = 0;
    routes.handle(AdminRequest{"GET", "/api/status", "Bearer ", ""}, [&](AdminResponse r) { status = r.status; });
    CHECK(status == 401);
}

TEST_CASE("/api/send: malformed JSON is 400 saying what is wrong, a good body goes to the host", "[admin]") {
    Fixture f;
    const std::string token = "Bearer s3cret-token";
    const AdminResponse bad = f.call("POST", "/api/send", token, "{\"kind\": ");
    CHECK(bad.status == 400);
    CHECK(body_of(bad)["error"] == "bad_json");
    CHECK(body_of(bad)["message"].get<std::string>().find("not JSON") != std::string::npos);

    const AdminResponse array = f.call("POST", "/api/send", token, "[1, 2]");
    CHECK(array.status == 400);
    CHECK(body_of(array)["error"] == "bad_request");
    CHECK(f.sent.empty());

    const AdminResponse good = f.call("POST", "/api/send", token, R"({"kind":"group","target":"ops","text":"hi"})");
    CHECK(good.status == 200);
    CHECK(body_of(good)["status"] == "delivered");
    REQUIRE(f.sent.size() == 1);
    CHECK(f.sent[0]["target"] == "ops");
}

TEST_CASE("/api/reload: POST with the token asks the host, whose status and answer go back as they are", "[admin]") {
    Fixture f;
    CHECK(f.call("POST", "/api/reload").status == 401);
    CHECK(f.call("GET", "/api/reload", "Bearer s3cret-token").status == 405);
    CHECK(f.reloads == 0);
    const AdminResponse refused = f.call("POST", "/api/reload", "Bearer s3cret-token");
    CHECK(f.reloads == 1);
    CHECK(refused.status == 409);
    CHECK(body_of(refused)["error"] == "cannot_change");
}

TEST_CASE("Unknown paths are 404 and wrong methods 405", "[admin]") {
    Fixture f;
    CHECK(f.call("GET", "/nope").status == 404);
    CHECK(f.call("GET", "/api/nope", "Bearer s3cret-token").status == 404);
    CHECK(f.call("GET", "/api/send", "Bearer s3cret-token").status == 405);
    CHECK(f.call("POST", "/healthz").status == 405);
    CHECK(f.call("DELETE", "/metrics").status == 405);
    CHECK(f.call("GET", "/healthz?verbose=1").status == 200);  // the query does not change the path
}
