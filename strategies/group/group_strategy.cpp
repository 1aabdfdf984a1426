#include "group_strategy.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <utility>

namespace switchboard::strategies {
namespace {

// Deduplication of a group's addresses in one pass. Open addressing with linear probing over one array of
// {member index, hash tag} slots: a 100,000-member group costs one allocation, not one per member, and a probe
// only looks at a member's strings when the 32-bit tags match. Load factor at most 1/2. For a large group the
// table outgrows the cache, so hashes are computed a few members ahead and their slots prefetched.
class UniqueAddresses {
public:
    explicit UniqueAddresses(const std::vector<Recipient>& members) : members_(members) {
        const std::size_t capacity = std::bit_ceil(std::max<std::size_t>(16, members.size() * 2));
        slots_.assign(capacity, Slot{});
        mask_ = capacity - 1;
    }

    // Calls visit(member) for each member whose address was not seen before, in order.
    template <class Visit>
    void for_each(Visit&& visit) {
        constexpr std::size_t kAhead = 8;
        std::uint64_t ahead[kAhead] = {};
        const std::size_t count = members_.size();
        for (std::size_t i = 0; i < count && i < kAhead; ++i) ahead[i] = hash_and_prefetch(i);
        for (std::size_t i = 0; i < count; ++i) {
            const std::uint64_t hash = ahead[i % kAhead];
            if (i + kAhead < count) ahead[i % kAhead] = hash_and_prefetch(i + kAhead);
            if (insert(i, hash)) visit(members_[i]);
        }
    }

private:
    struct Slot {
        std::uint32_t index_plus_one = 0;  // 0: empty
        std::uint32_t tag = 0;
    };

    std::uint64_t hash_and_prefetch(std::size_t index) const noexcept {
        const std::uint64_t h = hash_address(members_[index].address);
#if defined(__GNUC__) || defined(__clang__)
        __builtin_prefetch(&slots_[h & mask_]);
#endif
        return h;
    }

    // Adds members[index]'s address (whose hash is @p h); false if an equal address is already in.
    bool insert(std::size_t index, std::uint64_t h) {
        const Address& address = members_[index].address;
        const auto tag = static_cast<std::uint32_t>(h >> 32);
        for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
            Slot& slot = slots_[i];
            if (slot.index_plus_one == 0) {
                slot = Slot{static_cast<std::uint32_t>(index + 1), tag};
                return true;
            }
            if (slot.tag == tag && members_[slot.index_plus_one - 1].address == address) return false;
        }
    }


    const std::vector<Recipient>& members_;
    std::vector<Slot> slots_;
    std::size_t mask_ = 0;
};

bool is_origin(const Envelope& envelope, const Address& address) {
    return envelope.origin && *envelope.origin == address;
}

}  // namespace

Result<DeliveryPlan> GroupStrategy::plan(const Envelope& envelope, const Directory& directory) {
    DeliveryPlan plan;
    plan.batch_size = batch_size_;

    const std::shared_ptr<const DirectoryGroup> group = directory.group(envelope.target);
    if (!group) {
        if (auto channel = directory.channel(envelope.target)) {
            if (!is_origin(envelope, channel->address)) {
                plan.recipients.push_back(Recipient{std::move(channel->name), std::move(channel->address)});
            }
            return plan;
        }
        return fail("group_dissolved", "group '" + envelope.target +
                                           "' does not exist (any more), and no channel has that name: check the "
                                           "target, and the groups: and channels: sections of the config (a reload "
                                           "may have removed it)");
    }

    plan.mode = group->delivery;
    plan.on_failure = group->on_failure;
    const std::vector<Recipient>& members = group->members;
    plan.recipients.reserve(members.size());
    UniqueAddresses(members).for_each([&](const Recipient& member) {
        if (!is_origin(envelope, member.address)) plan.recipients.push_back(member);
    });
    return plan;
}

ConfigSchema GroupStrategy::schema() {
    return ConfigSchema{{
        {"batch_size", ValueType::integer, false, std::to_string(kDefaultBatchSize),
         "Recipients the delivery engine sends per batch (1 to " + std::to_string(kMaxBatchSize) + ")."},
    }};
}

std::vector<ConfigProblem> GroupStrategy::check_config(const PluginConfig& config) {
    const std::int64_t value = config.get_int("batch_size", kDefaultBatchSize);
    if (value < 1 || value > kMaxBatchSize) {
        return {ConfigProblem{"batch_size", "batch_size is " + std::to_string(value) + ", but must be between 1 and " +
                                                std::to_string(kMaxBatchSize)}};
    }
    return {};
}

std::uint32_t GroupStrategy::batch_size_from(const PluginConfig& config) {
    if (auto problems = check_config(config); !problems.empty()) {
        throw ErrorException(fail("bad_config", problems.front().message));
    }
    return static_cast<std::uint32_t>(config.get_int("batch_size", kDefaultBatchSize));
}

}  // namespace switchboard::strategies
