#pragma once
// The sqlite store's schema version 1 as it shipped (plugins/stores/sqlite, before the block tables of version 2): a
// store written by that release has these tables, with `PRAGMA user_version = 1`. The migration test fills them with
// a row in each; store_bench with a busy window's worth, to time the migration.

namespace switchboard::testing_support {

inline constexpr const char* kSqliteVersion1Schema = R"sql(
CREATE TABLE dedup (connection TEXT NOT NULL, channel TEXT NOT NULL, message_id TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL, PRIMARY KEY (connection, channel, message_id)) WITHOUT ROWID;
CREATE TABLE cursors (connection TEXT NOT NULL, channel TEXT NOT NULL, message_id TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL, PRIMARY KEY (connection, channel)) WITHOUT ROWID;
CREATE TABLE connection_state (connection TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (connection, key)) WITHOUT ROWID;
CREATE TABLE outbox (plan_id TEXT NOT NULL, recipient TEXT NOT NULL, text TEXT NOT NULL, reply_to TEXT,
    state TEXT NOT NULL, sent_message_id TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', created_ms INTEGER NOT NULL, PRIMARY KEY (plan_id, recipient));
CREATE INDEX outbox_pending ON outbox (created_ms) WHERE state = 'pending';
CREATE TABLE kv (space TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (space, key))
    WITHOUT ROWID;
CREATE TABLE messages (connection TEXT NOT NULL, channel TEXT NOT NULL, id TEXT NOT NULL, author_id TEXT NOT NULL,
    author_name TEXT NOT NULL, author_is_bot INTEGER NOT NULL, text TEXT NOT NULL, timestamp_ms INTEGER NOT NULL,
    kind TEXT NOT NULL, reply_to TEXT, recovered INTEGER NOT NULL, raw TEXT NOT NULL);
CREATE INDEX messages_by_channel_time ON messages (connection, channel, timestamp_ms);
PRAGMA user_version = 1;
)sql";

}  // namespace switchboard::testing_support
