-- Signed group state records (docs/PROTOCOL.md, "Groups"): each membership
-- change as its owner or admin signed it, chained by hash. The server checks
-- each against the change it applies and serves the chain to members, who
-- verify it; the server cannot write a valid record itself. The log goes
-- with its group.
CREATE TABLE group_log (
    group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    epoch      INTEGER NOT NULL,
    hash       BLOB NOT NULL,
    record     TEXT NOT NULL,
    PRIMARY KEY (group_name, epoch)
);

-- The epoch of the record that (last) added each member: a member's client
-- without a verified state of its own is served the chain from there.
-- NULL for members of groups that predate signed records.
ALTER TABLE group_members ADD COLUMN joined_epoch INTEGER;

-- Groups made before signed records have no history a client could verify:
-- clients would refuse to send to them, and no signed change (not even a
-- leave) could build on them. They are dropped so that their names can be
-- taken again; the messages already in mailboxes stay.
DELETE FROM group_members;
DELETE FROM groups;
