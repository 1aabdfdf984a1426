#pragma once
// A directory for strategy tests: channels, users and groups set by the test, and a set of unreachable addresses.
// Implements the SDK's Directory interface and nothing else, as the core's directory does.

#include <switchboard/routing.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace switchboard::testing_support {

class FakeDirectory final : public Directory {
public:
    /// Adds channel @p name at `connection/id` with @p tags; returns its address.
    Address add_channel(const std::string& name, const std::string& connection, const std::string& id,
                        std::vector<std::string> tags = {}) {
        Address address = Address::channel(connection, id);
        channels_.push_back(DirectoryChannel{name, address, std::move(tags)});
        return address;
    }
    /// Adds user @p name at `connection/@id`; returns its address.
    Address add_user(const std::string& name, const std::string& connection, const std::string& id) {
        Address address = Address::user(connection, id);
        users_[name] = address;
        return address;
    }
    /// Sets group @p name (replacing any), with @p members as given.
    void set_group(const std::string& name, std::vector<Recipient> members,
                   DeliveryMode delivery = DeliveryMode::best_effort, OnFailure on_failure = OnFailure::keep) {
        auto group = std::make_shared<DirectoryGroup>();
        group->name = name;
        group->members = std::move(members);
        group->delivery = delivery;
        group->on_failure = on_failure;
        groups_[name] = std::move(group);
    }
    /// Removes group @p name, as a reload that dropped it would.
    void dissolve(const std::string& name) { groups_.erase(name); }
    /// Makes @p address (un)reachable. Not thread-safe: call it while no plan runs.
    void set_reachable(const Address& address, bool reachable) {
        if (reachable) {
            unreachable_.erase(address.to_string());
        } else {
            unreachable_.insert(address.to_string());
        }
    }

    /// How often reachable() was called.
    [[nodiscard]] int reachable_calls() const { return reachable_calls_.load(); }

    [[nodiscard]] std::optional<DirectoryChannel> channel(const std::string& name) const override {
        for (const auto& c : channels_) {
            if (c.name == name) return c;
        }
        return std::nullopt;
    }
    [[nodiscard]] std::optional<Address> user(const std::string& name) const override {
        auto it = users_.find(name);
        if (it == users_.end()) return std::nullopt;
        return it->second;
    }
    [[nodiscard]] std::shared_ptr<const DirectoryGroup> group(const std::string& name) const override {
        auto it = groups_.find(name);
        if (it == groups_.end()) return nullptr;
        return it->second;
    }
    [[nodiscard]] std::vector<DirectoryChannel> channels() const override { return channels_; }
    [[nodiscard]] bool reachable(const Address& address) const override {
        ++reachable_calls_;
        return unreachable_.count(address.to_string()) == 0;
    }

private:
    std::vector<DirectoryChannel> channels_;
    std::map<std::string, Address> users_;
    std::map<std::string, std::shared_ptr<const DirectoryGroup>> groups_;
    std::set<std::string> unreachable_;
    mutable std::atomic<int> reachable_calls_{0};
};

/// The recipient a config member named @p name at @p address resolves to.
inline Recipient member(const std::string& name, const Address& address) { return Recipient{name, address}; }

/// The names of @p recipients, in order.
inline std::vector<std::string> names_of(const std::vector<Recipient>& recipients) {
    std::vector<std::string> names;
    names.reserve(recipients.size());
    for (const auto& r : recipients) names.push_back(r.name);
    return names;
}

/// An envelope of @p kind to @p target, optionally from @p origin.
inline Envelope envelope_to(MessageKind kind, std::string target, std::optional<Address> origin = std::nullopt) {
    Envelope envelope;
    envelope.kind = kind;
    envelope.target = std::move(target);
    envelope.text = "hello";
    envelope.origin = std::move(origin);
    return envelope;
}

}  // namespace switchboard::testing_support

// Prints a plan result in assertions: the recipient count, or the error. (boost's own operator<< wants a printable
// DeliveryPlan.)
template <>
struct Catch::StringMaker<switchboard::Result<switchboard::DeliveryPlan>> {
    static std::string convert(const switchboard::Result<switchboard::DeliveryPlan>& plan) {
        if (!plan) return "error " + plan.error().to_string();
        return "plan of " + std::to_string(plan->recipients.size()) + " recipient(s)";
    }
};
