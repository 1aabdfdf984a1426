#pragma once
// What the config loader's translation units share: positions and error collection over a yaml-cpp tree,
// `${VAR}` expansion, typed values and the validation of one plugin's settings block. Private to src/config/.

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.hpp"

namespace switchboard::config::detail {

/// One `key: value` pair of a mapping, with the nodes (and so the positions) of both.
struct Entry {
    std::string key;
    YAML::Node key_node;
    YAML::Node value;
};

/// The entry named @p key, or null.
[[nodiscard]] const Entry* find_entry(const std::vector<Entry>& entries, std::string_view key);

/// The result of expanding `${VAR}` in one scalar: the text, and a message per problem (unset variable, ...).
struct Expansion {
    std::string text;
    std::vector<std::string> problems;
};

/// `${NAME}` is not valid YAML inside a flow mapping (`{ token: ${TOKEN} }`, as DESIGN §6 writes it): `{` and `}`
/// end the plain scalar. Before parsing, every `${NAME}` of the raw text is rewritten to `$(NAME)` (or `$<NAME>`):
/// same length, so every line and column stays where it was, and harmless to YAML. The marker is one the raw text
/// does not already contain, so each `$(` of a parsed scalar stands for a `${`.
struct ProtectedText {
    std::string text;
    char open = 0;  // '(' or '<'; 0 when nothing was rewritten
};
[[nodiscard]] ProtectedText protect_variables(const std::string& raw);

/// Expands `${NAME}` (and its protected form, see protect_variables) from the environment; `$${` is a literal
/// `${`. Pure apart from reading the environment.
[[nodiscard]] Expansion expand_variables(std::string_view text, char open = 0);

/// @p text with the protected form of `${NAME}` turned back into `${NAME}`, for keys and messages.
[[nodiscard]] std::string restore_variables(std::string_view text, char open);

/// Collects the errors of one load and knows how to point at a node.
class Context {
public:
    /// @p open: the marker protect_variables used for the text being validated (0: none).
    explicit Context(std::string file, char open = 0) : file_(std::move(file)), open_(open) {}

    /// The raw text of scalar @p node as written in the file (variables not expanded).
    [[nodiscard]] std::string raw(const YAML::Node& node) const { return restore_variables(node.Scalar(), open_); }

    /// "a mapping", "a list", "nothing" or the scalar as written, quoted: for `got ...` in messages.
    [[nodiscard]] std::string describe(const YAML::Node& node) const;

    [[nodiscard]] const std::string& file() const noexcept { return file_; }

    /// The 1-based position of @p node (1:1 for a node without a mark, such as an empty document).
    [[nodiscard]] SourcePosition position(const YAML::Node& node) const;

    void error(SourcePosition where, std::string message);
    void error(const YAML::Node& where, std::string message) { error(position(where), std::move(message)); }

    /// Number of errors so far (to tell whether a block added any).
    [[nodiscard]] std::size_t error_count() const noexcept { return errors_.size(); }

    /// The text of scalar @p node with `${VAR}` expanded. A failed expansion is reported once per position and
    /// gives nullopt, so callers skip further checks of that value instead of piling errors on it.
    [[nodiscard]] std::optional<std::string> text(const YAML::Node& node);

    /// Expands every scalar value (not key) under @p node, so unset variables are reported even where nothing
    /// else reads the value (the settings of an unknown plugin, an unknown key).
    void expand_all(const YAML::Node& node);

    /// The entries of mapping @p mapping, in file order. Reports duplicate keys and keys that are not scalars.
    [[nodiscard]] std::vector<Entry> entries(const YAML::Node& mapping);

    /// Reports every entry whose key is not in @p known: `unknown key 'x' in WHERE (known keys: ...)`.
    void check_keys(const std::vector<Entry>& entries, const std::vector<std::string>& known, const std::string& where);

    [[nodiscard]] std::vector<ConfigError> take_errors() { return std::move(errors_); }

private:
    std::string file_;
    char open_ = 0;
    std::vector<ConfigError> errors_;
    std::set<std::pair<int, int>> failed_expansions_;
};

/// "a, b, c" (at most @p limit items, then ", ...").
[[nodiscard]] std::string join(const std::vector<std::string>& items, std::size_t limit = 12);

/// The closest of @p candidates to @p word if it is close enough to be a likely typo, else empty.
[[nodiscard]] std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

/// One plugin named at some place of the config, with the block of settings that belongs to it.
struct PluginBlock {
    PluginKind kind = PluginKind::bot;
    std::string name;                    // the plugin's name (written, or the default)
    SourcePosition name_position;        // of the name's value; the block's when the name is a default
    bool name_is_default = false;        // the config did not name the plugin: the default was taken
    SourcePosition block_position;       // of the mapping holding the settings (missing keys point here)
    std::vector<Entry> settings;         // the block's entries that are the plugin's settings
    std::vector<std::string> core_keys;  // the block's keys the core owns, listed among the known keys
    std::string where;                   // "connection 'irc'", "store", ...: for messages
};

/// Looks up the plugin @p block names; reports (at the name) and returns null if it is unknown or of another kind.
[[nodiscard]] const PluginDescriptor* find_plugin(Context& context, const SchemaSource& schemas,
                                                  const PluginBlock& block);

/// Finds the plugin through @p schemas, validates its settings against its schema (unknown keys, types, required
/// keys), applies defaults, runs its check function, and reports every problem through @p context.
[[nodiscard]] PluginUse use_plugin(Context& context, const SchemaSource& schemas, const PluginBlock& block);

/// Validates @p block's settings against @p schema (unknown keys, types, required keys) into @p settings, with
/// defaults applied. Returns false if a value had the wrong type. Used for plugins and for core blocks alike.
bool validate_settings(Context& context, const ConfigSchema& schema, const PluginBlock& block, PluginConfig& settings);

}  // namespace switchboard::config::detail
