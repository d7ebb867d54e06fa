-- Telepound schema, SQLite dialect. Keep in step with ../postgres/0001_init.sql.

-- Server-wide secrets and settings (the OPAQUE server setup).
CREATE TABLE server_state (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

-- One row per account. opaque_record is the OPAQUE registration record (the
-- "salted and hashed password"); key_backup is the user's private keys sealed
-- under a key only the password can derive. Neither is readable by the server.
CREATE TABLE users (
    name          TEXT PRIMARY KEY NOT NULL,
    opaque_record BLOB NOT NULL,
    ksf           TEXT NOT NULL,
    identity_key  BLOB NOT NULL,
    kem_key       BLOB NOT NULL,
    kem_sig       BLOB NOT NULL,
    key_backup    BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seen     INTEGER
);

-- Resume tokens, stored as SHA-256 hashes.
CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY NOT NULL,
    user_name  TEXT NOT NULL REFERENCES users(name),
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);

-- The original's `undelivered` table: everything waiting for a recipient, in
-- order. kind 0 = message (envelope holds the sealed envelope JSON),
-- kind 1 = delivery receipt for a message this recipient sent.
-- AUTOINCREMENT so a sequence number is never reused after a delete.
CREATE TABLE mailbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient  TEXT NOT NULL,
    kind       INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    msg_id     TEXT NOT NULL,
    server_ts  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    envelope   TEXT NOT NULL
);
CREATE UNIQUE INDEX mailbox_dedupe ON mailbox(recipient, kind, sender, msg_id);
CREATE INDEX mailbox_by_recipient ON mailbox(recipient, seq);
CREATE INDEX mailbox_expiry ON mailbox(expires_at);
