#include "fake_plugins.hpp"

#include <switchboard/version.hpp>

namespace switchboard::config::testing {

namespace {

PluginDescriptor make(PluginKind kind, const char* name, PluginSchemaFunction schema,
                      PluginCheckFunction check = nullptr) {
    return PluginDescriptor{kAbiVersion, kBuildStamp, kind,   name, "1.2.3", "A fake plugin for the config tests.",
                            schema,      check,       nullptr};
}

const ConfigSchema* no_schema() noexcept {
    static const ConfigSchema schema{};
    return &schema;
}

const ConfigSchema* sqlite_schema() noexcept {
    static const ConfigSchema schema{{
        {"path", ValueType::string, false, "data/switchboard.db", "Database file."},
        {"busy_timeout", ValueType::duration, false, "5s", "How long to wait for a locked database."},
    }};
    return &schema;
}

const ConfigSchema* console_schema() noexcept {
    static const ConfigSchema schema{{{"prompt", ValueType::string, false, "'> '", "Printed before input."}}};
    return &schema;
}

const ConfigSchema* irc_schema() noexcept {
    static const ConfigSchema schema{{
        {"server", ValueType::string, true, "", "HOST:PORT of the IRC server."},
        {"nick", ValueType::string, true, "", "The bot's nick."},
        {"port", ValueType::integer, false, "6667", "Port, when not in server."},
        {"tls", ValueType::boolean, false, "false", "Use TLS."},
        {"autojoin", ValueType::string_list, false, "", "Channels joined on connect."},
    }};
    return &schema;
}

std::vector<ConfigProblem> irc_check(const PluginConfig& config) noexcept {
    std::vector<ConfigProblem> problems;
    if (config.get_string("nick").find(' ') != std::string::npos) {
        problems.push_back({"nick", "a nick cannot contain spaces"});
    }
    if (config.get_int("port") > 65535) problems.push_back({"port", "port must be below 65536"});
    if (config.get_bool("tls") && config.get_int("port") == 6667) {
        problems.push_back({"", "tls on port 6667 is unusual; set port: 6697"});
    }
    return problems;
}

const ConfigSchema* discord_schema() noexcept {
    static const ConfigSchema schema{{
        {"token", ValueType::string, true, "", "Bot token."},
        {"intents", ValueType::integer, false, "", "Gateway intents."},
    }};
    return &schema;
}

const ConfigSchema* irc_replay_schema() noexcept {
    static const ConfigSchema schema{{{"window", ValueType::duration, false, "1h", "How far back to replay."}}};
    return &schema;
}

const ConfigSchema* backfill_schema() noexcept {
    static const ConfigSchema schema{{
        {"max_age", ValueType::duration, false, "14d", "Oldest message fetched."},
        {"page_size", ValueType::integer, false, "100", "Messages per request."},
    }};
    return &schema;
}

const ConfigSchema* echo_schema() noexcept {
    static const ConfigSchema schema{{
        {"prefix", ValueType::string, false, "'echo: '", "Put before the echoed text."},
        {"ratio", ValueType::number, false, "1.0", "Share of messages answered."},
        {"loud", ValueType::boolean, false, "false", "Answer in capitals."},
    }};
    return &schema;
}

const ConfigSchema* broken_schema() noexcept {
    static const ConfigSchema schema{{{"limit", ValueType::integer, false, "lots", "A bad default."}}};
    return &schema;
}

}  // namespace

const PluginDescriptor kSqlite = make(PluginKind::store, "sqlite", &sqlite_schema);
const PluginDescriptor kMemoryStore = make(PluginKind::store, "memory", &no_schema);
const PluginDescriptor kConsole = make(PluginKind::connector, "console", &console_schema);
const PluginDescriptor kIrc = make(PluginKind::connector, "irc", &irc_schema, &irc_check);
const PluginDescriptor kDiscord = make(PluginKind::connector, "discord", &discord_schema);
const PluginDescriptor kNone = make(PluginKind::recovery, "none", nullptr);
const PluginDescriptor kIrcReplay = make(PluginKind::recovery, "irc-replay", &irc_replay_schema);
const PluginDescriptor kDiscordBackfill = make(PluginKind::recovery, "discord-backfill", &backfill_schema);
const PluginDescriptor kGroupStrategy = make(PluginKind::strategy, "group", &no_schema);
const PluginDescriptor kPrivateStrategy = make(PluginKind::strategy, "private", &no_schema);
const PluginDescriptor kBroadcastStrategy = make(PluginKind::strategy, "broadcast", &no_schema);
const PluginDescriptor kEcho = make(PluginKind::bot, "echo", &echo_schema);
const PluginDescriptor kHelp = make(PluginKind::bot, "help", &no_schema);
const PluginDescriptor kBroken = make(PluginKind::bot, "broken", &broken_schema);

FakeSchemas::FakeSchemas() {
    for (const PluginDescriptor* descriptor :
         {&kSqlite, &kMemoryStore, &kConsole, &kIrc, &kDiscord, &kNone, &kIrcReplay, &kDiscordBackfill, &kGroupStrategy,
          &kPrivateStrategy, &kBroadcastStrategy, &kEcho, &kHelp, &kBroken}) {
        add(*descriptor);
    }
}

FakeSchemas::FakeSchemas(std::initializer_list<const PluginDescriptor*> only) {
    for (const PluginDescriptor* descriptor : only) add(*descriptor);
}

const PluginDescriptor* FakeSchemas::find(const std::string& name, PluginKind kind, std::string& why) const {
    auto it = plugins_.find(name);
    if (it == plugins_.end()) {
        why = "no plugin named " + name + " in the fake plugin set";
        return nullptr;
    }
    if (it->second->kind != kind) {
        why = "plugin " + name + " is a " + std::string(to_string(it->second->kind)) + ", but a " +
              std::string(to_string(kind)) + " is needed here";
        return nullptr;
    }
    return it->second;
}

const PluginDescriptor* CarelessSchemas::find(const std::string& name, PluginKind, std::string& why) const {
    static const FakeSchemas all;
    for (PluginKind kind :
         {PluginKind::connector, PluginKind::recovery, PluginKind::strategy, PluginKind::store, PluginKind::bot}) {
        std::string ignored;
        if (const PluginDescriptor* descriptor = all.find(name, kind, ignored)) return descriptor;
    }
    why = "unknown plugin " + name;
    return nullptr;
}

}  // namespace switchboard::config::testing
