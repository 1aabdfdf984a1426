// The plugin registry against real files built by tests/integration/loader/CMakeLists.txt: good plugins, broken
// libraries, and files that are no libraries at all.
#include "plugin/registry.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <switchboard/bot.hpp>
#include <switchboard/store.hpp>
#include <test_support.hpp>

#if defined(_WIN32)
#include <windows.h>
#else
#include <dlfcn.h>
#endif

namespace fs = std::filesystem;
using switchboard::Bot;
using switchboard::PluginConfig;
using switchboard::PluginContext;
using switchboard::PluginDescriptor;
using switchboard::PluginKind;
using switchboard::Store;
using switchboard::plugin::Refusal;
using switchboard::plugin::Registry;

namespace {

fs::path fixture(const std::string& name) { return fs::path(LOADER_FIXTURE_DIR) / (name + LOADER_FIXTURE_SUFFIX); }

// Whether the dynamic loader still has @p file mapped. Asks without loading it.
bool is_loaded(const fs::path& file) {
#if defined(_WIN32)
    return GetModuleHandleW(file.c_str()) != nullptr;
#else
    void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (handle == nullptr) return false;
    dlclose(handle);
    return true;
#endif
}

std::string read_file(const fs::path& file) {
    std::ifstream in(file);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
}

class NullLogger final : public switchboard::Logger {
public:
    void log(switchboard::LogLevel, std::string_view, const switchboard::LogFields&) noexcept override {}
};

// What a plugin's constructor needs from the host.
struct Host {
    NullLogger logger;
    boost::asio::io_context io;
    PluginContext context{"fixture", logger, io};
};

// The refusal's one-line message names the file and says it is an error.
void check_one_line(const Refusal& refusal, const fs::path& file) {
    const std::string line = refusal.to_string();
    INFO(line);
    CHECK(refusal.file == file);
    CHECK(line.rfind(file.string() + ": error: ", 0) == 0);
    CHECK(line.find('\n') == std::string::npos);
    CHECK(line.size() > file.string().size() + 20);  // a reason, not just the prefix
}

Refusal refusal_of(const fs::path& file) {
    Registry registry;
    auto refusal = registry.load_file(file);
    REQUIRE(refusal.has_value());
    CHECK(registry.plugins().empty());
    return *refusal;
}

const switchboard::ConfigSchema* empty_schema() noexcept {
    static const switchboard::ConfigSchema schema{};
    return &schema;
}

class InjectedBot final : public Bot {
public:
    [[nodiscard]] std::vector<switchboard::Command> commands() const override { return {{"!injected", "", ""}}; }
    void on_message(const switchboard::Message&, switchboard::BotContext&) override {}
};

switchboard::PluginObject* create_injected(const PluginContext&, const PluginConfig&, switchboard::Error&) noexcept {
    return static_cast<Bot*>(new InjectedBot);
}

PluginDescriptor injected_descriptor(const char* name) {
    return PluginDescriptor{switchboard::kAbiVersion,
                            switchboard::kBuildStamp,
                            PluginKind::bot,
                            name,
                            "0.0.1",
                            "compiled into the test",
                            &empty_schema,
                            nullptr,
                            &create_injected};
}

// Descriptors live as long as any registry holding them: static, like a plugin library's.
const PluginDescriptor kInjected = injected_descriptor("injected-bot");
const PluginDescriptor kInjectedFixtureName = injected_descriptor("fixture-bot");

}  // namespace

TEST_CASE("A good plugin library loads and its descriptor is read", "[loader]") {
    Registry registry;
    const fs::path file = fixture("good_bot");
    REQUIRE_FALSE(registry.load_file(file).has_value());
    REQUIRE(registry.plugins().size() == 1);

    const auto& plugin = registry.plugins().front();
    CHECK(plugin.file == file);
    REQUIRE(plugin.library != nullptr);
    CHECK(std::string(plugin.descriptor->name) == "fixture-bot");
    CHECK(plugin.descriptor->kind == PluginKind::bot);
    CHECK(std::string(plugin.descriptor->version) == "1.0.0");
    CHECK(plugin.descriptor->schema()->keys.size() == 2);
    CHECK(registry.find("fixture-bot") == &plugin);
    CHECK(is_loaded(file));
}

TEST_CASE("A file that is not a shared library is refused as not_a_library", "[loader]") {
    SECTION("a text file with the library suffix") {
        const fs::path file = fixture("garbage");
        const Refusal refusal = refusal_of(file);
        CHECK(refusal.code == "not_a_library");
        check_one_line(refusal, file);
    }
#if defined(__linux__)
    SECTION("the reason carries the dynamic loader's own words") {
        CHECK_THAT(refusal_of(fixture("garbage")).reason, Catch::Contains("invalid ELF header"));
    }
#endif
    SECTION("an empty file with the library suffix") {
        const fs::path file = fixture("empty");
        const Refusal refusal = refusal_of(file);
        CHECK(refusal.code == "not_a_library");
        check_one_line(refusal, file);
    }
    SECTION("a file that does not exist") {
        const fs::path file = fixture("no_such_plugin");
        const Refusal refusal = refusal_of(file);
        CHECK(refusal.code == "not_a_library");
        check_one_line(refusal, file);
    }
}

#if defined(LOADER_HAS_UNRESOLVED_FIXTURE)
TEST_CASE("A library that needs a symbol nobody defines is refused at load, not when it is first called", "[loader]") {
    const fs::path file = fixture("unresolved_symbol");
    const Refusal refusal = refusal_of(file);
    CHECK(refusal.code == "not_a_library");
    CHECK_THAT(refusal.reason, Catch::Contains("switchboard_fixture_missing_function"));
    check_one_line(refusal, file);
}
#endif

TEST_CASE("A library without a descriptor is refused as no_descriptor", "[loader]") {
    SECTION("no switchboard_plugin symbol at all") {
        const fs::path file = fixture("no_descriptor");
        const Refusal refusal = refusal_of(file);
        CHECK(refusal.code == "no_descriptor");
        CHECK_THAT(refusal.reason, Catch::Contains("switchboard_plugin") && Catch::Contains("SWITCHBOARD_PLUGIN"));
        check_one_line(refusal, file);
    }
    SECTION("a switchboard_plugin function that returns null") {
        const fs::path file = fixture("null_descriptor");
        const Refusal refusal = refusal_of(file);
        CHECK(refusal.code == "no_descriptor");
        check_one_line(refusal, file);
    }
}

TEST_CASE("A library built against another ABI version is refused before anything else is read", "[loader]") {
    // The fixture's other fields are null or invalid: reading them would crash or give another code.
    const fs::path file = fixture("abi_mismatch");
    const Refusal refusal = refusal_of(file);
    CHECK(refusal.code == "abi_mismatch");
    CHECK_THAT(refusal.reason, Catch::Contains("ABI version " + std::to_string(switchboard::kAbiVersion + 1)) &&
                                   Catch::Contains("ABI version " + std::to_string(switchboard::kAbiVersion)) &&
                                   Catch::Contains("rebuild"));
    check_one_line(refusal, file);
}

TEST_CASE("A library with another build stamp is refused as build_stamp_mismatch", "[loader]") {
    const fs::path file = fixture("stamp_mismatch");
    const Refusal refusal = refusal_of(file);
    CHECK(refusal.code == "build_stamp_mismatch");
    CHECK_THAT(refusal.reason, Catch::Contains("gcc-0.0;") && Catch::Contains(switchboard::kBuildStamp));
    check_one_line(refusal, file);
}

TEST_CASE("A descriptor with the right ABI but no name or factory is refused as bad_descriptor", "[loader]") {
    const fs::path file = fixture("bad_descriptor");
    const Refusal refusal = refusal_of(file);
    CHECK(refusal.code == "bad_descriptor");
    check_one_line(refusal, file);
}

TEST_CASE("A second plugin with a name already taken is refused, naming the file that has it", "[loader]") {
    Registry registry;
    REQUIRE_FALSE(registry.load_file(fixture("good_bot")).has_value());
    const fs::path twin = fixture("good_bot_twin");
    const auto refusal = registry.load_file(twin);
    REQUIRE(refusal.has_value());
    CHECK(refusal->code == "duplicate_name");
    CHECK_THAT(refusal->reason, Catch::Contains("'fixture-bot'") && Catch::Contains(fixture("good_bot").string()));
    check_one_line(*refusal, twin);
    REQUIRE(registry.plugins().size() == 1);
    CHECK(registry.plugins().front().file == fixture("good_bot"));
}

TEST_CASE("Loading the same file twice is refused as a duplicate that says so", "[loader]") {
    Registry registry;
    const fs::path file = fixture("good_bot");
    REQUIRE_FALSE(registry.load_file(file).has_value());
    const auto refusal = registry.load_file(file);
    REQUIRE(refusal.has_value());
    CHECK(refusal->code == "duplicate_name");
    CHECK_THAT(refusal->reason, Catch::Contains("this very file"));
    CHECK(registry.plugins().size() == 1);
    CHECK(is_loaded(file));
}

TEST_CASE("A refused library is unloaded again", "[loader]") {
    // These were all opened (and their switchboard_plugin called) before being refused.
    for (const char* name : {"abi_mismatch", "stamp_mismatch", "bad_descriptor", "null_descriptor", "no_descriptor"}) {
        INFO(name);
        Registry registry;
        REQUIRE(registry.load_file(fixture(name)).has_value());
        CHECK_FALSE(is_loaded(fixture(name)));
    }
    Registry registry;
    REQUIRE_FALSE(registry.load_file(fixture("good_bot")).has_value());
    REQUIRE(registry.load_file(fixture("good_bot_twin")).has_value());
    CHECK(is_loaded(fixture("good_bot")));
    CHECK_FALSE(is_loaded(fixture("good_bot_twin")));
}

TEST_CASE("Loading a directory keeps the good plugins and reports every bad file", "[loader]") {
    Registry registry;
    const std::vector<Refusal> refusals = registry.load_directory(LOADER_FIXTURE_DIR);

    std::map<std::string, std::string> codes;  // file name -> code
    for (const Refusal& refusal : refusals) {
        codes[refusal.file.filename().string()] = refusal.code;
        check_one_line(refusal, refusal.file);
    }
    const std::string suffix = LOADER_FIXTURE_SUFFIX;
    std::map<std::string, std::string> expected{
        {"abi_mismatch" + suffix, "abi_mismatch"},
        {"bad_descriptor" + suffix, "bad_descriptor"},
        {"empty" + suffix, "not_a_library"},
        {"garbage" + suffix, "not_a_library"},
        {"good_bot_twin" + suffix, "duplicate_name"},  // good_bot sorts first, so it keeps the name
        {"no_descriptor" + suffix, "no_descriptor"},
        {"null_descriptor" + suffix, "no_descriptor"},
        {"stamp_mismatch" + suffix, "build_stamp_mismatch"},
    };
#if defined(LOADER_HAS_UNRESOLVED_FIXTURE)
    expected.emplace("unresolved_symbol" + suffix, "not_a_library");
#endif
    CHECK(codes == expected);
    CHECK(refusals.size() == expected.size());

    REQUIRE(registry.plugins().size() == 2);
    CHECK(registry.plugins()[0].file == fixture("good_bot"));
    CHECK(registry.plugins()[1].file == fixture("store_plugin"));
    CHECK(registry.find("fixture-bot") != nullptr);
    CHECK(registry.find("fixture-store") != nullptr);
}

TEST_CASE("A missing plugin directory is refused as no_directory", "[loader]") {
    Registry registry;
    const fs::path missing = fs::path(LOADER_FIXTURE_DIR) / "does-not-exist";
    const auto refusals = registry.load_directory(missing);
    REQUIRE(refusals.size() == 1);
    CHECK(refusals.front().code == "no_directory");
    check_one_line(refusals.front(), missing);
    CHECK(registry.plugins().empty());
}

TEST_CASE("find() explains an unknown plugin and a plugin of the wrong kind", "[loader]") {
    Registry registry;
    REQUIRE_FALSE(registry.load_file(fixture("store_plugin")).has_value());
    REQUIRE_FALSE(registry.load_file(fixture("good_bot")).has_value());
    std::string why;

    SECTION("the right name and kind") {
        const PluginDescriptor* descriptor = registry.find("fixture-store", PluginKind::store, why);
        REQUIRE(descriptor != nullptr);
        CHECK(std::string(descriptor->name) == "fixture-store");
    }
    SECTION("an unknown name lists what was found") {
        CHECK(registry.find("redis", PluginKind::store, why) == nullptr);
        CHECK(why == "no plugin named 'redis' (found: fixture-bot, fixture-store)");
    }
    SECTION("a store where a bot is needed") {
        CHECK(registry.find("fixture-store", PluginKind::bot, why) == nullptr);
        CHECK(why == "plugin 'fixture-store' is a store plugin (" + fixture("store_plugin").string() +
                         "), but a bot is needed here");
    }
    SECTION("nothing loaded at all") {
        const Registry empty;
        CHECK(empty.find("echo", PluginKind::bot, why) == nullptr);
        CHECK(why == "no plugin named 'echo' (found: none)");
    }
}

TEST_CASE("An object created from a plugin works through its SDK interface", "[loader]") {
    Host host;
    Registry registry;
    REQUIRE_FALSE(registry.load_file(fixture("good_bot")).has_value());
    REQUIRE_FALSE(registry.load_file(fixture("store_plugin")).has_value());

    auto bot = registry.create<Bot>("fixture-bot", host.context, PluginConfig{});
    REQUIRE(bot.has_value());
    const auto commands = (*bot)->commands();
    REQUIRE(commands.size() == 1);
    CHECK(commands.front().name == "!fixture");
    CHECK(commands.front().help == "answers from the good fixture");

    auto store = registry.create<Store>("fixture-store", host.context, PluginConfig{});
    REQUIRE(store.has_value());
    const auto processed = (*store)->is_processed(switchboard::MessageKey{});
    REQUIRE(processed.has_value());
    CHECK_FALSE(*processed);
}

TEST_CASE("Creating an object of the wrong kind, of an unknown plugin, or that the factory refuses is an error",
          "[loader]") {
    Host host;
    Registry registry;
    REQUIRE_FALSE(registry.load_file(fixture("good_bot")).has_value());
    REQUIRE_FALSE(registry.load_file(fixture("store_plugin")).has_value());

    SECTION("a store plugin used where a bot is needed") {
        auto bot = registry.create<Bot>("fixture-store", host.context, PluginConfig{});
        REQUIRE_FALSE(bot.has_value());
        CHECK(bot.error().code == "plugin_wrong_kind");
        CHECK_THAT(bot.error().message, Catch::Contains("is a store plugin") && Catch::Contains("a bot is needed"));
    }
    SECTION("an unknown plugin") {
        auto bot = registry.create<Bot>("echo", host.context, PluginConfig{});
        REQUIRE_FALSE(bot.has_value());
        CHECK(bot.error().code == "plugin_not_found");
    }
    SECTION("a constructor that throws") {
        PluginConfig config;
        config.set("fail", true);
        auto bot = registry.create<Bot>("fixture-bot", host.context, config);
        REQUIRE_FALSE(bot.has_value());
        CHECK(bot.error().code == "fixture_refused");
        CHECK(bot.error().message == "plugin 'fixture-bot': asked to fail by its config");
    }
}

TEST_CASE("An object keeps its library loaded after the registry is gone, and unloads it when destroyed last",
          "[loader]") {
    switchboard::testing_support::TempDir temp;
    const fs::path marker = temp / "destroyed";
    const fs::path file = fixture("good_bot");
    Host host;
    PluginConfig config;
    config.set("marker", marker.string());

    std::shared_ptr<Bot> bot;
    {
        Registry registry;
        REQUIRE_FALSE(registry.load_file(file).has_value());
        auto created = registry.create<Bot>("fixture-bot", host.context, config);
        REQUIRE(created.has_value());
        bot = *created;
    }
    REQUIRE(is_loaded(file));
    // The vtable and the code behind it are in the library: this call would crash if it were unloaded.
    CHECK(bot->commands().front().name == "!fixture");
    CHECK_FALSE(fs::exists(marker));

    bot.reset();
    CHECK(read_file(marker) == "destroyed\n");  // the destructor ran, from a library still loaded
    CHECK_FALSE(is_loaded(file));
}

TEST_CASE("The registry keeps a library loaded while it lives, even after its objects are gone", "[loader]") {
    switchboard::testing_support::TempDir temp;
    const fs::path marker = temp / "destroyed";
    const fs::path file = fixture("good_bot");
    Host host;
    PluginConfig config;
    config.set("marker", marker.string());
    {
        Registry registry;
        REQUIRE_FALSE(registry.load_file(file).has_value());
        auto first = registry.create<Bot>("fixture-bot", host.context, config);
        auto second = registry.create<Bot>("fixture-bot", host.context, PluginConfig{});
        REQUIRE((first.has_value() && second.has_value()));
        first->reset();
        CHECK(read_file(marker) == "destroyed\n");
        CHECK(is_loaded(file));
        CHECK((*second)->commands().size() == 1);
        second->reset();
        CHECK(is_loaded(file));
    }
    CHECK_FALSE(is_loaded(file));
}

TEST_CASE("The test hook registers a descriptor compiled into the test, with the same checks", "[loader]") {
    Host host;
    Registry registry;
    REQUIRE_FALSE(registry.add(kInjected).has_value());
    REQUIRE(registry.plugins().size() == 1);
    CHECK(registry.plugins().front().file.empty());
    CHECK(registry.plugins().front().library == nullptr);

    auto bot = registry.create<Bot>("injected-bot", host.context, PluginConfig{});
    REQUIRE(bot.has_value());
    CHECK((*bot)->commands().front().name == "!injected");

    SECTION("a file with a name an injected plugin has") {
        REQUIRE_FALSE(registry.add(kInjectedFixtureName).has_value());
        const auto refusal = registry.load_file(fixture("good_bot"));
        REQUIRE(refusal.has_value());
        CHECK(refusal->code == "duplicate_name");
        CHECK_THAT(refusal->reason, Catch::Contains("<built-in>"));
    }
    SECTION("an injected duplicate") {
        const auto refusal = registry.add(kInjected);
        REQUIRE(refusal.has_value());
        CHECK(refusal->code == "duplicate_name");
        CHECK(refusal->to_string().rfind("<built-in>: error: ", 0) == 0);
    }
    SECTION("an injected descriptor from another ABI") {
        PluginDescriptor stale = injected_descriptor("stale-bot");
        stale.abi_version = switchboard::kAbiVersion + 1;
        const auto refusal = registry.add(stale);
        REQUIRE(refusal.has_value());
        CHECK(refusal->code == "abi_mismatch");
    }
    SECTION("an injected descriptor with another build stamp") {
        PluginDescriptor foreign = injected_descriptor("foreign-bot");
        foreign.build_stamp = nullptr;
        const auto refusal = registry.add(foreign);
        REQUIRE(refusal.has_value());
        CHECK(refusal->code == "build_stamp_mismatch");
        CHECK_THAT(refusal->reason, Catch::Contains("(none)"));
    }
}

#if !defined(_WIN32)
TEST_CASE("Default plugin directories come from SWITCHBOARD_PLUGIN_PATH first, existing ones only", "[loader]") {
    switchboard::testing_support::TempDir temp;
    const std::string missing = (temp / "missing").string();
    const std::string value = std::string(LOADER_FIXTURE_DIR) + ":" + missing + "::" + temp.path().string();
    REQUIRE(setenv("SWITCHBOARD_PLUGIN_PATH", value.c_str(), 1) == 0);
    const auto directories = Registry::default_directories();
    unsetenv("SWITCHBOARD_PLUGIN_PATH");

    REQUIRE(directories.size() >= 2);
    CHECK(directories[0] == fs::weakly_canonical(LOADER_FIXTURE_DIR));
    CHECK(directories[1] == fs::weakly_canonical(temp.path()));
    for (const fs::path& directory : directories) CHECK(fs::is_directory(directory));
}
#endif

TEST_CASE("A successor registry takes over an unchanged library and loads a changed file beside the old one",
          "[loader]") {
    switchboard::testing_support::TempDir temp;
    const fs::path file = temp / (std::string("bot") + LOADER_FIXTURE_SUFFIX);
    const fs::path copies = temp / "copies";
    fs::copy_file(fixture("good_bot"), file);
    Host host;
    Registry running;
    REQUIRE_FALSE(running.load_file(file).has_value());
    auto old_bot = running.create<Bot>("fixture-bot", host.context, PluginConfig{});
    REQUIRE(old_bot.has_value());

    SECTION("an unchanged file: the same library, nothing copied") {
        Registry next;
        next.succeed(running, copies);
        REQUIRE_FALSE(next.load_file(file).has_value());
        REQUIRE(next.plugins().size() == 1);
        CHECK(next.plugins().front().library == running.plugins().front().library);
        CHECK(next.plugins().front().descriptor == running.plugins().front().descriptor);
        CHECK_FALSE(fs::exists(copies));
    }
    SECTION("a changed file: a second library, loaded from a copy that is gone once loaded") {
        // Replaced as a deployment does: written beside, renamed over.
        fs::copy_file(fixture("good_bot_twin"), temp / "next");
        fs::rename(temp / "next", file);
        Registry next;
        next.succeed(running, copies);
        REQUIRE_FALSE(next.load_file(file).has_value());
        REQUIRE(next.plugins().size() == 1);
        const auto& loaded = next.plugins().front();
        CHECK(loaded.file == file);
        CHECK(loaded.library != running.plugins().front().library);
        CHECK(loaded.descriptor != running.plugins().front().descriptor);
        CHECK(fs::is_empty(copies));
        auto new_bot = next.create<Bot>("fixture-bot", host.context, PluginConfig{});
        REQUIRE(new_bot.has_value());
        CHECK((*new_bot)->commands().front().help == "answers from the twin fixture");
        CHECK((*old_bot)->commands().front().help == "answers from the good fixture");  // both run side by side
    }
    SECTION("a changed file that is no library is refused, and the running one is untouched") {
        std::ofstream(temp / "next") << "not a library, but long enough for the loader to read its header and refuse";
        fs::rename(temp / "next", file);
        Registry next;
        next.succeed(running, copies);
        const auto refusal = next.load_file(file);
        REQUIRE(refusal.has_value());
        CHECK(refusal->code == "not_a_library");
        CHECK(refusal->file == file);
        CHECK((*old_bot)->commands().front().name == "!fixture");
    }
}
