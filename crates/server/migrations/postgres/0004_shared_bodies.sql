-- Shared envelope bodies; see ../sqlite/0004_shared_bodies.sql.
CREATE TABLE bodies (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    envelope TEXT NOT NULL
);
ALTER TABLE mailbox ADD COLUMN body_id BIGINT REFERENCES bodies(id);
CREATE INDEX mailbox_by_body ON mailbox(body_id);
