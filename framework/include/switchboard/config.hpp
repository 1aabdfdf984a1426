#pragma once
/// @file config.hpp
/// @brief How a plugin declares its configuration (a schema table) and reads its validated settings.
///
/// The host validates each plugin's YAML subtree against the plugin's schema before `create` is called, so a
/// plugin only ever sees settings of the declared types, with defaults filled in. The same table prints as the
/// plugin's documentation (`switchboard plugins --describe NAME`).

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace switchboard {

/// @brief The type of one configuration key.
enum class ValueType {
    string,       ///< Any scalar, kept as text.
    integer,      ///< A whole number (64-bit).
    number,       ///< A floating-point number.
    boolean,      ///< true / false.
    duration,     ///< A duration such as `500ms`, `30s`, `5m`, `2h`, `14d`; read as milliseconds.
    string_list,  ///< A sequence of scalars.
};

/// @brief "string", "integer", "number", "boolean", "duration" or "list of strings".
[[nodiscard]] inline std::string_view to_string(ValueType type) noexcept {
    switch (type) {
        case ValueType::string: return "string";
        case ValueType::integer: return "integer";
        case ValueType::number: return "number";
        case ValueType::boolean: return "boolean";
        case ValueType::duration: return "duration";
        case ValueType::string_list: return "list of strings";
    }
    return "unknown";
}

/// @brief One key of a plugin's configuration.
struct ConfigKey {
    /// @brief The YAML key.
    std::string name;
    /// @brief Its type.
    ValueType type = ValueType::string;
    /// @brief True if the key must be present (then `default_value` is ignored).
    bool required = false;
    /// @brief Default, written as it would be in YAML (`"30s"`, `"10"`, `"true"`); empty means no default.
    std::string default_value;
    /// @brief One sentence for the generated documentation.
    std::string description;
};

/// @brief A plugin's whole configuration schema.
struct ConfigSchema {
    /// @brief The keys, in documentation order.
    std::vector<ConfigKey> keys;
};

/// @brief A validated configuration value.
using ConfigValue = std::variant<std::string, std::int64_t, double, bool, std::vector<std::string>>;

/// @brief A plugin's validated settings: every declared key with a value or a default, typed as declared.
///
/// Durations are stored as `std::int64_t` milliseconds. Getters return the fallback when the key is absent
/// (only possible for an optional key without default) or of another type.
class PluginConfig {
public:
    /// @brief Sets @p key to @p value (the host does this while validating; tests may too).
    void set(std::string key, ConfigValue value) { values_[std::move(key)] = std::move(value); }
    /// @brief True if @p key has a value.
    [[nodiscard]] bool has(std::string_view key) const { return values_.find(key) != values_.end(); }
    /// @brief The string value of @p key, or @p fallback.
    [[nodiscard]] std::string get_string(std::string_view key, std::string fallback = {}) const {
        return get<std::string>(key).value_or(std::move(fallback));
    }
    /// @brief The integer (or duration in milliseconds) value of @p key, or @p fallback.
    [[nodiscard]] std::int64_t get_int(std::string_view key, std::int64_t fallback = 0) const {
        return get<std::int64_t>(key).value_or(fallback);
    }
    /// @brief The number value of @p key, or @p fallback.
    [[nodiscard]] double get_number(std::string_view key, double fallback = 0.0) const {
        return get<double>(key).value_or(fallback);
    }
    /// @brief The boolean value of @p key, or @p fallback.
    [[nodiscard]] bool get_bool(std::string_view key, bool fallback = false) const {
        return get<bool>(key).value_or(fallback);
    }
    /// @brief The list value of @p key, or an empty list.
    [[nodiscard]] std::vector<std::string> get_list(std::string_view key) const {
        return get<std::vector<std::string>>(key).value_or(std::vector<std::string>{});
    }
    /// @brief All values, by key.
    [[nodiscard]] const std::map<std::string, ConfigValue, std::less<>>& values() const noexcept { return values_; }

private:
    template <class T>
    [[nodiscard]] std::optional<T> get(std::string_view key) const {
        auto it = values_.find(key);
        if (it == values_.end()) return std::nullopt;
        if (const T* value = std::get_if<T>(&it->second)) return *value;
        return std::nullopt;
    }

    std::map<std::string, ConfigValue, std::less<>> values_;
};

}  // namespace switchboard
