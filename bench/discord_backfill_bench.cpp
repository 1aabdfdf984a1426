// Backfill benchmark (issue 4, point 8): N messages missed in one channel, recovered by the real `switchboard`
// binary (discord connector, discord-backfill, sqlite store, the tests' ledger bot) from the Discord sandbox set to
// Discord's limits (50 requests/s global, a per-route bucket of 5 requests per 5 s unless told otherwise).
//
// The figure: the time from the first history request to the last, against the least the limits allow for that
// many requests — with a bucket of L requests per window W, R requests need at least floor((R - 1) / L) * W — and
// the 429s the sandbox served (there must be none after a bucket's first response). Prints one JSON object.
//
//   build/bench/discord_backfill_bench [--messages 10000] [--route-limit 5] [--route-window 5]
#include "background_process.hpp"
#include "discord_sandbox.hpp"
#include "ledger_reader.hpp"
#include "test_support.hpp"

#include <cmath>
#include <fstream>
#include <iostream>

using namespace switchboard::testing_support;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::uint64_t handled(const fs::path& db) {
    if (!fs::exists(db)) return 0;
    try {
        return LedgerReader(db).count("discord/100");
    } catch (const std::exception&) {
        return 0;
    }
}

int fail(const std::string& why) {
    std::cerr << "discord_backfill_bench: " << why << "\n";
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    int messages = 10000;
    int route_limit = 5;
    double route_window_s = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        if (flag == "--messages") messages = std::stoi(argv[i + 1]);
        else if (flag == "--route-limit") route_limit = std::stoi(argv[i + 1]);
        else if (flag == "--route-window") route_window_s = std::stod(argv[i + 1]);
        else return fail("unknown flag " + flag + " (--messages N, --route-limit L, --route-window SECONDS)");
    }
    TempDir dir;
    DiscordSandbox sandbox(dir.path(), {"--global-rate", "50", "--route-limit", std::to_string(route_limit),
                                        "--route-window", std::to_string(route_window_s)});
    const fs::path plugins = fs::path(SWITCHBOARD_TEST_BIN_DIR).parent_path() / "tests" / "plugins";
    {
        std::ofstream config(dir / "switchboard.yaml");
        config << "switchboard:\n  plugin_path: [\"" << plugins.string() << "\"]\n"
               << "store: { plugin: sqlite, path: data/switchboard.db }\n"
               << "connections:\n  - name: discord\n    plugin: discord\n    token: sandbox-token\n"
               << "    api_base: " << sandbox.api_base() << "\n    recovery: { policy: discord-backfill }\n"
               << "channels:\n  general: { connection: discord, id: \"100\" }\n"
               << "bots:\n  - { plugin: ledger }\n";
    }
    const fs::path db = dir / "data/switchboard.db";
    const fs::path binary = fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard";
    const std::vector<std::string> args = {"run", "-c", (dir / "switchboard.yaml").string()};
    {
        // A first run handles one message live: the channel's cursor.
        BackgroundProcess host(binary, args, dir.path(), "host-first");
        if (!wait_until([&] { return sandbox.control("GET", "/sessions")["sessions"].size() > 0; },
                        std::chrono::seconds(30)))
            return fail("the host did not connect: " + host.err());
        sandbox.control("POST", "/messages", {{"channel_id", "100"}, {"content", "before"}});
        if (!wait_until([&] { return handled(db) == 1; }, std::chrono::seconds(30)))
            return fail("the first message was not handled: " + host.err());
        if (host.stop() != 0) return fail("the host did not stop cleanly: " + host.err());
    }
    // While it is away: the session ends and N messages are said.
    sandbox.control("POST", "/gateway/invalidate_sessions", json::object());
    sandbox.control("POST", "/messages",
                    {{"channel_id", "100"}, {"count", messages}, {"content_prefix", "missed "}, {"dispatch", false}});
    sandbox.control("POST", "/stats/reset", json::object());

    const auto started = std::chrono::steady_clock::now();
    BackgroundProcess host(binary, args, dir.path(), "host");
    if (!wait_until([&] { return handled(db) >= static_cast<std::uint64_t>(messages) + 1; }, std::chrono::hours(1)))
        return fail("backfill did not finish: " + host.err());
    const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    host.stop();

    const json stats = sandbox.control("GET", "/stats");
    std::vector<std::int64_t> times;
    int limited = 0;
    for (const auto& entry : stats["request_log"]) {
        const std::string path = entry.value("path", "");
        if (entry.value("method", "") != "GET" || path.find("/channels/100/messages") == std::string::npos) continue;
        if (entry.value("status", 0) == 429) {
            ++limited;
            continue;
        }
        times.push_back(entry.value("t", std::int64_t{0}));
    }
    if (times.empty()) return fail("no history request reached the sandbox");
    const double span_s = (times.back() - times.front()) / 1000.0;
    const auto requests = static_cast<std::int64_t>(times.size());
    const double minimum_s = std::floor(static_cast<double>(requests - 1) / route_limit) * route_window_s;
    LedgerReader ledger(db);
    const auto texts = ledger.texts("discord/100");
    bool in_order = texts.size() == static_cast<std::size_t>(messages) + 1;
    for (int i = 1; in_order && i <= messages; ++i) in_order = texts[i] == "missed " + std::to_string(i);
    const json out = {{"benchmark", "discord_backfill"},
                      {"messages", messages},
                      {"route_limit", route_limit},
                      {"route_window_s", route_window_s},
                      {"global_rate", 50},
                      {"history_requests", requests},
                      {"history_span_s", span_s},
                      {"minimum_span_s", minimum_s},
                      {"span_over_minimum", minimum_s > 0 ? span_s / minimum_s : 0.0},
                      {"restart_to_caught_up_s", total_s},
                      {"http_429", limited},
                      {"rate_limited_total", stats.value("rate_limited", 0)},
                      {"requests_while_told_to_wait", stats.value("requests_while_told_to_wait", 0)},
                      {"all_handled_once_in_order", in_order && ledger.seen_twice().empty()}};
    std::cout << out.dump(2) << "\n";
    return in_order ? 0 : 1;
}
