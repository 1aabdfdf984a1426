#pragma once
/// @file version.hpp
/// @brief Framework version, plugin ABI version and the build stamp that both sides of the plugin boundary compare.

#include <boost/version.hpp>

#include <cstdint>

/// @brief Framework version, as a string literal.
#define SWITCHBOARD_VERSION_STRING "0.1.0"

/// @brief Plugin ABI version. Bumped on purpose whenever an SDK type or interface changes layout or meaning.
///
/// 3: ConnectorHost gained rate_limits(), load_state() and save_state() (its vtable changed), and rate_limit.hpp
/// (RateLimitScheduler and its types) joined the SDK.
/// 4: ConnectorHost gained is_processed() and RecoveryContext gained load_state() (both vtables changed).
/// 5: Store gained leases() and queues() (its vtable changed), and store.hpp gained LeaseStore, Lease,
/// SharedQueues and QueueItem.
/// 6: Store gained are_processed(), outbox_add_plan() and outbox_update_plans() (its vtable changed), and store.hpp
/// gained OutboxPlanAdd, OutboxRecipient, OutboxPlanUpdate and OutboxRecipientUpdate.
#define SWITCHBOARD_ABI_VERSION 6

#define SWITCHBOARD_DETAIL_STR2(x) #x
#define SWITCHBOARD_DETAIL_STR(x) SWITCHBOARD_DETAIL_STR2(x)

#if defined(__clang__)
#define SWITCHBOARD_DETAIL_COMPILER "clang-" __clang_version__
#elif defined(__GNUC__)
#define SWITCHBOARD_DETAIL_COMPILER \
    "gcc-" SWITCHBOARD_DETAIL_STR(__GNUC__) "." SWITCHBOARD_DETAIL_STR(__GNUC_MINOR__)
#elif defined(_MSC_VER)
#define SWITCHBOARD_DETAIL_COMPILER "msvc-" SWITCHBOARD_DETAIL_STR(_MSC_VER)
#else
#define SWITCHBOARD_DETAIL_COMPILER "unknown-compiler"
#endif

#if defined(_GLIBCXX_RELEASE)
#define SWITCHBOARD_DETAIL_STDLIB "libstdc++-" SWITCHBOARD_DETAIL_STR(_GLIBCXX_RELEASE)
#elif defined(_LIBCPP_VERSION)
#define SWITCHBOARD_DETAIL_STDLIB "libc++-" SWITCHBOARD_DETAIL_STR(_LIBCPP_VERSION)
#elif defined(_MSVC_STL_VERSION)
#define SWITCHBOARD_DETAIL_STDLIB "msvcstl-" SWITCHBOARD_DETAIL_STR(_MSVC_STL_VERSION)
#else
#define SWITCHBOARD_DETAIL_STDLIB "unknown-stdlib"
#endif

#if defined(_GLIBCXX_USE_CXX11_ABI)
#define SWITCHBOARD_DETAIL_CXX11_ABI "cxx11abi-" SWITCHBOARD_DETAIL_STR(_GLIBCXX_USE_CXX11_ABI)
#else
#define SWITCHBOARD_DETAIL_CXX11_ABI "cxx11abi-n/a"
#endif

/// @brief The build stamp: compiler, standard library, Boost, framework and ABI versions. The host refuses a plugin
/// whose stamp differs from its own, because SDK types (std::string, std::vector, ...) cross the boundary.
#define SWITCHBOARD_BUILD_STAMP                                                                           \
    SWITCHBOARD_DETAIL_COMPILER ";" SWITCHBOARD_DETAIL_STDLIB ";" SWITCHBOARD_DETAIL_CXX11_ABI            \
                                ";boost-" SWITCHBOARD_DETAIL_STR(BOOST_VERSION) ";switchboard-" SWITCHBOARD_VERSION_STRING \
                                ";abi-" SWITCHBOARD_DETAIL_STR(SWITCHBOARD_ABI_VERSION)

namespace switchboard {

/// @brief The plugin ABI version this SDK was built with.
inline constexpr std::uint32_t kAbiVersion = SWITCHBOARD_ABI_VERSION;

/// @brief The framework version this SDK belongs to.
inline constexpr const char* kFrameworkVersion = SWITCHBOARD_VERSION_STRING;

/// @brief The build stamp of the translation unit that includes this header.
inline constexpr const char* kBuildStamp = SWITCHBOARD_BUILD_STAMP;

}  // namespace switchboard
