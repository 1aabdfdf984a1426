// switchboard-sandbox PLATFORM [options]: a local, protocol-faithful stand-in for a chat platform, for tests and for
// plugin authors. Prints {"port":N,"url":"http://127.0.0.1:N"} on one line once it listens; stops on SIGTERM/SIGINT.

#include <sys/prctl.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "discord.hpp"
#include "server.hpp"
#include "telegram.hpp"

namespace po = boost::program_options;
namespace sandbox = switchboard::sandbox;

namespace {

constexpr const char* kUsage =
    "usage: switchboard-sandbox PLATFORM [options]\n"
    "\n"
    "Platforms:\n"
    "  discord    Discord REST v10 + Gateway v10 + the /_sandbox/ control API on one port\n"
    "  telegram   Telegram Bot API (getUpdates long polling) + the /_sandbox/ control API on one port\n"
    "\n"
    "Run `switchboard-sandbox PLATFORM --help` for its options; tools/sandbox/README.md documents the control API.\n";

/// Dies with the process that started it (a test runner that was killed must not leave a server behind).
void exit_with_parent() {
    const pid_t parent = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent || parent == 1) std::exit(0);
}

int serve(const std::string& host, std::uint16_t port, bool tie_to_parent,
          const std::function<std::unique_ptr<sandbox::Service>(sandbox::Loop&, std::uint16_t)>& make) {
    if (tie_to_parent) exit_with_parent();
    std::signal(SIGPIPE, SIG_IGN);
    sandbox::Server server(host, port);
    auto service = make(server.loop(), server.port());
    const std::string shown_host = host == "0.0.0.0" ? "127.0.0.1" : host;
    std::printf("{\"port\":%u,\"url\":\"http://%s:%u\"}\n", static_cast<unsigned>(server.port()), shown_host.c_str(),
                static_cast<unsigned>(server.port()));
    std::fflush(stdout);
    server.run(*service);
    return 0;
}

int run_discord(const std::vector<std::string>& args) {
    sandbox::discord::Options options;
    std::string host = "127.0.0.1";
    unsigned port = 0;
    double route_window = options.route_window_ms / 1000.0;
    double nonce_window = options.nonce_window_ms / 1000.0;
    po::options_description described("switchboard-sandbox discord [options]");
    // clang-format off
    described.add_options()("help,h", "this help")
        ("host", po::value(&host)->default_value(host), "address to listen on")
        ("port", po::value(&port)->default_value(port), "port to listen on (0: a free one, printed on stdout)")
        ("token", po::value(&options.token)->default_value(options.token), "the bot token REST and Identify must carry")
        ("heartbeat-interval", po::value(&options.heartbeat_interval_ms)->default_value(options.heartbeat_interval_ms),
         "Hello's heartbeat_interval, ms")
        ("resume-timeout", po::value(&options.resume_timeout_ms)->default_value(options.resume_timeout_ms),
         "how long a dropped session stays resumable, ms")
        ("reconnect-close", po::value(&options.reconnect_close_ms)->default_value(options.reconnect_close_ms),
         "after op 7, close the socket this much later if the client has not, ms")
        ("global-rate", po::value(&options.global_rate)->default_value(options.global_rate),
         "REST requests per second before a global 429 (0: no global limit)")
        ("route-limit", po::value(&options.route_limit)->default_value(options.route_limit),
         "requests per route bucket per window")
        ("route-window", po::value(&route_window)->default_value(route_window), "route bucket window, seconds")
        ("gateway-rate", po::value(&options.gateway_rate)->default_value(options.gateway_rate),
         "payloads a gateway client may send per 60 s before close 4008")
        ("identify-budget", po::value(&options.identify_budget)->default_value(options.identify_budget),
         "Identifies allowed per 24 h")
        ("nonce-window", po::value(&nonce_window)->default_value(nonce_window),
         "how long enforce_nonce remembers a nonce, seconds")
        ("no-message-content", "the application lacks the privileged MESSAGE_CONTENT intent (Identify with it: 4014)")
        ("replay-buffer", po::value(&options.replay_buffer)->default_value(options.replay_buffer),
         "dispatches kept per session for resume")
        ("exit-with-parent", "stop when the process that started the sandbox dies")
        ("verbose,v", "log every request and gateway event to stderr");
    // clang-format on
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(described).run(), vm);
        po::notify(vm);
    } catch (const po::error& error) {
        std::cerr << "switchboard-sandbox discord: " << error.what() << "\n" << described;
        return 2;
    }
    if (vm.count("help")) {
        std::cout << described;
        return 0;
    }
    if (port > 65535 || route_window <= 0 || options.route_limit < 1 || options.heartbeat_interval_ms < 1) {
        std::cerr << "switchboard-sandbox discord: --port must be 0..65535, --route-window > 0, --route-limit >= 1, "
                     "--heartbeat-interval >= 1\n";
        return 2;
    }
    options.route_window_ms = static_cast<int>(route_window * 1000);
    options.nonce_window_ms = static_cast<int>(nonce_window * 1000);
    options.message_content_allowed = vm.count("no-message-content") == 0;
    options.verbose = vm.count("verbose") != 0;
    return serve(
        host, static_cast<std::uint16_t>(port), vm.count("exit-with-parent") != 0,
        [&](sandbox::Loop& loop, std::uint16_t bound) { return sandbox::discord::make_service(loop, bound, options); });
}

int run_telegram(const std::vector<std::string>& args) {
    sandbox::telegram::Options options;
    std::string host = "127.0.0.1";
    unsigned port = 0;
    po::options_description described("switchboard-sandbox telegram [options]");
    // clang-format off
    described.add_options()("help,h", "this help")
        ("host", po::value(&host)->default_value(host), "address to listen on")
        ("port", po::value(&port)->default_value(port), "port to listen on (0: a free one, printed on stdout)")
        ("token", po::value(&options.token)->default_value(options.token),
         "the bot token Bot API paths must carry (/bot<token>/<method>); the number before ':' is the bot's user id")
        ("first-update-id", po::value(&options.first_update_id)->default_value(options.first_update_id),
         "update_id of the first update")
        ("chat-rate", po::value(&options.chat_rate)->default_value(options.chat_rate),
         "sendMessage per second into one chat before a 429 (0: no limit)")
        ("chat-burst", po::value(&options.chat_burst)->default_value(options.chat_burst),
         "sends into one chat allowed at once before --chat-rate holds")
        ("group-per-minute", po::value(&options.group_per_minute)->default_value(options.group_per_minute),
         "sendMessage per minute into one group or supergroup before a 429 (0: no limit)")
        ("global-rate", po::value(&options.global_rate)->default_value(options.global_rate),
         "sendMessage per second over all chats before a 429 (0: no limit)")
        ("retention", po::value(&options.retention_ms)->default_value(options.retention_ms),
         "how long an unconfirmed update is kept on the sandbox clock, ms")
        ("max-poll-timeout", po::value(&options.max_poll_timeout_s)->default_value(options.max_poll_timeout_s),
         "getUpdates' timeout is capped at this many seconds")
        ("exit-with-parent", "stop when the process that started the sandbox dies")
        ("verbose,v", "log every request to stderr");
    // clang-format on
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(described).run(), vm);
        po::notify(vm);
    } catch (const po::error& error) {
        std::cerr << "switchboard-sandbox telegram: " << error.what() << "\n" << described;
        return 2;
    }
    if (vm.count("help")) {
        std::cout << described;
        return 0;
    }
    if (port > 65535 || options.chat_rate < 0 || options.chat_burst < 1 || options.group_per_minute < 0 ||
        options.global_rate < 0 || options.retention_ms < 1 || options.max_poll_timeout_s < 0 ||
        options.first_update_id < 1) {
        std::cerr << "switchboard-sandbox telegram: --port must be 0..65535, the limits >= 0, --chat-burst >= 1, "
                     "--retention >= 1, --first-update-id >= 1\n";
        return 2;
    }
    options.verbose = vm.count("verbose") != 0;
    return serve(host, static_cast<std::uint16_t>(port), vm.count("exit-with-parent") != 0,
                 [&](sandbox::Loop& loop, std::uint16_t) { return sandbox::telegram::make_service(loop, options); });
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << kUsage;
        return 2;
    }
    const std::string platform = argv[1];
    const std::vector<std::string> args(argv + 2, argv + argc);
    try {
        if (platform == "discord") return run_discord(args);
        if (platform == "telegram") return run_telegram(args);
        if (platform == "--help" || platform == "-h" || platform == "help") {
            std::cout << kUsage;
            return 0;
        }
    } catch (const std::exception& error) {
        std::cerr << error.what() << "\n";
        return 1;
    }
    std::cerr << "switchboard-sandbox: unknown platform '" << platform << "'\n" << kUsage;
    return 2;
}
