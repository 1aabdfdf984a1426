#pragma once
/// @file message.hpp
/// @brief The message model and addresses (DESIGN §2).

#include <switchboard/result.hpp>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace switchboard {

/// @brief How a message is addressed: to one person, to a group, or to every channel in scope.
enum class MessageKind {
    private_message,  ///< One person (a direct message).
    group,            ///< A channel or a named group of channels and people.
    broadcast,        ///< Every channel in scope.
};

/// @brief "private", "group" or "broadcast".
[[nodiscard]] inline std::string_view to_string(MessageKind kind) noexcept {
    switch (kind) {
        case MessageKind::private_message: return "private";
        case MessageKind::group: return "group";
        case MessageKind::broadcast: return "broadcast";
    }
    return "unknown";
}

/// @brief Parses "private", "group" or "broadcast".
[[nodiscard]] inline std::optional<MessageKind> parse_message_kind(std::string_view text) noexcept {
    if (text == "private") return MessageKind::private_message;
    if (text == "group") return MessageKind::group;
    if (text == "broadcast") return MessageKind::broadcast;
    return std::nullopt;
}

/// @brief Who wrote a message.
struct Author {
    /// @brief The platform's id for the person (Discord snowflake, IRC nick, Telegram user id, ...).
    std::string id;
    /// @brief Name for people to read.
    std::string display_name;
    /// @brief True when the author is a bot (bots ignore bots by default, which prevents reply loops).
    bool is_bot = false;
};

/// @brief One message as it travels from a connector through the pipeline to the bots.
struct Message {
    /// @brief The platform's own id of the message; unique within (connection, channel).
    std::string id;
    /// @brief The configured connection name the message arrived on.
    std::string connection;
    /// @brief The platform's channel id (for a private message: the conversation id the platform uses).
    std::string channel;
    /// @brief Who wrote it.
    Author author;
    /// @brief The text.
    std::string text;
    /// @brief When the platform says it was sent, in milliseconds since the Unix epoch.
    std::int64_t timestamp_ms = 0;
    /// @brief Private, group or broadcast.
    MessageKind kind = MessageKind::group;
    /// @brief The id of the message this one answers, if any.
    std::optional<std::string> reply_to;
    /// @brief True when a recovery policy fetched it after a disconnect rather than receiving it live.
    bool recovered = false;
    /// @brief The platform's raw payload as JSON text, for plugins that need more than the fields above.
    std::string raw;
};

/// @brief Where something is delivered: `connection/channel` for a channel or `connection/@user` for a person.
struct Address {
    /// @brief The configured connection name.
    std::string connection;
    /// @brief The channel id, or the user id when `is_user` is true.
    std::string target;
    /// @brief True for a person (`connection/@user`), false for a channel.
    bool is_user = false;

    /// @brief The address of channel @p channel on connection @p connection.
    [[nodiscard]] static Address channel(std::string connection, std::string channel) {
        return Address{std::move(connection), std::move(channel), false};
    }
    /// @brief The address of person @p user on connection @p connection.
    [[nodiscard]] static Address user(std::string connection, std::string user) {
        return Address{std::move(connection), std::move(user), true};
    }
    /// @brief Parses `connection/channel` or `connection/@user`; the channel part may itself contain '/'.
    [[nodiscard]] static Result<Address> parse(std::string_view text) {
        const auto slash = text.find('/');
        if (slash == std::string_view::npos || slash == 0 || slash + 1 == text.size()) {
            return fail("bad_address", "'" + std::string(text) + "' is not an address: write connection/channel or connection/@user");
        }
        const std::string_view rest = text.substr(slash + 1);
        if (rest.front() == '@') {
            if (rest.size() == 1) return fail("bad_address", "'" + std::string(text) + "' names no user after '@'");
            return user(std::string(text.substr(0, slash)), std::string(rest.substr(1)));
        }
        return channel(std::string(text.substr(0, slash)), std::string(rest));
    }
    /// @brief The textual form parse() accepts.
    [[nodiscard]] std::string to_string() const { return connection + (is_user ? "/@" : "/") + target; }

    /// @brief Addresses compare by all three fields.
    friend bool operator==(const Address&, const Address&) = default;
};

namespace detail {
inline std::uint64_t hash_mix(std::uint64_t h, std::uint64_t word) noexcept {
    h = (h ^ word) * 0x9e3779b97f4a7c15ULL;
    return h ^ (h >> 29);
}
inline std::uint64_t hash_add(std::uint64_t h, std::string_view bytes) noexcept {
    const char* p = bytes.data();
    std::size_t n = bytes.size();
    for (; n >= 8; p += 8, n -= 8) {
        std::uint64_t word;
        std::memcpy(&word, p, 8);
        h = hash_mix(h, word);
    }
    std::uint64_t tail = 0;
    for (std::size_t i = 0; i < n; ++i) tail |= static_cast<std::uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    return hash_mix(h, tail ^ (static_cast<std::uint64_t>(bytes.size()) << 56));
}
}  // namespace detail

/// @brief A 64-bit hash of all three fields of @p address, well mixed in its low and high bits alike, for plugins
/// that index addresses in tables of their own (eight bytes at a time: addresses are short).
[[nodiscard]] inline std::uint64_t hash_address(const Address& address) noexcept {
    std::uint64_t h = detail::hash_add(address.is_user ? 0x40U : 0x2fU, address.connection);  // '@' or '/'
    h = detail::hash_add(h, address.target);
    h ^= h >> 33;  // murmur3's finaliser
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/// @brief The address a reply to @p message goes to: its channel, or its author for a private message.
[[nodiscard]] inline Address reply_address(const Message& message) {
    if (message.kind == MessageKind::private_message) return Address::user(message.connection, message.author.id);
    return Address::channel(message.connection, message.channel);
}

}  // namespace switchboard
