#pragma once
// The Discord sandbox (tools/sandbox, `switchboard-sandbox discord`) as a test fixture (see sandbox_process.hpp).

#include "sandbox_process.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace switchboard::testing_support {

class DiscordSandbox : public SandboxProcess {
public:
    /// Starts the sandbox with @p args (e.g. `--route-limit 1000`) in @p directory; waits until it listens.
    DiscordSandbox(const std::filesystem::path& directory, std::vector<std::string> args = {})
        : SandboxProcess("discord", directory, std::move(args), "sandbox") {}

    /// The connector's `api_base`.
    [[nodiscard]] std::string api_base() const { return "http://127.0.0.1:" + std::to_string(port()) + "/api/v10"; }
};

}  // namespace switchboard::testing_support
