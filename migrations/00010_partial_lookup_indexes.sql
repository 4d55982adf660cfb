-- Lookups that must not grow with history.
--
-- The unique-key lookup of the active and queued scopes read the key's
-- every job through jobs_unique (queue, unique_key, created DESC), which
-- has no status, and filtered out the finished ones under the key's
-- advisory lock: with 200,000 complete jobs of one key, a unique Submit
-- that created a job took 30-37 ms instead of 0.8-1.1 (three runs of
-- BenchmarkUniqueSubmitWithHistory on a server with fsync on); with this
-- index, 0.9-1.4 ms either way. jobs_unique_live holds only the live jobs
-- with a key, so jobs without a key never enter it, and a job with one
-- enters it at its enqueue and at its claim (its completion moves it out
-- at no index cost). jobs_unique still serves UniqueWithinWindow, whose
-- scope is every status.
--
-- Plain CREATE INDEX, as in the earlier migrations: the build holds a
-- SHARE lock on compute.jobs, so writes wait for it.

-- +goose Up
CREATE INDEX jobs_unique_live ON compute.jobs (queue, unique_key, created DESC)
    WHERE unique_key IS NOT NULL AND status IN ('queued', 'in-progress');

-- +goose Down
DROP INDEX compute.jobs_unique_live;
