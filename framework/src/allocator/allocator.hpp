#pragma once
// The process's allocator. The host and the benchmarks link mimalloc, which then serves malloc and operator new for
// the whole process, the plugins it loads included (README, "Dependencies"). A build configured with
// -DSWITCHBOARD_MIMALLOC=OFF, and a sanitizer build, keep glibc's.

#include <cstddef>
#include <string>
#include <string_view>

namespace switchboard::allocator {

/// Settles the allocator's options; the first thing main() does. Left to its defaults, mimalloc gives memory a burst
/// freed back to the system 25 ms later and takes each large block (a fan-out's vectors of 100,000 recipients) from
/// fresh system memory, so the next burst faults it all in again: twice glibc's page faults. A host handles batches
/// milliseconds apart, so it keeps freed memory 5 s, and gives mimalloc a 1 GiB arena to carve blocks from and reuse
/// (mapped read-write, but a page is resident only once touched: the peak resident size stays as with glibc; where
/// the system refuses the mapping, mimalloc goes on without it) — except under strict overcommit accounting
/// (reserves_arena()). MIMALLOC_DECOMMIT_DELAY and MIMALLOC_RESERVE_OS_MEMORY in the environment win.
void configure();

/// Whether configure() reserves the arena, given @p overcommit_memory, the text of /proc/sys/vm/overcommit_memory
/// (empty when it cannot be read): not under strict accounting ("2"), where the whole gibibyte would count against
/// the system's commit limit from the start, touched or not, and leave that much less for every other process.
[[nodiscard]] inline bool reserves_arena(std::string_view overcommit_memory) {
    return overcommit_memory.substr(0, overcommit_memory.find_first_of(" \n")) != "2";
}

/// "mimalloc 2.0.9" when mimalloc serves this process's malloc(), else "glibc malloc" — checked, not assumed: a
/// block from calloc() must lie in mimalloc's heap.
[[nodiscard]] std::string name();

/// Bytes of the blocks allocated and not freed: with mimalloc, on the calling thread's heap; with glibc, in the whole
/// process (mallinfo2). What a benchmark measures before and after building something on its own thread.
[[nodiscard]] std::size_t bytes_in_use();

}  // namespace switchboard::allocator
