#pragma once
// A `switchboard-sandbox PLATFORM` process as a test fixture: started on a free loopback port (with
// --exit-with-parent), driven through its /_sandbox/ control API, stopped when the object goes. DiscordSandbox and
// TelegramSandbox add what is particular to their platform. Include in one .cpp per test executable (it pulls in
// Boost.Beast).

#include "background_process.hpp"
#include "http_client.hpp"
#include "test_support.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace switchboard::testing_support {

class SandboxProcess {
public:
    /// Starts `switchboard-sandbox @p platform` with @p args in @p directory; waits until it says its port.
    SandboxProcess(const std::string& platform, const std::filesystem::path& directory, std::vector<std::string> args,
                   const std::string& name) {
        args.insert(args.begin(), {platform, "--port", "0", "--exit-with-parent"});
        process_ = std::make_unique<BackgroundProcess>(
            std::filesystem::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard-sandbox", args, directory, name);
        if (!wait_until([&] { return process_->out().find('\n') != std::string::npos || !process_->running(); },
                        std::chrono::seconds(20)))
            throw std::runtime_error("the " + platform + " sandbox did not start: " + process_->err());
        const std::string line = process_->out().substr(0, process_->out().find('\n'));
        const auto ready = nlohmann::json::parse(line, nullptr, false);
        if (ready.is_discarded() || !ready.contains("port"))
            throw std::runtime_error("the " + platform + " sandbox printed '" + line + "': " + process_->err());
        port_ = ready["port"].get<int>();
    }

    [[nodiscard]] int port() const { return port_; }

    /// A control call: `control("POST", "/messages", {...})`; throws on a status other than 2xx.
    nlohmann::json control(const std::string& method, const std::string& path,
                           const nlohmann::json& body = nlohmann::json()) const {
        return sandbox_control(port_, method, path, body);
    }

    /// Everything the sandbox wrote to standard error (with --verbose: every request).
    [[nodiscard]] std::string log() const { return process_->err(); }

private:
    std::unique_ptr<BackgroundProcess> process_;
    int port_ = 0;
};

}  // namespace switchboard::testing_support
