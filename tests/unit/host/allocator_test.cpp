// The allocator's set-up (framework/src/allocator): when the host gives mimalloc its arena.

#include "allocator/allocator.hpp"

#include <catch2/catch.hpp>

using switchboard::allocator::reserves_arena;

TEST_CASE("The host reserves mimalloc's arena unless the system accounts overcommit strictly", "[allocator]") {
    CHECK(reserves_arena("0\n"));        // heuristic overcommit, the Linux default
    CHECK(reserves_arena("1\n"));        // always overcommit
    CHECK(reserves_arena(""));           // no /proc/sys/vm/overcommit_memory
    CHECK_FALSE(reserves_arena("2\n"));  // strict: the gibibyte would count against the commit limit at once
    CHECK_FALSE(reserves_arena("2"));
}
