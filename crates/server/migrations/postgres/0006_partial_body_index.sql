-- Only group rows point at a body: index those alone. One-to-one rows
-- (body_id NULL, nearly all of them) no longer add an entry to this index
-- on every insert and remove one on every delete. Every lookup by body
-- (the queries here and the foreign key's check) compares `body_id` with
-- `=`, which implies `body_id IS NOT NULL`, so the planner still takes it.
DROP INDEX mailbox_by_body;
CREATE INDEX mailbox_by_body ON mailbox(body_id) WHERE body_id IS NOT NULL;
