#include "allocator/allocator.hpp"

#include <malloc.h>

#include <cstdlib>
#include <fstream>

#if SWITCHBOARD_WITH_MIMALLOC
#include <mimalloc.h>
#endif

namespace switchboard::allocator {
namespace {

#if SWITCHBOARD_WITH_MIMALLOC
// mimalloc takes malloc() over only if the program's link order puts it before libc.
bool malloc_is_mimalloc() {
    void* block = std::calloc(1, 16);  // calloc: zeroed, as mi_is_in_heap_region() is declared to read it
    const bool ours = block != nullptr && mi_is_in_heap_region(block);
    std::free(block);
    return ours;
}

bool add_area(const mi_heap_t* /*heap*/, const mi_heap_area_t* area, void* /*block*/, std::size_t /*size*/,
              void* total) {
    *static_cast<std::size_t*>(total) += area->used * area->block_size;
    return true;
}

// The text of /proc/sys/vm/overcommit_memory, or "" where there is none.
std::string overcommit_mode() {
    std::ifstream file("/proc/sys/vm/overcommit_memory");
    std::string mode;
    std::getline(file, mode);
    return mode;
}
#endif

}  // namespace

void configure() {
#if SWITCHBOARD_WITH_MIMALLOC
    if (std::getenv("MIMALLOC_DECOMMIT_DELAY") == nullptr) mi_option_set(mi_option_decommit_delay, 5000);
    if (std::getenv("MIMALLOC_RESERVE_OS_MEMORY") == nullptr && reserves_arena(overcommit_mode())) {
        static_cast<void>(mi_reserve_os_memory(std::size_t{1} << 30, true, false));  // mimalloc copes without it
    }
#endif
}

std::string name() {
#if SWITCHBOARD_WITH_MIMALLOC
    if (malloc_is_mimalloc()) {
        const int version = mi_version();  // 209 for 2.0.9
        return "mimalloc " + std::to_string(version / 100) + "." + std::to_string(version % 100 / 10) + "." +
               std::to_string(version % 10);
    }
#endif
    return "glibc malloc";
}

std::size_t bytes_in_use() {
#if SWITCHBOARD_WITH_MIMALLOC
    if (malloc_is_mimalloc()) {
        std::size_t total = 0;
        mi_heap_visit_blocks(mi_heap_get_default(), false, add_area, &total);
        return total;
    }
#endif
    const struct mallinfo2 info = ::mallinfo2();
    return info.uordblks + info.hblkhd;
}

}  // namespace switchboard::allocator
