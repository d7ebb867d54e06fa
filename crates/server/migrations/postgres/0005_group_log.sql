-- Signed group state records; see ../sqlite/0005_group_log.sql.
CREATE TABLE group_log (
    group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    epoch      BIGINT NOT NULL,
    hash       BYTEA NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (group_name, epoch)
);

ALTER TABLE group_members ADD COLUMN joined_epoch BIGINT;

-- Groups made before signed records have no history a client could verify:
-- clients would refuse to send to them, and no signed change (not even a
-- leave) could build on them. They are dropped so that their names can be
-- taken again; the messages already in mailboxes stay.
DELETE FROM group_members;
DELETE FROM groups;
