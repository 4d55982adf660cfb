-- Lookups that must not grow with history.
--
-- The unique-key lookup of the active and queued scopes read the key's
-- every job through jobs_unique (queue, unique_key, created DESC), which
-- has no status, and filtered out the finished ones under the key's
-- advisory lock: with 200,000 complete jobs of one key, a unique Submit
-- that created a job took 30-37 ms instead of 0.8-1.1 (three runs of
-- BenchmarkUniqueSubmitWithHistory on the test harness's server); with
-- this index, 0.9-1.4 ms either way. jobs_unique_live holds only the live jobs
-- with a key, so jobs without a key never enter it, and a job with one
-- enters it at its enqueue and at its claim (its completion moves it out
-- at no index cost). jobs_unique still serves UniqueWithinWindow, whose
-- scope is every status.
--
-- List of complete or expired jobs, and List without a status, read the
-- whole table for a queue of five jobs: all 48,055 rows beside 48,050 jobs
-- of another queue, by a seq scan or, in a generic plan, the primary key
-- (or, for complete jobs, every finished row through jobs_finished). No
-- index led from a queue to its finished jobs. jobs_done holds complete and expired jobs by queue,
-- status and id, so a page reads about one page of rows. It costs a job
-- one index insert, at its completion (and another if it expires): a
-- Complete of 1,000 jobs wrote 5,023-5,042 WAL records (517 kB) instead of
-- 4,016-4,036 (423 kB) and hit 14,042-14,892 buffers instead of
-- 12,036-12,886, and a claim-and-complete loop (BenchmarkClaimComplete,
-- batches of 1,000, eight alternating pairs on a shared 2-core machine,
-- the test harness's server)
-- ran at a median of about 0.88 of its speed without it, with pairs from
-- 0.66 to 0.94 and one outlier. An index on (queue, job_id) over every row
-- would cost an insert at each status change, as every one is a non-HOT
-- update.
--
-- Plain CREATE INDEX, as in the earlier migrations: each build holds a
-- SHARE lock on compute.jobs, so writes wait for them.

-- +goose Up
CREATE INDEX jobs_unique_live ON compute.jobs (queue, unique_key, created DESC)
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'in-progress');

CREATE INDEX jobs_done ON compute.jobs (queue, status, job_id)
    WHERE status IN ('complete', 'expired');

-- +goose Down
DROP INDEX compute.jobs_done;
DROP INDEX compute.jobs_unique_live;
