-- Encrypted file blobs; see ../sqlite/0002_blobs.sql.
CREATE TABLE blobs (
    id         TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    size       BIGINT NOT NULL,
    received   BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX blobs_owner ON blobs(owner);
CREATE INDEX blobs_expiry ON blobs(expires_at);

CREATE TABLE blob_recipients (
    blob_id   TEXT NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    user_name TEXT NOT NULL,
    done      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (blob_id, user_name)
);
