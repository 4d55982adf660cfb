-- Journal retention no longer reads the BRIN index events_at (migration 4):
-- once purged pages were vacuumed and reused, each block range kept the
-- minimum of its deleted rows and matched every cutoff, and ranges written
-- since the last vacuum are not summarized at all, so a purge with nothing
-- to delete read most of the table. In a 10M-event table, over four
-- one-day retention cycles, it read 20,618, 41,097, 61,577 and 82,057
-- blocks (0.2 to 0.9 s) per maintenance round and worker. The purge now
-- walks the primary key (xid, seq) from its start, where the oldest events
-- are, and stops at the first recent one: 9 blocks in every cycle.
-- The index is dropped because nothing reads it, and keeping it cost every
-- events row about 1 us more in a table whose freed pages are reused
-- (30,000 single-row inserts in one transaction: median 185 ms with it,
-- 151 ms without, six alternating runs).

-- +goose Up
DROP INDEX compute.events_at;

-- +goose Down
CREATE INDEX events_at ON compute.events USING brin (at);
