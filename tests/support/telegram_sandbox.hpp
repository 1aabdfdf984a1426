#pragma once
// The Telegram sandbox (tools/sandbox, `switchboard-sandbox telegram`) as a test fixture (see sandbox_process.hpp).

#include "sandbox_process.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace switchboard::testing_support {

class TelegramSandbox : public SandboxProcess {
public:
    /// The sandbox's default bot token (bot user 1000).
    static constexpr const char* kToken = "1000:sandbox-token";

    /// Starts the sandbox with @p args (e.g. `--chat-rate 0`) in @p directory; waits until it listens.
    explicit TelegramSandbox(const std::filesystem::path& directory, std::vector<std::string> args = {})
        : SandboxProcess("telegram", directory, std::move(args), "telegram-sandbox") {}

    /// The connector's `api_base`.
    [[nodiscard]] std::string api_base() const { return "http://127.0.0.1:" + std::to_string(port()); }
};

}  // namespace switchboard::testing_support
