-- Telepound schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_init.sql.

CREATE TABLE server_state (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    opaque_record BYTEA NOT NULL,
    ksf           TEXT NOT NULL,
    identity_key  BYTEA NOT NULL,
    kem_key       BYTEA NOT NULL,
    kem_sig       BYTEA NOT NULL,
    key_backup    BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen     BIGINT
);

CREATE TABLE sessions (
    token_hash BYTEA PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES users(name),
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);

CREATE TABLE mailbox (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient  TEXT NOT NULL,
    kind       SMALLINT NOT NULL,
    sender     TEXT NOT NULL,
    msg_id     TEXT NOT NULL,
    server_ts  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    envelope   TEXT NOT NULL
);
CREATE UNIQUE INDEX mailbox_dedupe ON mailbox(recipient, kind, sender, msg_id);
CREATE INDEX mailbox_by_recipient ON mailbox(recipient, seq);
CREATE INDEX mailbox_expiry ON mailbox(expires_at);
