#include "irc_protocol.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>

namespace switchboard::irc {
namespace {

const std::string kEmpty;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::optional<int> digits(std::string_view text, std::size_t at, std::size_t count) {
    if (at + count > text.size()) return std::nullopt;
    int value = 0;
    for (std::size_t i = at; i < at + count; ++i) {
        if (!is_digit(text[i])) return std::nullopt;
        value = value * 10 + (text[i] - '0');
    }
    return value;
}

// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
    y -= m <= 2 ? 1 : 0;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

// Length of the valid UTF-8 sequence starting at text[i], or 0 when it is not one.
std::size_t utf8_sequence(std::string_view text, std::size_t i) noexcept {
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
    const unsigned char c = byte(i);
    if (c < 0x80) return 1;
    std::size_t length = 0;
    std::uint32_t code = 0;
    if ((c & 0xE0) == 0xC0) {
        length = 2;
        code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        length = 3;
        code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        length = 4;
        code = c & 0x07;
    } else {
        return 0;
    }
    if (i + length > text.size()) return 0;
    for (std::size_t k = 1; k < length; ++k) {
        if ((byte(i + k) & 0xC0) != 0x80) return 0;
        code = (code << 6) | (byte(i + k) & 0x3F);
    }
    static constexpr std::array<std::uint32_t, 5> kMin{0, 0, 0x80, 0x800, 0x10000};
    if (code < kMin[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
    return length;
}

bool continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

std::string IrcLine::nick() const { return source.substr(0, source.find('!')); }

std::optional<std::string> IrcLine::tag(std::string_view name) const {
    auto it = tags.find(name);
    if (it == tags.end()) return std::nullopt;
    return it->second;
}

const std::string& IrcLine::param(std::size_t i) const { return i < params.size() ? params[i] : kEmpty; }

std::optional<IrcLine> parse_line(std::string_view line) {
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
    if (line.empty() || line.size() > kMaxInboundLine) return std::nullopt;
    if (line.find('\0') != std::string_view::npos) return std::nullopt;
    IrcLine result;
    const auto next_word = [&line]() {
        while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
        const auto end = line.find(' ');
        std::string_view word = line.substr(0, end);
        line.remove_prefix(end == std::string_view::npos ? line.size() : end);
        return word;
    };
    if (line.front() == '@') {
        std::string_view tags = next_word();
        tags.remove_prefix(1);
        while (!tags.empty()) {
            const auto end = tags.find(';');
            std::string_view tag = tags.substr(0, end);
            tags.remove_prefix(end == std::string_view::npos ? tags.size() : end + 1);
            if (tag.empty()) continue;
            const auto equals = tag.find('=');
            std::string key(tag.substr(0, equals));
            if (key.empty()) continue;
            result.tags[std::move(key)] =
                equals == std::string_view::npos ? std::string() : unescape_tag_value(tag.substr(equals + 1));
        }
    }
    while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    if (!line.empty() && line.front() == ':') {
        std::string_view source = next_word();
        source.remove_prefix(1);
        if (source.empty()) return std::nullopt;
        result.source = std::string(source);
    }
    const std::string_view command = next_word();
    if (command.empty()) return std::nullopt;
    const bool numeric = command.size() == 3 && std::all_of(command.begin(), command.end(), is_digit);
    const bool word = std::all_of(command.begin(), command.end(),
                                  [](char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; });
    if (!numeric && !word) return std::nullopt;
    result.command.reserve(command.size());
    for (char c : command) result.command.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
    for (;;) {
        while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
        if (line.empty()) break;
        if (line.front() == ':') {
            result.params.emplace_back(line.substr(1));
            break;
        }
        result.params.emplace_back(next_word());
    }
    return result;
}

std::string unescape_tag_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (std::size_t i = 0; i < value.size(); ++i) {
        if (value[i] != '\\') {
            out.push_back(value[i]);
            continue;
        }
        if (++i == value.size()) break;
        switch (value[i]) {
            case ':': out.push_back(';'); break;
            case 's': out.push_back(' '); break;
            case 'r': out.push_back('\r'); break;
            case 'n': out.push_back('\n'); break;
            default: out.push_back(value[i]); break;
        }
    }
    return out;
}

std::string escape_tag_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        switch (c) {
            case ';': out += "\\:"; break;
            case ' ': out += "\\s"; break;
            case '\\': out += "\\\\"; break;
            case '\r': out += "\\r"; break;
            case '\n': out += "\\n"; break;
            case '\0': break;
            default: out.push_back(c);
        }
    }
    return out;
}

std::optional<std::int64_t> parse_server_time(std::string_view text) {
    // 2026-11-26T22:12:55.737Z
    if (text.size() < 20 || text[4] != '-' || text[7] != '-' || text[10] != 'T' || text[13] != ':' ||
        text[16] != ':') {
        return std::nullopt;
    }
    const auto year = digits(text, 0, 4), month = digits(text, 5, 2), day = digits(text, 8, 2);
    const auto hour = digits(text, 11, 2), minute = digits(text, 14, 2), second = digits(text, 17, 2);
    if (!year || !month || !day || !hour || !minute || !second) return std::nullopt;
    if (*month < 1 || *month > 12 || *day < 1 || *day > 31 || *hour > 23 || *minute > 59 || *second > 60) {
        return std::nullopt;
    }
    std::size_t at = 19;
    std::int64_t millis = 0;
    if (text[at] == '.') {
        ++at;
        int scale = 100;
        while (at < text.size() && is_digit(text[at])) {
            millis += (text[at] - '0') * scale;
            scale /= 10;
            ++at;
        }
    }
    if (at + 1 != text.size() || text[at] != 'Z') return std::nullopt;
    const std::int64_t days = days_from_civil(*year, static_cast<unsigned>(*month), static_cast<unsigned>(*day));
    return ((days * 24 + *hour) * 60 + *minute) * 60000 + std::int64_t{*second} * 1000 + millis;
}

bool valid_utf8(std::string_view text) noexcept {
    for (std::size_t i = 0; i < text.size();) {
        const std::size_t length = utf8_sequence(text, i);
        if (length == 0) return false;
        i += length;
    }
    return true;
}

std::string repair_utf8(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size();) {
        const std::size_t length = utf8_sequence(text, i);
        if (length == 0) {
            out += "\xEF\xBF\xBD";
            ++i;
        } else {
            out.append(text.substr(i, length));
            i += length;
        }
    }
    return out;
}

std::vector<std::string> split_text(std::string_view text, std::size_t max_bytes) {
    std::vector<std::string> pieces;
    if (max_bytes < 4) max_bytes = 4;  // room for one UTF-8 character at least
    std::string line;
    const auto flush_line = [&]() {
        std::string_view rest = line;
        while (!rest.empty()) {
            if (rest.size() <= max_bytes) {
                pieces.emplace_back(rest);
                break;
            }
            std::size_t cut = max_bytes;
            while (cut > 0 && continuation(rest[cut])) --cut;  // never inside a character
            if (cut == 0) cut = max_bytes;                     // not UTF-8 at all: cut anywhere
            const std::size_t space = rest.substr(0, cut).rfind(' ');
            const bool at_space = space != std::string_view::npos && space >= cut / 2 && space > 0;
            if (at_space) cut = space;
            pieces.emplace_back(rest.substr(0, cut));
            rest.remove_prefix(at_space ? cut + 1 : cut);
        }
        line.clear();
    };
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '\0') continue;
        if (c == '\n' || c == '\r') {
            if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
            flush_line();
            continue;
        }
        line.push_back(c);
    }
    flush_line();
    return pieces;
}

std::size_t privmsg_budget(std::size_t source_length, std::string_view target) noexcept {
    // ":" source " PRIVMSG " target " :" text "\r\n"
    const std::size_t overhead = 1 + source_length + 9 + target.size() + 2 + 2;
    return overhead >= kMaxLine ? 0 : kMaxLine - overhead;
}

bool safe_param(std::string_view word) noexcept {
    if (word.empty() || word.front() == ':') return false;
    return word.find_first_of(std::string_view(" \r\n\0", 4)) == std::string_view::npos;
}

std::string fallback_message_id(std::int64_t time_ms, std::string_view nick, std::string_view text) {
    std::uint64_t hash = 0xcbf29ce484222325ULL;  // FNV-1a 64
    const auto add = [&hash](std::string_view bytes) {
        for (char c : bytes) {
            hash ^= static_cast<unsigned char>(c);
            hash *= 0x100000001b3ULL;
        }
    };
    add(std::to_string(time_ms));
    add(std::string_view("\0", 1));
    add(irc_lower(nick));
    add(std::string_view("\0", 1));
    add(text);
    char buffer[24];
    std::snprintf(buffer, sizeof buffer, "h-%016llx", static_cast<unsigned long long>(hash));
    return buffer;
}

std::string base64(std::string_view bytes) {
    static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 2 < bytes.size(); i += 3) {
        const std::uint32_t n = (static_cast<unsigned char>(bytes[i]) << 16) |
                                (static_cast<unsigned char>(bytes[i + 1]) << 8) | static_cast<unsigned char>(bytes[i + 2]);
        out += kAlphabet[(n >> 18) & 63];
        out += kAlphabet[(n >> 12) & 63];
        out += kAlphabet[(n >> 6) & 63];
        out += kAlphabet[n & 63];
    }
    if (i + 1 == bytes.size()) {
        const std::uint32_t n = static_cast<unsigned char>(bytes[i]) << 16;
        out += kAlphabet[(n >> 18) & 63];
        out += kAlphabet[(n >> 12) & 63];
        out += "==";
    } else if (i + 2 == bytes.size()) {
        const std::uint32_t n = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8);
        out += kAlphabet[(n >> 18) & 63];
        out += kAlphabet[(n >> 12) & 63];
        out += kAlphabet[(n >> 6) & 63];
        out += '=';
    }
    return out;
}

std::vector<std::string> sasl_plain_chunks(std::string_view user, std::string_view password) {
    std::string plain;
    plain.append(user).push_back('\0');
    plain.append(user).push_back('\0');
    plain.append(password);
    const std::string encoded = base64(plain);
    std::vector<std::string> chunks;
    for (std::size_t at = 0; at < encoded.size(); at += 400) chunks.push_back(encoded.substr(at, 400));
    if (chunks.empty() || chunks.back().size() == 400) chunks.emplace_back("+");
    return chunks;
}

std::string irc_lower(std::string_view text) {
    std::string out(text);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        } else if (c == '[') {
            c = '{';
        } else if (c == ']') {
            c = '}';
        } else if (c == '\\') {
            c = '|';
        } else if (c == '~') {
            c = '^';
        }
    }
    return out;
}

std::optional<Ctcp> parse_ctcp(std::string_view text) {
    if (text.empty() || text.front() != '\x01') return std::nullopt;
    text.remove_prefix(1);
    if (!text.empty() && text.back() == '\x01') text.remove_suffix(1);
    const auto space = text.find(' ');
    Ctcp ctcp;
    ctcp.verb = std::string(text.substr(0, space));
    if (space != std::string_view::npos) ctcp.args = std::string(text.substr(space + 1));
    for (char& c : ctcp.verb) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return ctcp;
}

std::map<std::string, std::string, std::less<>> parse_caps(std::string_view list) {
    std::map<std::string, std::string, std::less<>> caps;
    while (!list.empty()) {
        const auto end = list.find(' ');
        std::string_view cap = list.substr(0, end);
        list.remove_prefix(end == std::string_view::npos ? list.size() : end + 1);
        if (cap.empty()) continue;
        if (cap.front() == '-' || cap.front() == '~' || cap.front() == '=') cap.remove_prefix(1);
        const auto equals = cap.find('=');
        caps[std::string(cap.substr(0, equals))] =
            equals == std::string_view::npos ? std::string() : std::string(cap.substr(equals + 1));
    }
    return caps;
}

}  // namespace switchboard::irc
