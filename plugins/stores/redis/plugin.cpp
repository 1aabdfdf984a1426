// Exports the redis store as the `redis` plugin; the logic lives in redis_store.cpp.
#include "redis_store.hpp"

SWITCHBOARD_PLUGIN(switchboard::stores::RedisStore, "redis", "1.0.0",
                   "Redis store (hiredis, Lua scripts, pipelined): dedup set, cursors, outbox, key-value, message log "
                   "shared by several hosts",
                   switchboard::stores::RedisStore::config_schema())
