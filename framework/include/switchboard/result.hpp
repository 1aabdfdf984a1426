#pragma once
/// @file result.hpp
/// @brief Expected failures as values: `Error` (a stable code plus a message for people) and `Result<T>`.

#include <boost/system/result.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace switchboard {

/// @brief An expected failure: a stable, machine-readable code and a message a person can act on.
///
/// Codes are lower_snake_case identifiers that never change meaning once published
/// (e.g. `store_locked`, `recipient_not_found`, `rate_limited`).
struct Error {
    /// @brief Stable identifier of the failure, for programs and metrics.
    std::string code;
    /// @brief What went wrong, where, and what to do about it.
    std::string message;
    /// @brief True when trying again later may succeed (a 429, a dropped connection).
    bool retryable = false;
    /// @brief For a retryable error: how long to wait before trying again, in milliseconds (0: caller decides).
    std::int64_t retry_after_ms = 0;

    /// @brief "code: message", for logs.
    [[nodiscard]] std::string to_string() const { return code + ": " + message; }
};

/// @brief The exception `Result<T>::value()` throws when it holds an `Error`.
class ErrorException : public std::runtime_error {
public:
    /// @brief Wraps @p error.
    explicit ErrorException(Error error) : std::runtime_error(error.to_string()), error_(std::move(error)) {}
    /// @brief The wrapped error.
    [[nodiscard]] const Error& error() const noexcept { return error_; }

private:
    Error error_;
};

/// @brief Lets `boost::system::result<T, Error>::value()` throw an `ErrorException`.
[[noreturn]] inline void throw_exception_from_error(const Error& error, const boost::source_location&) {
    throw ErrorException(error);
}

/// @brief A value or an `Error`. Test with `if (r)`, read with `*r` / `r.value()`, inspect `r.error()`.
template <class T>
using Result = boost::system::result<T, Error>;

/// @brief Shorthand for building a failed `Result`: `return fail("store_locked", "...");`.
[[nodiscard]] inline Error fail(std::string code, std::string message) {
    return Error{std::move(code), std::move(message), false, 0};
}

/// @brief Shorthand for a retryable failure, optionally with the time to wait before retrying.
[[nodiscard]] inline Error fail_retryable(std::string code, std::string message, std::int64_t retry_after_ms = 0) {
    return Error{std::move(code), std::move(message), true, retry_after_ms};
}

/// @brief A successful `Result<std::string>`. (`return text;` does not compile there: Error, an aggregate, is
/// constructible from a string too, so the conversion is ambiguous.)
[[nodiscard]] inline Result<std::string> ok_string(std::string value) {
    return Result<std::string>(boost::system::in_place_value, std::move(value));
}

}  // namespace switchboard
