-- One-to-one envelopes are kept in the envelope log beside the database
-- (src/store/envlog.rs), written once instead of to the WAL and again at
-- the checkpoint. A row whose envelope is there has an empty envelope
-- column and says where it is: segment, byte offset and length. NULL for
-- rows that hold their envelope themselves (receipts, rows written before
-- this migration) or take it from bodies.
ALTER TABLE mailbox ADD COLUMN log_seg INTEGER;
ALTER TABLE mailbox ADD COLUMN log_off INTEGER;
ALTER TABLE mailbox ADD COLUMN log_len INTEGER;
