#pragma once
// Fake plugin descriptors and a SchemaSource over them, for the config tests: no library is loaded.

#include <initializer_list>
#include <map>
#include <string>

#include "config/config.hpp"

namespace switchboard::config::testing {

/// Knows the fake plugins below by name, and refuses a wrong kind the way the registry does.
class FakeSchemas final : public SchemaSource {
public:
    /// Knows every fake below.
    FakeSchemas();
    /// Knows only @p only.
    FakeSchemas(std::initializer_list<const PluginDescriptor*> only);
    [[nodiscard]] const PluginDescriptor* find(const std::string& name, PluginKind kind,
                                               std::string& why) const override;
    /// Adds (or replaces) a descriptor.
    void add(const PluginDescriptor& descriptor) { plugins_[descriptor.name] = &descriptor; }

private:
    std::map<std::string, const PluginDescriptor*> plugins_;
};

/// Returns whatever has the name, whatever the kind: to test the loader's own kind check.
class CarelessSchemas final : public SchemaSource {
public:
    [[nodiscard]] const PluginDescriptor* find(const std::string& name, PluginKind kind,
                                               std::string& why) const override;
};

// Fakes, each with a small schema (see fake_plugins.cpp).
extern const PluginDescriptor kSqlite;             // store: path (default data/switchboard.db), busy_timeout (5s)
extern const PluginDescriptor kMemoryStore;        // store "memory": no settings
extern const PluginDescriptor kConsole;            // connector: prompt (default "> ")
extern const PluginDescriptor kIrc;                // connector: server, nick (required), port (6667), tls, autojoin;
                                                   // check: nick without spaces, port below 65536
extern const PluginDescriptor kDiscord;            // connector: token (required), intents (integer)
extern const PluginDescriptor kNone;               // recovery "none"
extern const PluginDescriptor kIrcReplay;          // recovery: window (duration, default 1h)
extern const PluginDescriptor kDiscordBackfill;    // recovery: max_age (14d), page_size (100)
extern const PluginDescriptor kGroupStrategy;      // strategy "group"
extern const PluginDescriptor kPrivateStrategy;    // strategy "private"
extern const PluginDescriptor kBroadcastStrategy;  // strategy "broadcast"
extern const PluginDescriptor kEcho;               // bot: prefix (default ""), ratio (number, 1.0), loud (false)
extern const PluginDescriptor kHelp;               // bot: no settings
extern const PluginDescriptor kBroken;             // bot "broken": declares a default that is not an integer

}  // namespace switchboard::config::testing
