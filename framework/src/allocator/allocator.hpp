#pragma once
// The process's allocator. The host and the benchmarks link mimalloc, which then serves malloc and operator new for
// the whole process, the plugins it loads included (README, "Dependencies"). A build configured with
// -DSWITCHBOARD_MIMALLOC=OFF, and a sanitizer build, keep glibc's.

#include <cstddef>
#include <string>

namespace switchboard::allocator {

/// "mimalloc 2.0.9" when mimalloc serves this process's malloc(), else "glibc malloc" — checked, not assumed: a
/// block from calloc() must lie in mimalloc's heap.
[[nodiscard]] std::string name();

/// Bytes of the blocks allocated and not freed: with mimalloc, on the calling thread's heap; with glibc, in the whole
/// process (mallinfo2). What a benchmark measures before and after building something on its own thread.
[[nodiscard]] std::size_t bytes_in_use();

}  // namespace switchboard::allocator
