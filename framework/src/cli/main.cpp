// The `switchboard` command: run, check, plugins.
//
// Exit status: 0 success; 1 a failure while running (store cannot open, plugin failed to start); 2 a usage or
// configuration error; 3 a plugin library was refused.

#include "allocator/allocator.hpp"
#include "config/config.hpp"
#include "host/config_source.hpp"
#include "host/host.hpp"
#include "host/logging.hpp"
#include "plugin/registry.hpp"
#include "routing/directory.hpp"
#include "routing/router.hpp"

#include <switchboard/version.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/program_options.hpp>

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>

namespace po = boost::program_options;
namespace fs = std::filesystem;
using namespace switchboard;

namespace {

constexpr int kExitOk = 0;
constexpr int kExitUsage = 2;
constexpr int kExitRefused = 3;

constexpr const char* kUsage =
    "usage: switchboard COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  run      [-c FILE]    run the bots (no file: the embedded default — console, sqlite under data/, echo)\n"
    "  check    -c FILE      validate a config; prints every error as FILE:LINE:COL\n"
    "  route    -c FILE --from CHANNEL [--kind private|group|broadcast --to NAME]\n"
    "                        dry run: print the plan a message from CHANNEL gets (its routes, or the given\n"
    "                        envelope): every recipient, batch and mode; sends nothing\n"
    "  plugins  [--describe NAME]\n"
    "                        list every plugin found, or document one plugin's configuration\n"
    "\n"
    "Run `switchboard COMMAND --help` for a command's options. Exit status: 0 ok, 1 failure while running,\n"
    "2 usage or configuration error, 3 a plugin library was refused.\n";

// Loads the config named by the options (-c, or the embedded default) with its plugins. On failure prints why and
// sets @p status.
std::optional<host::LoadedConfig> load(const po::variables_map& options, const std::vector<std::string>& plugin_dirs,
                                       int& status) {
    host::ConfigSource source;
    if (options.count("config")) source.path = options["config"].as<std::string>();
    source.plugin_dirs = plugin_dirs;
    host::LoadedConfig loaded = host::load_config(source);
    if (loaded.config) return loaded;
    for (const std::string& line : loaded.problems()) std::cerr << line << "\n";
    if (!loaded.refusals.empty()) {
        status = kExitRefused;
    } else {
        if (!loaded.errors.empty()) {
            std::cerr << loaded.errors.size() << (loaded.errors.size() == 1 ? " error" : " errors") << " in "
                      << loaded.name << "\n";
        }
        status = kExitUsage;
    }
    return std::nullopt;
}

// The plugins `switchboard plugins` lists: every directory of the search path, without a config.
struct Plugins {
    plugin::Registry registry;
    std::vector<fs::path> loaded;
    std::vector<plugin::Refusal> refusals;

    void load(const std::vector<fs::path>& directories) {
        refusals = host::load_plugin_directories(directories, loaded, registry);
    }

    // Prints every refusal; true if there were none.
    bool report() const {
        for (const auto& refusal : refusals) std::cerr << refusal.to_string() << "\n";
        return refusals.empty();
    }
};

po::options_description common_options() {
    po::options_description options;
    options.add_options()("help,h", "show this help")(
        "plugin-path,p", po::value<std::vector<std::string>>()->composing(),
        "also search DIR for plugins (repeatable; searched before the config's plugin_path and the defaults)");
    return options;
}

// Parses @p args into @p vm; prints the options and returns true if --help was asked for (checked before required
// options are enforced, so `check --help` works without -c).
bool parse(const std::vector<std::string>& args, const po::options_description& options, po::variables_map& vm) {
    po::store(po::command_line_parser(args).options(options).run(), vm);
    if (vm.count("help")) {
        std::cout << options << "\n";
        return true;
    }
    po::notify(vm);
    return false;
}

std::vector<std::string> plugin_dirs(const po::variables_map& options) {
    return options.count("plugin-path") ? options["plugin-path"].as<std::vector<std::string>>()
                                        : std::vector<std::string>{};
}

int command_run(const std::vector<std::string>& args) {
    po::options_description options("switchboard run [-c FILE] [OPTIONS]");
    options.add(common_options());
    options.add_options()("config,c", po::value<std::string>(), "config file (default: the embedded default)")(
        "log-format", po::value<std::string>()->default_value("text"), "text or json")(
        "log-level", po::value<std::string>(), "trace, debug, info, warn or error (overrides the config)");
    po::variables_map vm;
    if (parse(args, options, vm)) return kExitOk;
    const std::string format = vm["log-format"].as<std::string>();
    if (format != "text" && format != "json") {
        std::cerr << "switchboard run: error: --log-format must be text or json, not '" << format << "'\n";
        return kExitUsage;
    }
    int status = kExitOk;
    auto loaded = load(vm, plugin_dirs(vm), status);
    if (!loaded) return status;
    auto& config = loaded->config;
    std::string level_name = vm.count("log-level") ? vm["log-level"].as<std::string>() : config->log_level;
    auto level = host::parse_log_level(level_name);
    if (!level) {
        std::cerr << "switchboard run: error: unknown log level '" << level_name << "'\n";
        return kExitUsage;
    }
    // Levels per component from the config (validated there); --log-level sets the others'.
    std::map<std::string, LogLevel> component_levels;
    for (const auto& [component, name] : config->log_levels) {
        if (auto parsed = host::parse_log_level(name)) component_levels[component] = *parsed;
    }
    host::SpdLogger logger("host", format == "json" ? host::LogFormat::json : host::LogFormat::text, *level,
                           std::move(component_levels));
    logger.info("switchboard " + std::string(kFrameworkVersion) + " starting with " + loaded->name +
                " (allocator: " + allocator::name() + ")");
    // The host keeps the registry: it destroys every object it made before the libraries go.
    host::HostOptions host_options;
    host_options.drain_timeout = std::chrono::milliseconds(config->stop_timeout_ms);
    // A reload reads the config again from where it came from.
    if (vm.count("config")) host_options.source.path = vm["config"].as<std::string>();
    host_options.source.plugin_dirs = plugin_dirs(vm);
    host::Host host(std::move(*config), std::move(loaded->registry), logger, host_options);
    return host.run();
}

int command_check(const std::vector<std::string>& args) {
    po::options_description options("switchboard check -c FILE [OPTIONS]");
    options.add(common_options());
    options.add_options()("config,c", po::value<std::string>()->required(), "config file to validate");
    po::variables_map vm;
    if (parse(args, options, vm)) return kExitOk;
    int status = kExitOk;
    auto loaded = load(vm, plugin_dirs(vm), status);
    if (!loaded) return status;
    const auto& config = loaded->config;
    std::cout << loaded->name << ": ok: " << config->connections.size() << " connection(s), "
              << config->channels.size() << " channel(s), " << config->users.size() << " user(s), "
              << config->groups.size() << " group(s), " << config->routes.size() << " route(s), "
              << config->bots.size() << " bot(s); store " << config->store.plugin << "\n";
    return kExitOk;
}

void print_plan(const std::string& heading, const std::variant<routing::PlannedDelivery, DeliveryReport>& planned,
                bool& failed) {
    std::cout << heading << "\n";
    if (const auto* report = std::get_if<DeliveryReport>(&planned)) {
        std::cout << "  " << to_string(report->status) << " (" << report->error_code << "): " << report->detail
                  << "\n";
        failed = true;
        return;
    }
    const DeliveryPlan& plan = std::get<routing::PlannedDelivery>(planned).plan;
    const std::size_t batch = plan.batch_size == 0 ? routing::EngineOptions{}.default_batch_size : plan.batch_size;
    std::cout << "  " << plan.recipients.size() << (plan.recipients.size() == 1 ? " recipient" : " recipients")
              << ", mode " << (plan.mode == DeliveryMode::atomic ? "atomic" : "best_effort") << ", on_failure "
              << (plan.on_failure == OnFailure::compensate ? "compensate" : "keep") << ", batch size " << batch
              << "\n";
    for (std::size_t i = 0; i < plan.recipients.size(); ++i) {
        if (i % batch == 0) std::cout << "  batch " << (i / batch + 1) << ":\n";
        std::cout << "    " << std::left << std::setw(24) << plan.recipients[i].name
                  << plan.recipients[i].address.to_string() << "\n";
    }
}

int command_route(const std::vector<std::string>& args) {
    po::options_description options("switchboard route -c FILE --from CHANNEL [--kind KIND --to NAME] [OPTIONS]");
    options.add(common_options());
    options.add_options()("config,c", po::value<std::string>()->required(), "config file")(
        "from", po::value<std::string>()->required(), "the channel (logical name) the message comes from")(
        "kind", po::value<std::string>(), "private, group or broadcast: plan this envelope instead of the routes")(
        "to", po::value<std::string>(), "the envelope's target: a user, a group or channel, or a broadcast scope");
    po::variables_map vm;
    if (parse(args, options, vm)) return kExitOk;
    int status = kExitOk;
    auto loaded = load(vm, plugin_dirs(vm), status);
    if (!loaded) return status;
    const auto& config = loaded->config;

    const std::string from = vm["from"].as<std::string>();
    routing::ConfigDirectory directory(*config);
    const auto origin = directory.channel(from);
    if (!origin) {
        std::cerr << "switchboard route: error: no channel named '" << from << "' in " << loaded->name << "\n";
        return kExitUsage;
    }
    // A dry run connects nothing: every connection counts as up, so the plan shows everyone it would reach.
    for (const auto& connection : config->connections) directory.set_connection(connection.name, true, {});

    host::SpdLogger logger("route", host::LogFormat::text, LogLevel::warn);
    boost::asio::io_context io;
    auto strategies = routing::create_strategies(*config, *loaded->registry, [&](const std::string& instance) {
        return PluginContext(instance, logger, io);
    });
    if (!strategies) {
        std::cerr << "switchboard route: error: " << strategies.error().message << "\n";
        return 1;
    }
    routing::Router router(*config, directory, std::move(*strategies), nullptr);

    std::vector<routing::RoutedEnvelope> envelopes;
    if (vm.count("kind")) {
        const auto kind = parse_message_kind(vm["kind"].as<std::string>());
        if (!kind) {
            std::cerr << "switchboard route: error: --kind must be private, group or broadcast\n";
            return kExitUsage;
        }
        if (*kind != MessageKind::broadcast && !vm.count("to")) {
            std::cerr << "switchboard route: error: --kind " << to_string(*kind) << " needs --to NAME\n";
            return kExitUsage;
        }
        Envelope envelope;
        envelope.kind = *kind;
        envelope.target = vm.count("to") ? vm["to"].as<std::string>() : std::string();
        envelope.origin = origin->address;
        envelopes.push_back({envelope, {}});
    } else {
        envelopes = router.routes_from(from, "(dry run)", origin->address);
        if (envelopes.empty()) {
            std::cout << "no route starts at channel '" << from << "'\n";
            return kExitOk;
        }
    }
    bool failed = false;
    for (const auto& routed : envelopes) {
        const std::string strategy =
            routed.strategy.empty() ? std::string(to_string(routed.envelope.kind)) : routed.strategy;
        print_plan(from + " -> " + std::string(to_string(routed.envelope.kind)) + " '" + routed.envelope.target +
                       "' (strategy " + strategy + ")",
                   router.plan(routed.envelope, routed.strategy), failed);
    }
    return failed ? 1 : kExitOk;
}

int command_plugins(const std::vector<std::string>& args) {
    po::options_description options("switchboard plugins [--describe NAME] [OPTIONS]");
    options.add(common_options());
    options.add_options()("describe,d", po::value<std::string>(), "document plugin NAME's configuration");
    po::variables_map vm;
    if (parse(args, options, vm)) return kExitOk;
    Plugins plugins;
    const std::vector<std::string> dirs = plugin_dirs(vm);
    std::vector<fs::path> search(dirs.begin(), dirs.end());
    for (auto& directory : plugin::Registry::default_directories()) search.push_back(std::move(directory));
    plugins.load(search);
    const bool clean = plugins.report();
    if (vm.count("describe")) {
        const std::string name = vm["describe"].as<std::string>();
        const plugin::LoadedPlugin* found = plugins.registry.find(name);
        if (found == nullptr) {
            std::cerr << "switchboard plugins: error: no plugin named '" << name << "'\n";
            return kExitUsage;
        }
        std::cout << config::describe_plugin(*found->descriptor);
        return clean ? kExitOk : kExitRefused;
    }
    std::cout << std::left << std::setw(10) << "KIND" << std::setw(18) << "NAME" << std::setw(10) << "VERSION"
              << std::setw(5) << "ABI" << "FILE\n";
    for (const auto& loaded : plugins.registry.plugins()) {
        const PluginDescriptor& d = *loaded.descriptor;
        std::cout << std::left << std::setw(10) << to_string(d.kind) << std::setw(18) << d.name << std::setw(10)
                  << d.version << std::setw(5) << d.abi_version << loaded.file.string() << "\n";
    }
    return clean ? kExitOk : kExitRefused;
}

}  // namespace

int main(int argc, char** argv) {
    allocator::configure();
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::cout << kUsage;
        return args.empty() ? kExitUsage : kExitOk;
    }
    if (args[0] == "--version" || args[0] == "-V") {
        std::cout << "switchboard " << kFrameworkVersion << " (plugin ABI " << kAbiVersion << "; " << kBuildStamp
                  << "; allocator: " << allocator::name() << ")\n";
        return kExitOk;
    }
    const std::string command = args[0];
    args.erase(args.begin());
    try {
        if (command == "run") return command_run(args);
        if (command == "check") return command_check(args);
        if (command == "plugins") return command_plugins(args);
        if (command == "route") return command_route(args);
        std::cerr << "switchboard: error: unknown command '" << command << "'\n\n" << kUsage;
    } catch (const po::error& e) {
        std::cerr << "switchboard " << command << ": error: " << e.what() << " (see switchboard " << command
                  << " --help)\n";
    }
    return kExitUsage;
}
