-- Encrypted file blobs. The server stores only ciphertext, streamed to
-- DATA_DIR/blobs; this table tracks uploads and who may fetch them.
CREATE TABLE blobs (
    id         TEXT PRIMARY KEY NOT NULL,
    owner      TEXT NOT NULL,
    size       INTEGER NOT NULL,
    received   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX blobs_owner ON blobs(owner);
CREATE INDEX blobs_expiry ON blobs(expires_at);

-- The recipients a blob was uploaded for; `done` once they have it. The
-- blob is deleted when every recipient is done.
CREATE TABLE blob_recipients (
    blob_id   TEXT NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    user_name TEXT NOT NULL,
    done      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (blob_id, user_name)
);
