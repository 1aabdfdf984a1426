#include "config/validation.hpp"

#include <algorithm>
#include <cstdlib>

namespace switchboard::config::detail {

const Entry* find_entry(const std::vector<Entry>& entries, std::string_view key) {
    for (const Entry& entry : entries) {
        if (entry.key == key) return &entry;
    }
    return nullptr;
}

namespace {

bool valid_variable_name(std::string_view name) {
    if (name.empty()) return false;
    auto letter = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
    auto digit = [](char c) { return c >= '0' && c <= '9'; };
    if (!letter(name.front())) return false;
    return std::all_of(name.begin(), name.end(), [&](char c) { return letter(c) || digit(c); });
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

}  // namespace

namespace {

char close_of(char open) { return open == '(' ? ')' : '>'; }

/// Length of the `NAME}` (or `NAME` + close) that starts at @p at, if @p text has a well-formed one there.
std::size_t variable_length(std::string_view text, std::size_t at, char close) {
    const std::size_t end = text.find(close, at);
    if (end == std::string_view::npos || !valid_variable_name(text.substr(at, end - at))) return 0;
    return end - at + 1;
}

}  // namespace

ProtectedText protect_variables(const std::string& raw) {
    ProtectedText result{raw, 0};
    if (raw.find("${") == std::string::npos) return result;
    for (const char open : {'(', '<'}) {
        if (raw.find(std::string("$") + open) != std::string::npos) continue;  // the marker must be unambiguous
        result.open = open;
        for (std::size_t at = raw.find("${"); at != std::string::npos; at = raw.find("${", at + 2)) {
            if (const std::size_t length = variable_length(raw, at + 2, '}')) {
                result.text[at + 1] = open;
                result.text[at + 1 + length] = close_of(open);
            }
        }
        return result;
    }
    return result;  // both markers are taken: leave the text alone (flow mappings cannot use ${VAR} then)
}

std::string restore_variables(std::string_view text, char open) {
    std::string result(text);
    if (open == 0) return result;
    const std::string marker = std::string("$") + open;
    for (std::size_t at = result.find(marker); at != std::string::npos; at = result.find(marker, at + 2)) {
        if (const std::size_t length = variable_length(result, at + 2, close_of(open))) {
            result[at + 1] = '{';
            result[at + 1 + length] = '}';
        }
    }
    return result;
}

Expansion expand_variables(std::string_view input, char open) {
    // The protected form only ever stands for a well-formed `${NAME}`; turn it back first.
    const std::string restored = restore_variables(input, open);
    const std::string_view text = restored;
    Expansion result;
    std::size_t i = 0;
    while (i < text.size()) {
        if (text.compare(i, 3, "$${") == 0) {
            result.text += "${";
            i += 3;
            continue;
        }
        if (text.compare(i, 2, "${") != 0) {
            result.text += text[i++];
            continue;
        }
        const std::size_t close = text.find('}', i + 2);
        if (close == std::string_view::npos) {
            result.problems.push_back("unterminated '${' in '" + restored +
                                      "'; close it with '}', or write '$${' for a literal '${'");
            result.text += text.substr(i);
            break;
        }
        const std::string name(text.substr(i + 2, close - i - 2));
        if (!valid_variable_name(name)) {
            result.problems.push_back("'${" + name +
                                      "}' is not a valid environment variable name (letters, digits and '_', "
                                      "not starting with a digit); write '$${' for a literal '${'");
        } else if (const char* value = std::getenv(name.c_str())) {
            result.text += value;
        } else {
            result.problems.push_back("environment variable " + name +
                                      " is not set; set it before starting switchboard");
        }
        i = close + 1;
    }
    return result;
}

SourcePosition Context::position(const YAML::Node& node) const {
    const YAML::Mark mark = node.IsDefined() ? node.Mark() : YAML::Mark::null_mark();
    if (mark.is_null()) return SourcePosition{file_, 1, 1};
    return SourcePosition{file_, mark.line + 1, mark.column + 1};
}

void Context::error(SourcePosition where, std::string message) {
    errors_.push_back(ConfigError{std::move(where), std::move(message)});
}

std::optional<std::string> Context::text(const YAML::Node& node) {
    if (!node.IsDefined() || !node.IsScalar()) return std::nullopt;
    Expansion expansion = expand_variables(node.Scalar(), open_);
    if (expansion.problems.empty()) return std::move(expansion.text);
    const SourcePosition where = position(node);
    if (failed_expansions_.emplace(where.line, where.column).second) {
        for (std::string& problem : expansion.problems) error(where, std::move(problem));
    }
    return std::nullopt;
}

void Context::expand_all(const YAML::Node& node) {
    // Depth-first with an explicit bound: YAML aliases could otherwise make a walk revisit a node forever.
    struct Walker {
        Context& context;
        void walk(const YAML::Node& node, int depth) {
            if (depth > 64) return;
            if (node.IsScalar()) {
                (void)context.text(node);
            } else if (node.IsMap()) {
                for (const auto& pair : node) walk(pair.second, depth + 1);
            } else if (node.IsSequence()) {
                for (const auto& item : node) walk(item, depth + 1);
            }
        }
    };
    Walker{*this}.walk(node, 0);
}

std::vector<Entry> Context::entries(const YAML::Node& mapping) {
    std::vector<Entry> result;
    if (!mapping.IsDefined() || !mapping.IsMap()) return result;
    for (const auto& pair : mapping) {
        if (!pair.first.IsScalar()) {
            error(pair.first, "a key must be a plain name, got " + describe(pair.first));
            continue;
        }
        const std::string key = raw(pair.first);
        if (const Entry* first = find_entry(result, key)) {
            error(pair.first, "duplicate key '" + key + "' (first written at line " +
                                  std::to_string(position(first->key_node).line) + "); remove one of them");
            continue;
        }
        result.push_back(Entry{key, pair.first, pair.second});
    }
    return result;
}

void Context::check_keys(const std::vector<Entry>& entries, const std::vector<std::string>& known,
                         const std::string& where) {
    for (const Entry& entry : entries) {
        if (std::find(known.begin(), known.end(), entry.key) != known.end()) continue;
        std::string message = "unknown key '" + entry.key + "' in " + where +
                              " (known keys: " + (known.empty() ? std::string("none") : join(known, known.size())) +
                              ")";
        if (const std::string guess = closest_match(entry.key, known); !guess.empty()) {
            message += "; did you mean '" + guess + "'?";
        }
        error(entry.key_node, std::move(message));
    }
}

std::string Context::describe(const YAML::Node& node) const {
    if (!node.IsDefined() || node.IsNull()) return "nothing";
    if (node.IsMap()) return "a mapping";
    if (node.IsSequence()) return "a list";
    return "'" + raw(node) + "'";
}

std::string join(const std::vector<std::string>& items, std::size_t limit) {
    std::string result;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i == limit) return result + ", ...";
        if (i > 0) result += ", ";
        result += items[i];
    }
    return result;
}

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
    std::string best;
    std::size_t best_distance = 3;  // more than two edits is not a typo any more
    for (const std::string& candidate : candidates) {
        const std::size_t distance = edit_distance(word, candidate);
        if (distance < best_distance && distance < std::max(word.size(), candidate.size())) {
            best = candidate;
            best_distance = distance;
        }
    }
    return best;
}

}  // namespace switchboard::config::detail
