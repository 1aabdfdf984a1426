// The admin interface of a running host (the real `switchboard` binary, the discord connector against the Discord
// sandbox, the memory store, the echo bot): health and readiness, the status document, sending through the API,
// metrics after traffic, and the checks on tokens and bodies.
#include "background_process.hpp"
#include "discord_sandbox.hpp"
#include "http_client.hpp"
#include "test_support.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <regex>

using namespace switchboard::testing_support;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kSwitchboard = fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";
const std::string kToken = "admin-test-token";

// A host with the admin server on a free port, its token from the environment as an operator would set it.
struct AdminHost {
    // A second connection, `backup` on a sandbox of its own, can be ended without stopping the host.
    AdminHost(const TempDir& dir, const DiscordSandbox& sandbox, const DiscordSandbox& backup) {
        std::ofstream(dir / "switchboard.yaml")
            << "switchboard:\n"
               "  admin: { listen: \"127.0.0.1:0\", token: \"${SB_ADMIN_TEST_TOKEN}\" }\n"
               "store: { plugin: memory }\n"
               "connections:\n"
               "  - name: discord\n"
               "    plugin: discord\n"
               "    token: sandbox-token\n"
               "    api_base: " + sandbox.api_base() + "\n"
               "    reconnect_min: 100ms\n"
               "    reconnect_max: 1s\n"
               "  - name: backup\n"
               "    plugin: discord\n"
               "    token: sandbox-token\n"
               "    api_base: " + backup.api_base() + "\n"
               "channels:\n"
               "  general: { connection: discord, id: \"100\" }\n"
               "  random: { connection: discord, id: \"101\" }\n"
               "bots:\n"
               "  - { plugin: echo, channels: [general] }\n";
        ::setenv("SB_ADMIN_TEST_TOKEN", kToken.c_str(), 1);
        process = std::make_unique<BackgroundProcess>(
            kSwitchboard, std::vector<std::string>{"run", "-c", (dir / "switchboard.yaml").string()}, dir.path(),
            "host");
        static const std::regex listening(R"(admin: listening on http://127\.0\.0\.1:(\d+))");
        std::smatch match;
        const bool found = wait_until([&] {
            const std::string err = process->err();
            return std::regex_search(err, match, listening) || !process->running();
        }, std::chrono::seconds(20));
        const std::string err = process->err();
        if (!found || !std::regex_search(err, match, listening)) {
            throw std::runtime_error("the host did not say where the admin server listens: " + err);
        }
        port = std::stoi(match[1]);
    }

    HttpResponse get(const std::string& target, bool authorized = true) const {
        return http_request(port, "GET", target, {}, authorized ? auth() : std::map<std::string, std::string>{});
    }
    HttpResponse post(const std::string& target, const std::string& body) const {
        return http_request(port, "POST", target, body, auth());
    }
    static std::map<std::string, std::string> auth() { return {{"Authorization", "Bearer " + kToken}}; }

    std::unique_ptr<BackgroundProcess> process;
    int port = 0;
};

// What the bot created on the sandbox, in order.
json bot_messages(const DiscordSandbox& sandbox) { return sandbox.control("GET", "/sent")["messages"]; }

json connection(const json& status, const std::string& name) {
    for (const auto& c : status["connections"]) {
        if (c["name"] == name) return c;
    }
    return json();
}

// The value of the sample line that starts with @p series in Prometheus text, or -1.
double sample(const std::string& metrics, const std::string& series) {
    const auto at = metrics.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    return std::stod(metrics.substr(at + series.size() + 2));
}

}  // namespace

TEST_CASE("a running host answers health, readiness, status, metrics and sends through the API", "[admin]") {
    TempDir dir;
    DiscordSandbox sandbox(dir.path());
    const fs::path backup_dir = dir / "backup";
    fs::create_directories(backup_dir);
    DiscordSandbox backup(backup_dir);
    AdminHost host(dir, sandbox, backup);
    INFO(host.process->err());

    CHECK(host.get("/healthz", false).status == 200);
    // Not ready until every connection has connected.
    REQUIRE(wait_until([&] { return host.get("/readyz", false).status == 200; }, std::chrono::seconds(20)));
    for (const auto& c : host.get("/api/status").json()["connections"]) CHECK(c["state"] == "connected");

    SECTION("the status document names the connection, its channels and the loaded plugins") {
        const json status = host.get("/api/status").json();
        const json discord = connection(status, "discord");
        REQUIRE(discord.is_object());
        CHECK(discord["plugin"] == "discord");
        CHECK(discord["state"] == "connected");
        REQUIRE(discord["channels"].size() == 2);
        CHECK(discord["channels"][0]["id"] == "100");
        CHECK(discord["channels"][0]["name"] == "general");
        bool has_connector = false;
        for (const auto& plugin : status["plugins"]) {
            if (plugin["name"] == "discord" && plugin["kind"] == "connector") has_connector = true;
        }
        CHECK(has_connector);
        CHECK(status["store"] == "memory");
    }

    SECTION("traffic shows in the status and the metrics") {
        sandbox.control("POST", "/messages", {{"channel_id", "100"}, {"content", "ping"}});
        REQUIRE(wait_until([&] { return bot_messages(sandbox).size() == 1; }, std::chrono::seconds(20)));
        json status;
        REQUIRE(wait_until([&] {
            status = host.get("/api/status").json();
            return status["pipeline"]["processed"] == 1 && !status["deliveries"]["recent"].empty();
        }, std::chrono::seconds(10)));
        const json channel = connection(status, "discord")["channels"][0];
        CHECK(channel["cursor"]["message_id"].is_string());
        CHECK(status["deliveries"]["recent"].back()["status"] == "delivered");

        const HttpResponse metrics = host.get("/metrics", false);
        CHECK(metrics.status == 200);
        CHECK(metrics.content_type == "text/plain; version=0.0.4; charset=utf-8");
        CHECK(sample(metrics.body, R"(switchboard_messages_in_total{channel="100",connection="discord"})") == 1);
        CHECK(sample(metrics.body, R"(switchboard_messages_out_total{channel="100",connection="discord"})") == 1);
        CHECK(sample(metrics.body, R"(switchboard_deliveries_total{status="delivered"})") == 1);
        CHECK(sample(metrics.body, R"(switchboard_connection_events_total{connection="discord",event="connected"})") ==
              1);
        CHECK(sample(metrics.body, R"(switchboard_store_seconds_count{op="commit"})") >= 1);
    }

    SECTION("POST /api/send routes an envelope and answers with its report") {
        const HttpResponse sent =
            host.post("/api/send", R"({"kind":"group","target":"random","text":"from the admin API"})");
        REQUIRE(sent.status == 200);
        const json report = sent.json();
        CHECK(report["status"] == "delivered");
        REQUIRE(report["recipients"].size() == 1);
        CHECK(report["recipients"][0]["address"] == "discord/101");
        const json on_platform = bot_messages(sandbox);
        REQUIRE(on_platform.size() == 1);
        CHECK(on_platform[0]["content"] == "from the admin API");

        const json dissolved = host.post("/api/send", R"({"kind":"group","target":"nobody","text":"x"})").json();
        CHECK(dissolved["status"] == "group_dissolved");
    }

    SECTION("tokens, bodies and envelopes are checked") {
        CHECK(host.get("/api/status", false).status == 401);
        CHECK(http_request(host.port, "GET", "/api/status", {}, {{"Authorization", "Bearer nope"}}).status == 401);
        const HttpResponse bad_json = host.post("/api/send", "{\"kind\":");
        CHECK(bad_json.status == 400);
        CHECK(bad_json.json()["error"] == "bad_json");
        const HttpResponse bad_envelope = host.post("/api/send", R"({"kind":"everyone","text":"x"})");
        CHECK(bad_envelope.status == 400);
        CHECK(bad_envelope.json()["message"].get<std::string>().find("'kind'") != std::string::npos);
        const HttpResponse too_large = host.post("/api/send", std::string(100 * 1024, ' '));
        CHECK(too_large.status == 413);
        CHECK(bot_messages(sandbox).empty());
        // The server is still there after all of that.
        CHECK(host.get("/healthz", false).status == 200);
    }

    SECTION("a connection that ended makes the host not ready, naming it") {
        backup.control("POST", "/gateway/close", {{"code", 4004}});
        HttpResponse ready;
        REQUIRE(wait_until([&] {
            ready = host.get("/readyz", false);
            return ready.status == 503;
        }, std::chrono::seconds(20)));
        CHECK(ready.body.find("connection 'backup' has finished") != std::string::npos);
        const json status = host.get("/api/status").json();
        CHECK(connection(status, "backup")["state"] == "finished");
        CHECK(connection(status, "discord")["state"] == "connected");
    }
}
