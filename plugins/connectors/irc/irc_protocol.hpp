#pragma once
// IRC wire format without I/O: parsing a line (IRCv3 tags, source, command, parameters), building safe outbound
// lines, splitting text to fit the 512-byte line, server-time, ids for messages without a msgid, SASL PLAIN.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace switchboard::irc {

/// One line as received: `@tags :source COMMAND params... :trailing`.
struct IrcLine {
    std::map<std::string, std::string, std::less<>> tags;  ///< Values unescaped; a tag without value maps to "".
    std::string source;                                    ///< Without the leading ':'; empty when absent.
    std::string command;                                   ///< Upper-cased (numerics stay digits).
    std::vector<std::string> params;                       ///< The trailing parameter is the last one.

    /// The nick part of the source (`nick!user@host` → `nick`; a server name stays as it is).
    [[nodiscard]] std::string nick() const;
    /// The value of tag @p name, if present.
    [[nodiscard]] std::optional<std::string> tag(std::string_view name) const;
    /// Parameter @p i, or "" when there are fewer.
    [[nodiscard]] const std::string& param(std::size_t i) const;
};

/// Longest line accepted from a server: 8191 bytes of tags plus the 512 of the message (IRCv3 message-tags).
inline constexpr std::size_t kMaxInboundLine = 8191 + 512;
/// The classic limit of one line, CR LF included, without tags.
inline constexpr std::size_t kMaxLine = 512;

/// Parses one line (without CR LF). nullopt when it has no command or is otherwise not a line.
[[nodiscard]] std::optional<IrcLine> parse_line(std::string_view line);

/// IRCv3 tag value unescaping (`\:` `;`, `\s` space, `\\`, `\r`, `\n`; a lone trailing `\` is dropped).
[[nodiscard]] std::string unescape_tag_value(std::string_view value);

/// IRCv3 tag value escaping, the inverse of unescape_tag_value.
[[nodiscard]] std::string escape_tag_value(std::string_view value);

/// `YYYY-MM-DDThh:mm:ss[.sss]Z` as milliseconds since the epoch; nullopt when malformed.
[[nodiscard]] std::optional<std::int64_t> parse_server_time(std::string_view text);

/// True when @p text is valid UTF-8.
[[nodiscard]] bool valid_utf8(std::string_view text) noexcept;

/// @p text with every invalid UTF-8 sequence replaced by U+FFFD (IRC has no declared encoding).
[[nodiscard]] std::string repair_utf8(std::string_view text);

/// Splits @p text into IRC-safe pieces of at most @p max_bytes each: one piece per line of the text (LF, CR LF
/// and lone CR end a line), NUL bytes dropped, empty lines left out, long lines cut on UTF-8 character boundaries
/// (at the last space in the second half of a piece when there is one). Nothing returned contains CR, LF or NUL.
[[nodiscard]] std::vector<std::string> split_text(std::string_view text, std::size_t max_bytes);

/// Bytes of text one PRIVMSG to @p target may carry so that the line the server relays
/// (`:<source> PRIVMSG <target> :<text>\r\n`) stays within 512 bytes; @p source_length is the length of
/// `nick!user@host` as the server shows it.
[[nodiscard]] std::size_t privmsg_budget(std::size_t source_length, std::string_view target) noexcept;

/// True when @p word can be sent as a middle parameter (non-empty, no space, CR, LF, NUL, not starting with ':').
[[nodiscard]] bool safe_param(std::string_view word) noexcept;

/// A stable id for a message that came without a msgid: a hash of (server time, nick, text) as hex.
[[nodiscard]] std::string fallback_message_id(std::int64_t time_ms, std::string_view nick, std::string_view text);

/// Base64 of @p bytes (for SASL).
[[nodiscard]] std::string base64(std::string_view bytes);

/// The AUTHENTICATE payload lines for SASL PLAIN: base64 of `user\0user\0password` in 400-byte chunks, with a
/// final `+` when the last chunk is exactly 400 bytes.
[[nodiscard]] std::vector<std::string> sasl_plain_chunks(std::string_view user, std::string_view password);

/// IRC's default case mapping (rfc1459): ASCII lower case plus `[]\~` → `{}|^`.
[[nodiscard]] std::string irc_lower(std::string_view text);

/// A CTCP request or reply (`\x01VERB args\x01`): its verb and arguments; nullopt for plain text.
struct Ctcp {
    std::string verb;
    std::string args;
};
[[nodiscard]] std::optional<Ctcp> parse_ctcp(std::string_view text);

/// The capabilities of `CAP LS`/`CAP NEW` (`name[=value]` separated by spaces).
[[nodiscard]] std::map<std::string, std::string, std::less<>> parse_caps(std::string_view list);

}  // namespace switchboard::irc
