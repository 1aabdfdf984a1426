#pragma once
// The directory: the config's logical channels, users and groups mapped to addresses, with group member lists
// cached in memory, and what the running connections report (up or down, who is present).

#include "config/config.hpp"

#include <switchboard/connector.hpp>
#include <switchboard/routing.hpp>

#include <boost/unordered/unordered_flat_map.hpp>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace switchboard::routing {

class ConfigDirectory final : public Directory {
public:
    explicit ConfigDirectory(const config::Config& config);

    std::optional<DirectoryChannel> channel(const std::string& name) const override;
    std::optional<Address> user(const std::string& name) const override;
    std::shared_ptr<const DirectoryGroup> group(const std::string& name) const override;
    std::vector<DirectoryChannel> channels() const override;
    bool reachable(const Address& address) const override;

    /// Replaces channels, users and groups with @p config's (a reload); drops every cached member list.
    void reload(const config::Config& config);

    /// Marks connection @p name up (connected or resumed) or down, with what its connector can do.
    void set_connection(const std::string& name, bool up, const ConnectorCapabilities& capabilities);

    /// Records who is present in @p channel of @p connection; drops the cached member lists.
    void set_members(const std::string& connection, const std::string& channel, std::vector<std::string> user_ids);

    /// The logical name of the channel with platform id @p id on @p connection, if the config names it.
    [[nodiscard]] std::optional<std::string> channel_name(const std::string& connection, const std::string& id) const;

    /// How many group member lists are cached now (for tests and status).
    [[nodiscard]] std::size_t cached_groups() const;

private:
    struct ConnectionState {
        bool up = false;
        ConnectorCapabilities capabilities;
        bool reports_members = false;
        std::map<std::string, std::set<std::string>> members;  // channel id → user ids present
    };

    void load(const config::Config& config);
    std::shared_ptr<const DirectoryGroup> resolve(const config::GroupConfig& group) const;

    mutable std::shared_mutex mutex_;
    std::vector<DirectoryChannel> channels_;
    std::unordered_map<std::string, std::size_t> channel_index_;                // name → channels_ index
    std::map<std::pair<std::string, std::string>, std::string> channel_names_;  // (connection, id) → name
    // Open addressing: every private message looks a user up, and a node-based map costs a cache miss per hop among
    // 100,000 users (bench/README.md).
    boost::unordered_flat_map<std::string, Address> users_;
    std::unordered_map<std::string, config::GroupConfig> groups_;
    mutable std::unordered_map<std::string, std::shared_ptr<const DirectoryGroup>> group_cache_;
    std::unordered_map<std::string, ConnectionState> connections_;
};

}  // namespace switchboard::routing
