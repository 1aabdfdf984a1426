// Exports the SQLite store as the `sqlite` plugin; the logic lives in sqlite_store.cpp.
#include "sqlite_store.hpp"

SWITCHBOARD_PLUGIN(switchboard::stores::SqliteStore, "sqlite", "1.0.0",
                   "Embedded SQLite store (WAL, group commit): dedup set, cursors, outbox, key-value, message log",
                   switchboard::stores::SqliteStore::config_schema())
