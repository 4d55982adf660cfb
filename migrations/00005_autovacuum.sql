-- Vacuum compute.jobs sooner and without throttling. Every job leaves two or
-- three dead row versions (claim, heartbeats, completion), so at thousands
-- of jobs per second the table is always past the default thresholds; what
-- limits vacuum is its cost delay. Measured in a 3-minute soak at about
-- 11,000 jobs/s (issue 4): each autovacuum of the 700 MB table took 4.7 s
-- instead of 31-34 s, the peak of dead tuples fell from 2.9M to 2.1M and the
-- heap held 12% fewer bytes per live row; throughput did not change beyond
-- the noise. No fillfactor: 70 made 43% of heartbeats HOT but gained no
-- throughput and cost 16% more heap. To undo on a server where unthrottled
-- vacuum I/O hurts others: ALTER TABLE compute.jobs RESET (...).

-- +goose Up
ALTER TABLE compute.jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- +goose Down
ALTER TABLE compute.jobs RESET (
    autovacuum_vacuum_scale_factor,
    autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor,
    autovacuum_analyze_scale_factor,
    autovacuum_vacuum_cost_delay
);
