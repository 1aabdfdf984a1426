#pragma once
// One blocking HTTP/1.1 request to a loopback port, for tests: the sandboxes' control APIs, the admin server.
// Include in one .cpp per test executable where possible (it pulls in Boost.Beast).

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <map>
#include <stdexcept>
#include <string>

namespace switchboard::testing_support {

struct HttpResponse {
    unsigned status = 0;
    std::string content_type;
    std::string body;

    /// The body as JSON (an empty body is an empty object).
    [[nodiscard]] nlohmann::json json() const {
        return body.empty() ? nlohmann::json::object() : nlohmann::json::parse(body);
    }
};

/// Sends @p method @p target with @p body (and @p headers) to 127.0.0.1:@p port and reads the whole response (up to
/// 256 MB). Throws when the connection fails or times out (30 s).
inline HttpResponse http_request(int port, const std::string& method, const std::string& target,
                                 const std::string& body = {}, const std::map<std::string, std::string>& headers = {}) {
    namespace beast = boost::beast;
    namespace http = beast::http;
    boost::asio::io_context io;
    beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(30));
    stream.connect(
        boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
    http::request<http::string_body> request(http::string_to_verb(method), target, 11);
    request.set(http::field::host, "127.0.0.1");
    for (const auto& [name, value] : headers) request.set(name, value);
    if (!body.empty()) {
        if (headers.find("Content-Type") == headers.end()) request.set(http::field::content_type, "application/json");
        request.body() = body;
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
    return HttpResponse{response.result_int(), std::string(response[http::field::content_type]), response.body()};
}

/// A JSON control call to a sandbox: `/_sandbox` + @p path, the body as JSON; throws on a status other than 2xx.
inline nlohmann::json sandbox_control(int port, const std::string& method, const std::string& path,
                                      const nlohmann::json& body) {
    const HttpResponse response = http_request(port, method, "/_sandbox" + path, body.is_null() ? "" : body.dump());
    if (response.status / 100 != 2) {
        throw std::runtime_error(method + " /_sandbox" + path + ": " + std::to_string(response.status) + " " +
                                 response.body);
    }
    return response.json();
}

}  // namespace switchboard::testing_support
