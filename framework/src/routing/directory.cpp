#include "routing/directory.hpp"

#include <boost/unordered/unordered_flat_set.hpp>
#include <cstdint>
#include <mutex>

namespace switchboard::routing {

ConfigDirectory::ConfigDirectory(const config::Config& config) { load(config); }

void ConfigDirectory::load(const config::Config& config) {
    channels_.clear();
    channel_index_.clear();
    channel_names_.clear();
    users_.clear();
    groups_.clear();
    group_cache_.clear();
    for (const auto& c : config.channels) {
        channel_index_[c.name] = channels_.size();
        channel_names_[{c.connection, c.id}] = c.name;
        channels_.push_back(DirectoryChannel{c.name, Address::channel(c.connection, c.id), c.tags});
    }
    for (const auto& u : config.users) users_[u.name] = Address::user(u.connection, u.id);
    for (const auto& g : config.groups) groups_[g.name] = g;
    for (const auto& c : config.connections) connections_.try_emplace(c.name);
}

void ConfigDirectory::reload(const config::Config& config) {
    std::unique_lock lock(mutex_);
    load(config);
}

std::optional<DirectoryChannel> ConfigDirectory::channel(const std::string& name) const {
    std::shared_lock lock(mutex_);
    auto it = channel_index_.find(name);
    if (it == channel_index_.end()) return std::nullopt;
    return channels_[it->second];
}

std::optional<Address> ConfigDirectory::user(const std::string& name) const {
    std::shared_lock lock(mutex_);
    auto it = users_.find(name);
    if (it == users_.end()) return std::nullopt;
    return it->second;
}

std::shared_ptr<const DirectoryGroup> ConfigDirectory::group(const std::string& name) const {
    {
        std::shared_lock lock(mutex_);
        if (auto cached = group_cache_.find(name); cached != group_cache_.end()) return cached->second;
    }
    std::unique_lock lock(mutex_);
    if (auto cached = group_cache_.find(name); cached != group_cache_.end()) return cached->second;
    auto config = groups_.find(name);
    if (config == groups_.end()) return nullptr;
    auto resolved = resolve(config->second);
    group_cache_[name] = resolved;
    return resolved;
}

// Called with the mutex held.
std::shared_ptr<const DirectoryGroup> ConfigDirectory::resolve(const config::GroupConfig& group) const {
    auto resolved = std::make_shared<DirectoryGroup>();
    resolved->name = group.name;
    resolved->delivery = group.delivery;
    resolved->on_failure = group.on_failure;
    std::vector<Recipient>& members = resolved->members;
    members.reserve(group.members.size());
    // Two channel names may be given to one platform channel: each address is listed once, under the first member
    // naming it, here once per membership change rather than by the strategy on every send.
    const auto hash = [&members](std::uint32_t i) {
        return static_cast<std::size_t>(hash_address(members[i].address));
    };
    const auto equal = [&members](std::uint32_t a, std::uint32_t b) {
        return members[a].address == members[b].address;
    };
    boost::unordered_flat_set<std::uint32_t, decltype(hash), decltype(equal)> seen(group.members.size(), hash, equal);
    for (const std::string& member : group.members) {
        if (auto c = channel_index_.find(member); c != channel_index_.end()) {
            members.push_back(Recipient{member, channels_[c->second].address});
        } else if (auto u = users_.find(member); u != users_.end()) {
            members.push_back(Recipient{member, u->second});
        } else {
            continue;  // the config loader refuses members that name nothing
        }
        if (!seen.insert(static_cast<std::uint32_t>(members.size() - 1)).second) members.pop_back();
    }
    return resolved;
}

std::vector<DirectoryChannel> ConfigDirectory::channels() const {
    std::shared_lock lock(mutex_);
    return channels_;
}

bool ConfigDirectory::reachable(const Address& address) const {
    std::shared_lock lock(mutex_);
    auto it = connections_.find(address.connection);
    if (it == connections_.end() || !it->second.up) return false;
    const ConnectionState& state = it->second;
    if (!address.is_user) return true;
    if (!state.capabilities.private_messages) return false;
    if (!state.reports_members) return true;
    for (const auto& [channel, present] : state.members) {
        if (present.count(address.target) != 0) return true;
    }
    return false;
}

void ConfigDirectory::set_connection(const std::string& name, bool up, const ConnectorCapabilities& capabilities) {
    std::unique_lock lock(mutex_);
    ConnectionState& state = connections_[name];
    state.up = up;
    state.capabilities = capabilities;
}

void ConfigDirectory::set_members(const std::string& connection, const std::string& channel,
                                  std::vector<std::string> user_ids) {
    std::unique_lock lock(mutex_);
    ConnectionState& state = connections_[connection];
    state.reports_members = true;
    state.members[channel] = std::set<std::string>(std::make_move_iterator(user_ids.begin()),
                                                   std::make_move_iterator(user_ids.end()));
    group_cache_.clear();
}

std::optional<std::string> ConfigDirectory::channel_name(const std::string& connection, const std::string& id) const {
    std::shared_lock lock(mutex_);
    auto it = channel_names_.find({connection, id});
    if (it == channel_names_.end()) return std::nullopt;
    return it->second;
}

std::size_t ConfigDirectory::cached_groups() const {
    std::shared_lock lock(mutex_);
    return group_cache_.size();
}

}  // namespace switchboard::routing
