#pragma once
// Two `switchboard` hosts sharing one redis store (DESIGN §8), for the failover tests and the failover benchmark:
// a redis-server and a Discord sandbox started on free loopback ports, one config per host (the same but for
// switchboard.cluster.host_id), the ledger bot recording every message it handles in the store's key-value space.
// Include in one .cpp per executable; link Boost::filesystem, hiredis, nlohmann_json, Threads.

#include "background_process.hpp"
#include "discord_sandbox.hpp"
#include "redis_server.hpp"
#include "test_support.hpp"

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace switchboard::testing_support {

class TwoHosts {
public:
    /// The connection's name and its one channel.
    static constexpr const char* kConnection = "discord";
    static constexpr const char* kChannel = "100";

    /// Starts redis-server and the sandbox, and writes `host-a.yaml` and `host-b.yaml` with @p lease_ttl. With
    /// @p work_sharing, the hosts share the bots' work, and the echo bot answers every message too.
    explicit TwoHosts(std::chrono::milliseconds lease_ttl, bool work_sharing = false)
        : ttl_(lease_ttl),
          work_sharing_(work_sharing),
          sandbox_(dir_.path(), {"--route-limit", "1000"}) {  // the bot's answers are not what is measured
        if (!redis_.start()) throw std::runtime_error(redis_.why());
        for (const char* id : {"host-a", "host-b"}) write_file(dir_ / (std::string(id) + ".yaml"), config(id));
    }

    [[nodiscard]] const std::filesystem::path& dir() const { return dir_.path(); }
    [[nodiscard]] RedisServer& redis() { return redis_; }
    [[nodiscard]] DiscordSandbox& sandbox() { return sandbox_; }
    [[nodiscard]] std::chrono::milliseconds lease_ttl() const { return ttl_; }

    /// Starts host @p id ("host-a" or "host-b"); its output goes to `<id>.out` / `<id>.err` in dir().
    [[nodiscard]] std::unique_ptr<BackgroundProcess> start(const std::string& id) const {
        return std::make_unique<BackgroundProcess>(
            std::filesystem::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard",
            std::vector<std::string>{"run", "-c", (dir_ / (id + ".yaml")).string()}, dir_.path(), id);
    }

    /// Starts host-a and waits until it holds the lease and is connected, then host-b until it stands by. Returns
    /// "" when both are so, else what went wrong (with the hosts' logs).
    [[nodiscard]] std::string start_holder_and_standby(std::unique_ptr<BackgroundProcess>& a,
                                                       std::unique_ptr<BackgroundProcess>& b) const {
        a = start("host-a");
        if (!wait_until([&] { return lease_holder() == "host-a" && session_attached(); }, std::chrono::seconds(30))) {
            return "host-a did not take the lease and connect (holder '" + lease_holder() + "'): " + a->err() +
                   "\nsandbox: " + sandbox_.log();
        }
        b = start("host-b");
        if (!wait_until([&] { return b->err().find("standing by") != std::string::npos; }, std::chrono::seconds(20))) {
            return "host-b did not stand by: " + b->err();
        }
        return {};
    }

    /// The id of the host holding the connection's lease now, or "" if nobody does.
    [[nodiscard]] std::string lease_holder() const {
        const std::string value = redis_.command({"GET", std::string("switchboard:lease:") + kConnection});
        const auto space = value.find(' ');
        return value == "(nil)" || space == std::string::npos ? std::string() : value.substr(space + 1);
    }

    /// Whether a gateway session is attached in the sandbox (a host is connected).
    [[nodiscard]] bool session_attached() const {
        const nlohmann::json sessions = sandbox_.control("GET", "/sessions");  // named: a loop over a temporary's
        for (const auto& session : sessions["sessions"]) {                       // member would dangle
            if (session.value("attached", false)) return true;
        }
        return false;
    }

    /// Posts @p count messages "<prefix>1".."<prefix>count" into the channel, as a user.
    void post(int count, const std::string& prefix) const {
        sandbox_.control("POST", "/messages",
                         {{"channel_id", kChannel}, {"count", count}, {"content_prefix", prefix}});
    }

    /// What the ledger bot recorded (in the redis store): how many it handled, the texts in the order it handled
    /// them, the ids it saw, and the ids it handled more than once. With work sharing two hosts' ledger bots
    /// update `count` and `at N` at the same time (read, then write: updates get lost), so there only `seen` and
    /// `twice` are exact.
    struct Ledger {
        std::uint64_t count = 0;
        std::vector<std::string> texts;
        std::set<std::string> seen;
        std::vector<std::string> twice;
    };
    [[nodiscard]] Ledger ledger() const {
        Ledger out;
        const std::string channel = std::string(kConnection) + "/" + kChannel;
        std::istringstream lines(redis_.command({"HGETALL", "switchboard:kv:ledger"}));
        std::map<std::uint64_t, std::string> at;
        std::string key;
        std::string value;
        while (std::getline(lines, key) && std::getline(lines, value)) {
            if (key == "count " + channel) {
                out.count = std::stoull(value);
            } else if (key.rfind("at " + channel + " ", 0) == 0) {
                at[std::stoull(key.substr(channel.size() + 4))] = value;
            } else if (key.rfind("seen " + channel + "/", 0) == 0) {
                out.seen.insert(key.substr(channel.size() + 6));
                if (value != "1") out.twice.push_back(key.substr(channel.size() + 6));
            }
        }
        for (auto& [n, text] : at) out.texts.push_back(std::move(text));
        return out;
    }

    /// The texts the bot sent into the channel, in order.
    [[nodiscard]] std::vector<std::string> replies() const {
        const nlohmann::json sent = sandbox_.control("GET", std::string("/sent?channel_id=") + kChannel);
        std::vector<std::string> out;
        for (const auto& message : sent["messages"]) out.push_back(message.value("content", ""));
        return out;
    }

    /// How many messages a host's pipeline processed, from its standard error @p log ("stopped: N processed").
    [[nodiscard]] static std::uint64_t processed(const std::string& log) {
        const auto at = log.rfind("stopped: ");
        return at == std::string::npos ? 0 : std::stoull(log.substr(at + 9));
    }

    /// "<prefix>1".."<prefix>count".
    [[nodiscard]] static std::vector<std::string> texts(const std::string& prefix, int count) {
        std::vector<std::string> out;
        for (int i = 1; i <= count; ++i) out.push_back(prefix + std::to_string(i));
        return out;
    }

private:
    std::string config(const std::string& id) const {
        const auto plugins = std::filesystem::path(SWITCHBOARD_TEST_BIN_DIR).parent_path() / "tests" / "plugins";
        return "switchboard:\n"
               "  plugin_path: [\"" + plugins.string() + "\"]\n"
               "  cluster: { host_id: " + id + ", lease_ttl: " + std::to_string(ttl_.count()) + "ms" +
               (work_sharing_ ? ", work_sharing: true" : "") + " }\n"
               "  stop_timeout: 5s\n"
               "store: { plugin: redis, url: \"" + redis_.url() + "\" }\n"
               "connections:\n"
               "  - name: " + kConnection + "\n"
               "    plugin: discord\n"
               "    token: sandbox-token\n"
               "    api_base: " + sandbox_.api_base() + "\n"
               "    reconnect_min: 100ms\n"
               "    reconnect_max: 1s\n"
               "    recovery: { policy: discord-backfill }\n"
               "channels:\n"
               "  general: { connection: " + kConnection + ", id: \"" + kChannel + "\" }\n"
               "bots:\n"
               "  - { plugin: ledger }\n" +
               (work_sharing_ ? "  - { plugin: echo }\n" : "");
    }

    std::chrono::milliseconds ttl_;
    bool work_sharing_;
    TempDir dir_;
    RedisServer redis_;
    DiscordSandbox sandbox_;
};

}  // namespace switchboard::testing_support
