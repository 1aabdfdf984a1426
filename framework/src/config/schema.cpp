// Plugin schemas: typed values, validation of one plugin's settings block, durations, and the generated
// documentation of `switchboard plugins --describe NAME`.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>

#include "config/validation.hpp"

namespace switchboard::config {

namespace {

std::string trim(const std::string& text) {
    const auto first = text.find_first_not_of(" \t");
    if (first == std::string::npos) return {};
    const auto last = text.find_last_not_of(" \t");
    return text.substr(first, last - first + 1);
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::optional<std::int64_t> parse_integer(const std::string& text) {
    std::string_view view = text;
    if (!view.empty() && view.front() == '+') view.remove_prefix(1);
    if (view.empty() || view.front() == '+') return std::nullopt;
    std::int64_t value = 0;
    const auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), value);
    if (ec != std::errc{} || end != view.data() + view.size()) return std::nullopt;
    return value;
}

std::optional<double> parse_number(const std::string& text) {
    std::string_view view = text;
    if (!view.empty() && view.front() == '+') view.remove_prefix(1);
    if (view.empty() || view.front() == '+') return std::nullopt;
    double value = 0;
    const auto [end, ec] = std::from_chars(view.data(), view.data() + view.size(), value);
    if (ec != std::errc{} || end != view.data() + view.size() || !std::isfinite(value)) return std::nullopt;
    return value;
}

std::optional<bool> parse_boolean(const std::string& text) {
    std::string lower = text;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c); });
    if (lower == "true" || lower == "yes" || lower == "on") return true;
    if (lower == "false" || lower == "no" || lower == "off") return false;
    return std::nullopt;
}

/// What a value of @p type looks like, for "must be ..." messages.
std::string expected(ValueType type) {
    switch (type) {
        case ValueType::string:
            return "a single value";
        case ValueType::integer:
            return "an integer";
        case ValueType::number:
            return "a number";
        case ValueType::boolean:
            return "true or false";
        case ValueType::duration:
            return "a duration such as 500ms, 30s, 5m, 2h or 14d";
        case ValueType::string_list:
            return "a list of strings such as [a, b]";
    }
    return "a value";
}

/// A placeholder for the documentation's example.
std::string placeholder(ValueType type) {
    switch (type) {
        case ValueType::string:
            return "<string>";
        case ValueType::integer:
            return "<integer>";
        case ValueType::number:
            return "<number>";
        case ValueType::boolean:
            return "<true|false>";
        case ValueType::duration:
            return "<duration>";
        case ValueType::string_list:
            return "[<string>, ...]";
    }
    return "<value>";
}

/// The value of a scalar of @p type written as @p text; nullopt if it is not one.
std::optional<ConfigValue> scalar_value(ValueType type, const std::string& text) {
    switch (type) {
        case ValueType::string:
            return ConfigValue{text};
        case ValueType::integer:
            if (auto value = parse_integer(trim(text))) return ConfigValue{*value};
            return std::nullopt;
        case ValueType::number:
            if (auto value = parse_number(trim(text))) return ConfigValue{*value};
            return std::nullopt;
        case ValueType::boolean:
            if (auto value = parse_boolean(trim(text))) return ConfigValue{*value};
            return std::nullopt;
        case ValueType::duration:
            if (auto value = parse_duration_ms(text)) return ConfigValue{*value};
            return std::nullopt;
        case ValueType::string_list:
            return std::nullopt;
    }
    return std::nullopt;
}

/// Reads the setting @p key from @p entry; reports what is wrong and returns nullopt if it cannot.
std::optional<ConfigValue> read_setting(detail::Context& context, const detail::Entry& entry, const ConfigKey& key) {
    const YAML::Node& value = entry.value;
    if (!value.IsDefined() || value.IsNull()) {
        context.error(entry.key_node,
                      "'" + key.name + "' has no value; write " + expected(key.type) + ", or remove the key");
        return std::nullopt;
    }
    if (key.type == ValueType::string_list) {
        if (!value.IsSequence()) {
            context.error(value,
                          "'" + key.name + "' must be " + expected(key.type) + ", got " + context.describe(value));
            return std::nullopt;
        }
        std::vector<std::string> items;
        bool ok = true;
        for (const auto& item : value) {
            if (!item.IsScalar()) {
                context.error(item, "the items of '" + key.name + "' must be strings, got " + context.describe(item));
                ok = false;
            } else if (auto text = context.text(item)) {
                items.push_back(std::move(*text));
            } else {
                ok = false;
            }
        }
        if (!ok) return std::nullopt;
        return ConfigValue{std::move(items)};
    }
    if (!value.IsScalar()) {
        context.error(value, "'" + key.name + "' must be " + expected(key.type) + ", got " + context.describe(value));
        return std::nullopt;
    }
    const std::optional<std::string> text = context.text(value);
    if (!text) return std::nullopt;  // its ${VAR} problem is already reported
    auto result = scalar_value(key.type, *text);
    if (!result) context.error(value, "'" + key.name + "' must be " + expected(key.type) + ", got '" + *text + "'");
    return result;
}

/// The default of @p key (YAML text, typed by the same rules as the file's values), or a problem.
std::optional<ConfigValue> default_value(const ConfigKey& key, std::string& problem) {
    YAML::Node node;
    try {
        node = YAML::Load(key.default_value);
    } catch (const YAML::Exception& e) {
        // A string default such as "#general" is not valid YAML as written; take it literally.
        if (key.type == ValueType::string) return ConfigValue{key.default_value};
        problem = "'" + key.default_value + "' is not valid YAML (" + e.msg + ")";
        return std::nullopt;
    }
    if (key.type == ValueType::string_list) {
        if (node.IsSequence()) {
            std::vector<std::string> items;
            for (const auto& item : node) {
                if (!item.IsScalar()) {
                    problem = "'" + key.default_value + "' is not " + expected(key.type);
                    return std::nullopt;
                }
                items.push_back(item.Scalar());
            }
            return ConfigValue{std::move(items)};
        }
        problem = "'" + key.default_value + "' is not " + expected(key.type);
        return std::nullopt;
    }
    if (!node.IsScalar()) {
        if (key.type == ValueType::string) return ConfigValue{key.default_value};
        problem = "'" + key.default_value + "' is not " + expected(key.type);
        return std::nullopt;
    }
    auto value = scalar_value(key.type, node.Scalar());
    if (!value) problem = "'" + node.Scalar() + "' is not " + expected(key.type);
    return value;
}

std::string kind_name(PluginKind kind) { return std::string(to_string(kind)); }

}  // namespace

std::optional<std::int64_t> parse_duration_ms(const std::string& input) {
    const std::string text = trim(input);
    if (text.empty()) return std::nullopt;
    constexpr std::int64_t kMax = std::numeric_limits<std::int64_t>::max();
    if (std::all_of(text.begin(), text.end(), is_digit)) return parse_integer(text);

    // One or more NUMBER UNIT parts: "90s", "1h30m", "2d12h".
    std::int64_t total = 0;
    std::size_t i = 0;
    while (i < text.size()) {
        const std::size_t digits_start = i;
        while (i < text.size() && is_digit(text[i])) ++i;
        if (i == digits_start) return std::nullopt;
        const auto amount = parse_integer(text.substr(digits_start, i - digits_start));
        if (!amount) return std::nullopt;
        const std::size_t unit_start = i;
        while (i < text.size() && !is_digit(text[i])) ++i;
        const std::string unit = text.substr(unit_start, i - unit_start);
        std::int64_t factor = 0;
        if (unit == "ms")
            factor = 1;
        else if (unit == "s")
            factor = 1000;
        else if (unit == "m")
            factor = 60 * 1000;
        else if (unit == "h")
            factor = 60 * 60 * 1000;
        else if (unit == "d")
            factor = 24 * 60 * 60 * 1000;
        else
            return std::nullopt;
        if (*amount > kMax / factor) return std::nullopt;
        const std::int64_t part = *amount * factor;
        if (total > kMax - part) return std::nullopt;
        total += part;
    }
    return total;
}

namespace detail {

const PluginDescriptor* find_plugin(Context& context, const SchemaSource& schemas, const PluginBlock& block) {
    const std::string kind = kind_name(block.kind);
    std::string why;
    const PluginDescriptor* descriptor = nullptr;
    try {
        descriptor = schemas.find(block.name, block.kind, why);
    } catch (const std::exception& e) {
        why = e.what();
    }
    if (descriptor == nullptr) {
        std::string message = why.empty() ? "no " + kind + " plugin named '" + block.name + "'" : why;
        if (block.name_is_default) {
            message = block.where + " uses the default " + kind + " plugin '" + block.name +
                      "', which is not available: " + message;
        }
        context.error(block.name_position, std::move(message));
        return nullptr;
    }
    if (descriptor->kind != block.kind) {
        context.error(block.name_position, "plugin '" + block.name + "' is a " + kind_name(descriptor->kind) +
                                               " plugin, but a " + kind + " plugin is needed here");
        return nullptr;
    }
    return descriptor;
}

PluginUse use_plugin(Context& context, const SchemaSource& schemas, const PluginBlock& block) {
    PluginUse use{block.name, PluginConfig{}, block.name_position};
    const PluginDescriptor* descriptor = find_plugin(context, schemas, block);
    if (descriptor == nullptr) return use;

    static const ConfigSchema kNoSettings{};
    const ConfigSchema* schema = descriptor->schema != nullptr ? descriptor->schema() : nullptr;
    if (schema == nullptr) schema = &kNoSettings;

    const std::size_t errors_before = context.error_count();
    const bool ok = validate_settings(context, *schema, block, use.settings);

    // The plugin's own check sees only settings that passed the schema.
    if (ok && context.error_count() == errors_before && descriptor->check != nullptr) {
        for (const ConfigProblem& problem : descriptor->check(use.settings)) {
            const Entry* entry = problem.key.empty() ? nullptr : find_entry(block.settings, problem.key);
            context.error(entry != nullptr ? context.position(entry->key_node) : block.block_position,
                          block.where + ": " + problem.message);
        }
    }
    return use;
}

bool validate_settings(Context& context, const ConfigSchema& schema, const PluginBlock& block,
                       PluginConfig& settings) {
    bool ok = true;
    std::vector<std::string> known = block.core_keys;
    for (const ConfigKey& key : schema.keys) known.push_back(key.name);
    context.check_keys(block.settings, known, block.where);

    for (const ConfigKey& key : schema.keys) {
        if (const Entry* entry = find_entry(block.settings, key.name)) {
            if (auto value = read_setting(context, *entry, key)) {
                settings.set(key.name, std::move(*value));
            } else {
                ok = false;
            }
        } else if (key.required) {
            std::string message =
                block.where + " is missing required key '" + key.name + "' (" + std::string(to_string(key.type)) + ")";
            if (!key.description.empty()) message += ": " + key.description;
            context.error(block.block_position, std::move(message));
        } else if (!key.default_value.empty()) {
            std::string problem;
            if (auto value = default_value(key, problem)) {
                settings.set(key.name, std::move(*value));
            } else {
                context.error(block.name_position, "plugin '" + block.name + "' declares an invalid default for '" +
                                                       key.name + "': " + problem +
                                                       "; this is a bug in the plugin, report it to its authors");
            }
        }
    }
    return ok;
}

}  // namespace detail

PluginConfig default_settings(const ConfigSchema& schema) {
    PluginConfig settings;
    for (const ConfigKey& key : schema.keys) {
        if (key.required || key.default_value.empty()) continue;
        std::string problem;
        if (auto value = default_value(key, problem)) settings.set(key.name, std::move(*value));
    }
    return settings;
}

std::string describe_plugin(const PluginDescriptor& descriptor) {
    const auto text = [](const char* value) { return std::string(value != nullptr ? value : ""); };
    const std::string name = text(descriptor.name);
    const ConfigSchema* schema = descriptor.schema != nullptr ? descriptor.schema() : nullptr;
    const std::vector<ConfigKey> keys = schema != nullptr ? schema->keys : std::vector<ConfigKey>{};

    std::ostringstream out;
    out << name << " (" << to_string(descriptor.kind) << " plugin), version " << text(descriptor.version) << "\n";
    if (!text(descriptor.description).empty()) out << text(descriptor.description) << "\n";
    out << "\n";

    if (keys.empty()) {
        out << "Settings: none.\n";
    } else {
        std::vector<std::vector<std::string>> rows{{"KEY", "TYPE", "REQUIRED / DEFAULT", "DESCRIPTION"}};
        for (const ConfigKey& key : keys) {
            std::string presence = key.required                ? "required"
                                   : key.default_value.empty() ? "optional"
                                                               : "default: " + key.default_value;
            rows.push_back({key.name, std::string(to_string(key.type)), presence, key.description});
        }
        std::vector<std::size_t> widths(4, 0);
        for (const auto& row : rows) {
            for (std::size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
        }
        out << "Settings:\n";
        for (const auto& row : rows) {
            std::string line = " ";
            for (std::size_t i = 0; i < row.size(); ++i) {
                line += " " + row[i];
                if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 1, ' ');
            }
            out << line.substr(0, line.find_last_not_of(' ') + 1) << "\n";
        }
    }

    // An example, with every default written out, where this kind of plugin goes in the config.
    std::string indent;
    out << "\nExample:\n";
    switch (descriptor.kind) {
        case PluginKind::store:
            out << "  store:\n    plugin: " << name << "\n";
            indent = "    ";
            break;
        case PluginKind::connector:
            out << "  connections:\n    - name: " << name << "-main\n      plugin: " << name << "\n";
            indent = "      ";
            break;
        case PluginKind::recovery:
            out << "  connections:\n    - name: CONNECTION\n      plugin: CONNECTOR\n      recovery:\n"
                << "        policy: " << name << "\n";
            indent = "        ";
            break;
        case PluginKind::strategy:
            out << "  routes:\n    - from: CHANNEL\n      to: { group: GROUP }\n      strategy: " << name << "\n";
            break;
        case PluginKind::bot:
            out << "  bots:\n    - plugin: " << name << "\n      channels: [CHANNEL]\n";
            indent = "      ";
            break;
    }
    if (!indent.empty()) {
        for (const ConfigKey& key : keys) {
            if (key.required) {
                out << indent << key.name << ": " << placeholder(key.type) << "  # required\n";
            } else if (!key.default_value.empty()) {
                out << indent << key.name << ": " << key.default_value << "\n";
            } else {
                out << indent << "# " << key.name << ": " << placeholder(key.type) << "\n";
            }
        }
    }
    return out.str();
}

}  // namespace switchboard::config
