// Failover benchmark (issue 6, point 5): two real `switchboard` hosts sharing a redis store (tests/support/
// two_hosts.hpp: redis-server, Discord sandbox, ledger bot). Per run: host A holds the connection's lease, B stands
// by; messages flow; A is SIGKILLed; then
//   takeover_ms  — from the kill until B holds the lease (bounded by lease_ttl + lease_ttl / 10 + B's poll),
//   connected_ms — until B's gateway session is attached,
//   caught_up_ms — until every message (those A had not handled, and a burst posted right after the kill) is handled.
// Checks each message was handled exactly once (exit 1 otherwise). Prints one JSON object.
//
//   build/bench/failover_bench [--runs 3] [--lease-ttl-ms 2000] [--messages 500]
#include "two_hosts.hpp"

#include <algorithm>
#include <csignal>
#include <iostream>

using namespace switchboard::testing_support;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

int fail(const std::string& why) {
    std::cerr << "failover_bench: " << why << "\n";
    return 1;
}

double ms_since(Clock::time_point start) {
    return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

json summary(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return {{"min", values.front()}, {"median", values[values.size() / 2]}, {"max", values.back()}};
}

}  // namespace

int main(int argc, char** argv) {
    int runs = 3;
    int ttl_ms = 2000;
    int messages = 500;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        if (flag == "--runs") runs = std::max(1, std::stoi(argv[i + 1]));
        else if (flag == "--lease-ttl-ms") ttl_ms = std::max(300, std::stoi(argv[i + 1]));
        else if (flag == "--messages") messages = std::max(2, std::stoi(argv[i + 1]));
        else return fail("unknown flag " + flag + " (--runs N, --lease-ttl-ms MS, --messages N)");
    }
    std::vector<double> takeover, connected, caught_up;
    for (int run = 0; run < runs; ++run) {
        TwoHosts hosts{std::chrono::milliseconds(ttl_ms)};
        std::unique_ptr<BackgroundProcess> a;
        std::unique_ptr<BackgroundProcess> b;
        if (const std::string started = hosts.start_holder_and_standby(a, b); !started.empty()) return fail(started);
        hosts.post(messages, "m");
        if (!wait_until([&] { return hosts.ledger().count >= static_cast<std::uint64_t>(messages / 2); },
                        std::chrono::seconds(60))) {
            return fail("host-a handled too little: " + a->err());
        }
        a->signal(SIGKILL);
        const auto killed = Clock::now();
        hosts.post(messages, "n");
        if (!wait_until([&] { return hosts.lease_holder() == "host-b"; }, std::chrono::seconds(30))) {
            return fail("host-b did not take the lease: " + b->err());
        }
        takeover.push_back(ms_since(killed));
        if (!wait_until([&] { return hosts.session_attached(); }, std::chrono::seconds(30))) {
            return fail("host-b did not connect: " + b->err());
        }
        connected.push_back(ms_since(killed));
        const auto total = static_cast<std::uint64_t>(2 * messages);
        if (!wait_until([&] { return hosts.ledger().count >= total; }, std::chrono::seconds(120))) {
            return fail("host-b did not catch up: " + b->err());
        }
        caught_up.push_back(ms_since(killed));
        const TwoHosts::Ledger ledger = hosts.ledger();
        std::vector<std::string> expected = TwoHosts::texts("m", messages);
        const auto second = TwoHosts::texts("n", messages);
        expected.insert(expected.end(), second.begin(), second.end());
        std::vector<std::string> got = ledger.texts;
        std::sort(expected.begin(), expected.end());
        std::sort(got.begin(), got.end());
        if (ledger.count != total || !ledger.twice.empty() || got != expected) {
            return fail("run " + std::to_string(run + 1) + ": " + std::to_string(ledger.count) + " handled, " +
                        std::to_string(ledger.twice.size()) + " twice, expected each of " + std::to_string(total) +
                        " once");
        }
        b->stop();
    }
    json out{{"benchmark", "failover"},
             {"runs", runs},
             {"lease_ttl_ms", ttl_ms},
             {"messages_per_run", 2 * messages},
             {"takeover_ms", summary(takeover)},
             {"connected_ms", summary(connected)},
             {"caught_up_ms", summary(caught_up)},
             {"bound_ms", ttl_ms + 1000},
             {"handled_exactly_once", true}};
    std::cout << out.dump(2) << "\n";
    return 0;
}
