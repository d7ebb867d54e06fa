-- Groups, kept by the server, which enforces who may add, remove and send.
CREATE TABLE groups (
    name       TEXT PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL
);

-- id orders members by how long they have been in the group.
CREATE TABLE group_members (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    user_name  TEXT NOT NULL,
    role       INTEGER NOT NULL,
    joined_at  INTEGER NOT NULL,
    UNIQUE (group_name, user_name)
);
CREATE INDEX group_members_by_user ON group_members(user_name);
