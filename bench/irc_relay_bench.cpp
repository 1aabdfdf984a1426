// IRC relay benchmark (issue 5, point 5): a bridge's work end to end through a real InspIRCd. A client says N lines
// in #a; the real `switchboard` binary (irc connector, irc-replay, a store, and one route from #a to #b — what
// examples/bridge does between platforms) relays each as "<sender> text" into #b, where a second client counts them.
//
// Each line carries its sequence number and the time it was written to the server's socket; the counter notes when
// its relay arrived. Figures: messages/s from the first write to the last arrival, and latency percentiles. Lines
// must all arrive, once each, in order, and nobody may be disconnected: the test server's connect class has no flood
// limits (tests/support/irc/inspircd.conf.in), and the bridge's own send rate is the connection's `limits:`.
// Prints one JSON object; exits 1 when something was lost, doubled, reordered or disconnected, 77 without InspIRCd.
//
//   build/bench/irc_relay_bench [--lines 10000] [--send-rate 0] [--rate 0] [--burst 10] [--concurrency 1]
//                               [--store sqlite|memory] [--baseline 1]
//
// --baseline 1 runs no bridge: the sender says the lines in #b itself, so the figures are InspIRCd's and the test
// clients' own, the floor under the relayed ones.
#include "irc_server.hpp"
#include "irc_test_client.hpp"
#include "background_process.hpp"
#include "test_support.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

using namespace switchboard::testing_support;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kBot = "relay";
constexpr int kSkip = 77;  // ctest's SKIP_RETURN_CODE

int fail(const std::string& why) {
    std::cerr << "irc_relay_bench: " << why << "\n";
    return 1;
}

struct Options {
    int lines = 10000;
    double send_rate = 0;  // lines/s the sender writes; 0: as fast as the socket takes them
    double rate = 0;       // the bridge connection's limits.rate (0: none)
    int burst = 10;
    int concurrency = 1;
    std::string store = "sqlite";
    bool baseline = false;  // no bridge: the sender says the lines in #b itself (the server's own cost)
};

std::string config(const IrcServer& server, const Options& options) {
    const std::string store = options.store == "memory" ? "{ plugin: memory }"
                                                        : "{ plugin: sqlite, path: data/relay.db }";
    return "store: " + store + "\n"
           "connections:\n"
           "  - name: irc\n"
           "    plugin: irc\n"
           "    server: " + server.address() + "\n"
           "    nick: " + kBot + "\n"
           "    join: [\"#a\", \"#b\"]\n"
           "    limits: { concurrency: " + std::to_string(options.concurrency) +
           ", rate: " + std::to_string(options.rate) + ", burst: " + std::to_string(options.burst) + " }\n"
           "    recovery: { policy: irc-replay }\n"
           "channels:\n"
           "  a: { connection: irc, id: \"#a\" }\n"
           "  b: { connection: irc, id: \"#b\" }\n"
           "routes:\n"
           "  - { from: a, to: { channel: b } }\n";
}

double percentile(std::vector<double> sorted, double p) {
    if (sorted.empty()) return 0;
    const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
    return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace

int main(int argc, char** argv) {
    Options options;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        const std::string value = argv[i + 1];
        if (flag == "--lines") options.lines = std::stoi(value);
        else if (flag == "--send-rate") options.send_rate = std::stod(value);
        else if (flag == "--rate") options.rate = std::stod(value);
        else if (flag == "--burst") options.burst = std::stoi(value);
        else if (flag == "--concurrency") options.concurrency = std::stoi(value);
        else if (flag == "--store") options.store = value;
        else if (flag == "--baseline") options.baseline = value == "1" || value == "true";
        else
            return fail("unknown flag " + flag +
                        " (--lines N, --send-rate LINES_PER_S, --rate R, --burst B, --concurrency C, --store S, "
                        "--baseline 1)");
    }
    if (options.lines < 1) return fail("--lines must be at least 1");
    if (!irc_server_binary(IrcServerKind::inspircd)) {
        std::cerr << "irc_relay_bench: inspircd is not installed (tools/deps.sh test installs it); skipped\n";
        return kSkip;
    }
    IrcServer server(IrcServerKind::inspircd);
    if (!server.start()) return fail("InspIRCd did not start: " + server.why());
    auto sender = server.client("sender");
    auto counter = server.client("counter");
    // With --baseline the lines go from the sender into #b directly, and the counter counts the sender's own.
    const std::string into = options.baseline ? "#b" : "#a";
    const std::string from = options.baseline ? "sender" : kBot;
    const std::string prefix = options.baseline ? "m " : "<sender> m ";
    if (!sender || !counter || !sender->join(into) || !counter->join("#b")) return fail("the clients could not join");

    TempDir dir;
    std::ofstream(dir / "relay.yaml") << config(server, options);
    std::optional<BackgroundProcess> host;
    if (!options.baseline) {
        host.emplace(fs::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard",
                     std::vector<std::string>{"run", "-c", "relay.yaml"}, dir.path(), "host");
        const auto bot_joined = [](IrcTestClient& client) {
            return client.wait_for([](const IrcTestLine& l) { return l.command == "JOIN" && l.nick() == kBot; },
                                   std::chrono::seconds(30))
                .has_value();
        };
        if (!bot_joined(*sender) || !bot_joined(*counter)) return fail("the bridge did not join: " + host->err());
        // One line through first: the bridge is past its join barrier and recovery, and relaying.
        sender->privmsg("#a", "warm-up");
        if (!counter->wait_for([](const IrcTestLine& l) { return l.command == "PRIVMSG" && l.nick() == kBot; },
                               std::chrono::seconds(30)))
            return fail("the warm-up line was not relayed: " + host->err());
    }

    const int n = options.lines;
    const auto origin = Clock::now();
    const auto micros = [&] {
        return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - origin).count();
    };
    std::vector<std::int64_t> sent_at(static_cast<std::size_t>(n), -1);
    std::vector<std::int64_t> arrived_at(static_cast<std::size_t>(n), -1);
    int received = 0;
    int out_of_order = 0;
    int foreign = 0;

    // The counter reads on its own thread while the sender writes: arrival times are taken as lines come in.
    std::thread counting([&] {
        int last = -1;
        const auto deadline = std::chrono::seconds(60) + std::chrono::milliseconds(20 * static_cast<std::int64_t>(n));
        counter->wait_for(
            [&](const IrcTestLine& l) {
                if (l.command != "PRIVMSG" || l.nick() != from) return false;
                const std::string& text = l.param(1);
                if (text.rfind(prefix, 0) != 0) {
                    ++foreign;
                    return false;
                }
                const int seq = std::atoi(text.c_str() + prefix.size());
                if (seq < 0 || seq >= n) {
                    ++foreign;
                    return false;
                }
                if (arrived_at[static_cast<std::size_t>(seq)] >= 0) return false;  // counted below
                arrived_at[static_cast<std::size_t>(seq)] = micros();
                if (seq < last) ++out_of_order;
                last = std::max(last, seq);
                return ++received == n;
            },
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline));
    });

    // The sender: one line per write, stamped as it goes to the socket (paced when --send-rate is set).
    for (int i = 0; i < n; ++i) {
        if (options.send_rate > 0) {
            const auto due = origin + std::chrono::microseconds(static_cast<std::int64_t>(i * 1e6 / options.send_rate));
            std::this_thread::sleep_until(due);
        }
        sent_at[static_cast<std::size_t>(i)] = micros();
        sender->privmsg(into, "m " + std::to_string(i) + " " + std::to_string(sent_at[static_cast<std::size_t>(i)]));
    }
    const double sending_s = static_cast<double>(micros()) / 1e6;
    counting.join();
    // Anything doubled after the last one arrived would come now; then every relayed line is counted again.
    counter->drain(std::chrono::seconds(2));
    int duplicates = 0;
    {
        std::vector<int> seen(static_cast<std::size_t>(n), 0);
        for (const auto& l : counter->lines()) {
            if (l.command != "PRIVMSG" || l.nick() != from || l.param(1).rfind(prefix, 0) != 0) continue;
            const int seq = std::atoi(l.param(1).c_str() + prefix.size());
            if (seq >= 0 && seq < n && ++seen[static_cast<std::size_t>(seq)] > 1) ++duplicates;
        }
    }
    const bool host_running = !host || host->running();
    const std::string log = host ? host->err() : std::string();
    const bool disconnected = log.find("disconnected") != std::string::npos || sender->closed() || counter->closed();
    if (host) host->stop();

    std::vector<double> latencies_ms;
    std::int64_t last_arrival = 0;
    for (int i = 0; i < n; ++i) {
        const auto at = arrived_at[static_cast<std::size_t>(i)];
        if (at < 0) continue;
        latencies_ms.push_back(static_cast<double>(at - sent_at[static_cast<std::size_t>(i)]) / 1000.0);
        last_arrival = std::max(last_arrival, at);
    }
    std::sort(latencies_ms.begin(), latencies_ms.end());
    const double span_s = static_cast<double>(last_arrival - sent_at.front()) / 1e6;
    const int lost = n - received;
    const bool ok = lost == 0 && duplicates == 0 && out_of_order == 0 && !disconnected && host_running;
    const nlohmann::ordered_json out = {
        {"benchmark", "irc_relay"},
        {"lines", n},
        {"relay", options.baseline ? "none (baseline: client to client)" : "switchboard route #a -> #b"},
        {"store", options.store},
        {"send_rate", options.send_rate},
        {"limits", {{"rate", options.rate}, {"burst", options.burst}, {"concurrency", options.concurrency}}},
        {"sending_s", sending_s},
        {"first_sent_to_last_relayed_s", span_s},
        {"messages_per_s", span_s > 0 ? received / span_s : 0.0},
        {"latency_ms",
         {{"p50", percentile(latencies_ms, 50)},
          {"p90", percentile(latencies_ms, 90)},
          {"p99", percentile(latencies_ms, 99)},
          {"max", latencies_ms.empty() ? 0.0 : latencies_ms.back()}}},
        {"received", received},
        {"lost", lost},
        {"duplicates", duplicates},
        {"out_of_order", out_of_order},
        {"other_lines", foreign},
        {"disconnected", disconnected},
        {"ok", ok}};
    std::cout << out.dump(2) << "\n";
    if (!ok) std::cerr << "irc_relay_bench: host log:\n" << log.substr(log.size() > 20000 ? log.size() - 20000 : 0);
    return ok ? 0 : 1;
}
