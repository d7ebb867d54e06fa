-- A group message is one envelope for every member: store it once. Rows of
-- mailbox with body_id set take their envelope from bodies (their own
-- envelope column is empty); a body goes with the last row pointing at it.
CREATE TABLE bodies (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    envelope TEXT NOT NULL
);
ALTER TABLE mailbox ADD COLUMN body_id INTEGER REFERENCES bodies(id);
CREATE INDEX mailbox_by_body ON mailbox(body_id);
