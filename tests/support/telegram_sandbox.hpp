#pragma once
// The Telegram sandbox (tools/sandbox, `switchboard-sandbox telegram`) as a test fixture: started on a free loopback
// port, driven through its /_sandbox/ control API, stopped when the object goes. Include in one .cpp per test
// executable (it pulls in Boost.Beast).

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "background_process.hpp"
#include "test_support.hpp"

namespace switchboard::testing_support {

class TelegramSandbox {
public:
    /// The sandbox's default bot token (bot user 1000).
    static constexpr const char* kToken = "1000:sandbox-token";

    /// Starts the sandbox with @p args (e.g. `--chat-rate 0`) in @p directory; waits until it listens.
    explicit TelegramSandbox(const std::filesystem::path& directory, std::vector<std::string> args = {}) {
        args.insert(args.begin(), {"telegram", "--port", "0", "--exit-with-parent"});
        process_ =
            std::make_unique<BackgroundProcess>(std::filesystem::path(SWITCHBOARD_TEST_BIN_DIR) / "switchboard-sandbox",
                                                args, directory, "telegram-sandbox");
        if (!wait_until([&] { return process_->out().find('\n') != std::string::npos || !process_->running(); },
                        std::chrono::seconds(20)))
            throw std::runtime_error("the Telegram sandbox did not start: " + process_->err());
        const std::string line = process_->out().substr(0, process_->out().find('\n'));
        const auto ready = nlohmann::json::parse(line, nullptr, false);
        if (ready.is_discarded() || !ready.contains("port"))
            throw std::runtime_error("the Telegram sandbox printed '" + line + "': " + process_->err());
        port_ = ready["port"].get<int>();
    }

    [[nodiscard]] int port() const { return port_; }
    /// The connector's `api_base`.
    [[nodiscard]] std::string api_base() const { return "http://127.0.0.1:" + std::to_string(port_); }

    /// A control call: `control("POST", "/messages", {...})`; throws on a status other than 2xx.
    nlohmann::json control(const std::string& method, const std::string& path,
                           const nlohmann::json& body = nlohmann::json()) const {
        namespace beast = boost::beast;
        namespace http = beast::http;
        boost::asio::io_context io;
        beast::tcp_stream stream(io);
        stream.expires_after(std::chrono::seconds(30));
        stream.connect(boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"),
                                                      static_cast<unsigned short>(port_)));
        http::request<http::string_body> request(http::string_to_verb(method), "/_sandbox" + path, 11);
        request.set(http::field::host, "127.0.0.1");
        if (!body.is_null()) {
            request.set(http::field::content_type, "application/json");
            request.body() = body.dump();
        }
        request.prepare_payload();
        http::write(stream, request);
        beast::flat_buffer buffer;
        http::response_parser<http::string_body> parser;
        parser.body_limit(256 * 1024 * 1024);
        http::read(stream, buffer, parser);
        beast::error_code ignored;
        stream.socket().shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
        const auto& response = parser.get();
        if (response.result_int() / 100 != 2)
            throw std::runtime_error(method + " /_sandbox" + path + ": " + std::to_string(response.result_int()) + " " +
                                     response.body());
        return response.body().empty() ? nlohmann::json::object() : nlohmann::json::parse(response.body());
    }

    /// Everything the sandbox wrote to standard error (with --verbose: every request).
    [[nodiscard]] std::string log() const { return process_->err(); }

private:
    std::unique_ptr<BackgroundProcess> process_;
    int port_ = 0;
};

}  // namespace switchboard::testing_support
