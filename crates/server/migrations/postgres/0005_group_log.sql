-- Signed group state records; see ../sqlite/0005_group_log.sql.
CREATE TABLE group_log (
    group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    epoch      BIGINT NOT NULL,
    hash       BYTEA NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (group_name, epoch)
);

ALTER TABLE group_members ADD COLUMN joined_epoch BIGINT;
