-- The two mailbox indexes ordered by recipient move into the server's
-- memory (src/store/mbindex.rs), built from the table when the store opens:
-- with a batch's messages spread over many recipients, every commit wrote a
-- page per recipient of each to the WAL. The server checks for duplicates
-- itself; only it writes this table (the database's lock keeps any other
-- process out). mailbox_expiry, ordered by time, stays.
DROP INDEX mailbox_dedupe;
DROP INDEX mailbox_by_recipient;
