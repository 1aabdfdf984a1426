// Exports the memory store as the `memory` plugin; the logic lives in memory_store.cpp.
#include "memory_store.hpp"

SWITCHBOARD_PLUGIN(switchboard::stores::MemoryStore, "memory", "1.0.0",
                   "Keeps dedup set, cursors, outbox, key-value space and message log in memory (tests, benches)",
                   switchboard::ConfigSchema{})
