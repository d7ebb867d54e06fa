-- Groups; see ../sqlite/0003_groups.sql.
CREATE TABLE groups (
    name       TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    user_name  TEXT NOT NULL,
    role       SMALLINT NOT NULL,
    joined_at  BIGINT NOT NULL,
    UNIQUE (group_name, user_name)
);
CREATE INDEX group_members_by_user ON group_members(user_name);
