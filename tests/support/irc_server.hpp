#pragma once
// A real IRC server for tests: InspIRCd (IRCv3 tags, msgid, batches and chanhistory) or ngIRCd (no history), each
// on a free loopback port with a config written into its own TempDir from tests/support/irc/*.conf.in. start()
// waits until the server answers a registration; the destructor always stops it (SIGTERM, then SIGKILL).

#include "irc_test_client.hpp"
#include "test_support.hpp"

#include <boost/process.hpp>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#ifndef SWITCHBOARD_TEST_SOURCE_DIR
#error "irc_server.hpp needs SWITCHBOARD_TEST_SOURCE_DIR (switchboard_add_test defines it)"
#endif

namespace switchboard::testing_support {

enum class IrcServerKind { inspircd, ngircd };

inline const char* to_string(IrcServerKind kind) { return kind == IrcServerKind::inspircd ? "inspircd" : "ngircd"; }

/// Where the server binary is, or nullopt when it is not installed (tools/deps.sh test installs both).
inline std::optional<std::filesystem::path> irc_server_binary(IrcServerKind kind) {
    for (const char* dir : {"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"}) {
        const auto path = std::filesystem::path(dir) / to_string(kind);
        if (std::filesystem::exists(path)) return path;
    }
    return std::nullopt;
}

class IrcServer {
public:
    static constexpr const char* kOperName = "testoper";
    static constexpr const char* kOperPassword = "testoperpass";

    /// @p tls (InspIRCd only): also a TLS client port, with a certificate for 127.0.0.1 made by `openssl`.
    /// @p flood_port (InspIRCd only): also a port whose clients the server disconnects for "Excess Flood" when
    /// they send more than 10 commands at once or more than 2 a second after that (the other ports have no limit).
    explicit IrcServer(IrcServerKind kind, bool tls = false, bool flood_port = false)
        : kind_(kind), tls_(tls), flood_(flood_port) {}
    ~IrcServer() { stop(); }
    IrcServer(const IrcServer&) = delete;
    IrcServer& operator=(const IrcServer&) = delete;

    /// Writes the config, starts the server and waits (up to @p timeout) until a client can register. Tries a few
    /// ports in case another process took the free one first. Returns false (with why()) when it does not come up.
    bool start(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
        const auto binary = irc_server_binary(kind_);
        if (!binary) {
            why_ = std::string(to_string(kind_)) + " is not installed (tools/deps.sh test installs it)";
            return false;
        }
        if (tls_ && !make_certificate()) return false;
        for (int attempt = 0; attempt < 3; ++attempt) {
            port_ = free_loopback_port();
            tls_port_ = tls_ ? free_loopback_port() : 0;
            flood_port_ = flood_ ? free_loopback_port() : 0;
            write_config();
            launch(*binary);
            if (wait_ready(timeout)) return true;
            stop();
        }
        return false;
    }

    /// SIGTERM, then SIGKILL after 5 s. Safe to call twice.
    void stop() {
        if (!child_) return;
        if (child_->running()) {
            ::kill(child_->id(), SIGCONT);  // a paused server cannot act on SIGTERM
            ::kill(child_->id(), SIGTERM);
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
            while (child_->running() && std::chrono::steady_clock::now() < deadline) {
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            if (child_->running()) ::kill(child_->id(), SIGKILL);
        }
        std::error_code ignored;
        child_->wait(ignored);
        child_.reset();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered — a lagging server.
    void pause() {
        if (child_ && child_->running()) ::kill(child_->id(), SIGSTOP);
    }
    /// Lets a paused server go on (SIGCONT).
    void resume() {
        if (child_) ::kill(child_->id(), SIGCONT);
    }

    [[nodiscard]] std::uint16_t port() const { return port_; }
    [[nodiscard]] IrcServerKind kind() const { return kind_; }
    [[nodiscard]] const std::string& why() const { return why_; }
    [[nodiscard]] std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
    /// The TLS port's address (with tls).
    [[nodiscard]] std::string tls_address() const { return "127.0.0.1:" + std::to_string(tls_port_); }
    /// The address of the port with flood limits (with flood_port).
    [[nodiscard]] std::string flood_address() const { return "127.0.0.1:" + std::to_string(flood_port_); }
    /// The server's certificate, to trust as a CA (with tls).
    [[nodiscard]] std::filesystem::path certificate() const { return dir_ / "cert.pem"; }
    /// The server's own output and log, for failure messages.
    [[nodiscard]] std::string output() const {
        return slurp(dir_ / "server.out") + slurp(dir_ / "server.err") + slurp(dir_ / "ircd.log");
    }

    /// A registered test client as @p nick (the server's ready check uses the same).
    std::unique_ptr<IrcTestClient> client(const std::string& nick, const std::string& caps = "") const {
        auto c = std::make_unique<IrcTestClient>(port_);
        if (!c->register_as(nick, std::chrono::seconds(10), caps)) return nullptr;
        return c;
    }

private:
    static std::string slurp(const std::filesystem::path& path) {
        std::ifstream in(path, std::ios::binary);
        std::ostringstream text;
        text << in.rdbuf();
        return text.str();
    }

    static void replace_all(std::string& text, const std::string& what, const std::string& with) {
        for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + with.size())) {
            text.replace(at, what.size(), with);
        }
    }

    void write_config() {
        const auto source = std::filesystem::path(SWITCHBOARD_TEST_SOURCE_DIR) / "tests/support/irc" /
                            (std::string(to_string(kind_)) + ".conf.in");
        std::string text = slurp(source);
        if (text.empty()) throw std::runtime_error("cannot read " + source.string());
        if (tls_) text += slurp(std::filesystem::path(SWITCHBOARD_TEST_SOURCE_DIR) / "tests/support/irc/inspircd-tls.conf.in");
        replace_all(text, "@TLS_PORT@", std::to_string(tls_port_));
        if (flood_) {
            // Connect classes match in order: the flood port's class comes before the unlimited one.
            const std::string flood_class =
                "<bind address=\"127.0.0.1\" port=\"" + std::to_string(flood_port_) + "\" type=\"clients\">\n"
                "<connect allow=\"*\" port=\"" + std::to_string(flood_port_) +
                "\" timeout=\"60\" threshold=\"10\" commandrate=\"2000\" fakelag=\"off\" pingfreq=\"120\" "
                "localmax=\"1000\" globalmax=\"1000\">\n";
            const auto at = text.find("<connect ");
            if (at == std::string::npos) throw std::runtime_error("no <connect> in " + source.string());
            text.insert(at, flood_class);
        }
        replace_all(text, "@RUNDIR@", dir_.path().string());
        replace_all(text, "@PORT@", std::to_string(port_));
        replace_all(text, "@OPER_NAME@", kOperName);
        replace_all(text, "@OPER_PASSWORD@", kOperPassword);
        std::ofstream(dir_ / "server.conf", std::ios::binary) << text;
    }

    bool make_certificate() {
        namespace bp = boost::process;
        if (kind_ != IrcServerKind::inspircd) {
            why_ = "TLS is only set up for InspIRCd";
            return false;
        }
        const auto openssl = bp::search_path("openssl");
        if (openssl.empty()) {
            why_ = "openssl (the command) is not installed";
            return false;
        }
        const int status = bp::system(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                                      "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                                      (dir_ / "key.pem").string(), "-out", (dir_ / "cert.pem").string(),
                                      bp::std_out > bp::null, bp::std_err > (dir_ / "openssl.err").string());
        if (status != 0) why_ = "openssl could not make a certificate: " + slurp(dir_ / "openssl.err");
        return status == 0;
    }

    void launch(const std::filesystem::path& binary) {
        namespace bp = boost::process;
        std::vector<std::string> args;
        if (kind_ == IrcServerKind::inspircd) {
            args = {"--config", (dir_ / "server.conf").string(), "--nofork", "--nolog"};
            if (::geteuid() == 0) args.emplace_back("--runasroot");
        } else {
            args = {"--nodaemon", "--config", (dir_ / "server.conf").string()};
        }
        child_ = std::make_unique<bp::child>(binary.string(), bp::args(args), bp::start_dir(dir_.path().string()),
                                             bp::std_in < bp::null, bp::std_out > (dir_ / "server.out").string(),
                                             bp::std_err > (dir_ / "server.err").string());
    }

    bool wait_ready(std::chrono::milliseconds timeout) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (std::chrono::steady_clock::now() < deadline) {
            if (!child_->running()) {
                why_ = std::string(to_string(kind_)) + " exited at start: " + output();
                return false;
            }
            try {
                if (client("ready" + std::to_string(port_ % 1000))) return true;
            } catch (const std::exception&) {
                // not listening yet
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        why_ = std::string(to_string(kind_)) + " did not answer a registration in time: " + output();
        return false;
    }

    IrcServerKind kind_;
    TempDir dir_;
    bool tls_ = false;
    bool flood_ = false;
    std::uint16_t port_ = 0;
    std::uint16_t tls_port_ = 0;
    std::uint16_t flood_port_ = 0;
    std::unique_ptr<boost::process::child> child_;
    std::string why_;
};

}  // namespace switchboard::testing_support
