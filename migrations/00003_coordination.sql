-- Coordination across processes: unique jobs, partition keys, per-queue
-- settings (pause, limits, fairness, aging), the rate-limit log, the worker
-- registry and periodic schedules. Every new jobs column is nullable with no
-- default, so adding it rewrites nothing and v1 programs are unaffected.

-- +goose Up
ALTER TABLE compute.jobs
    -- A caller's key for unique jobs: Enqueue skips a job whose key matches
    -- an earlier job of the same queue within the job's unique scope.
    ADD COLUMN unique_key    TEXT,
    -- The tenant (customer, account) a job belongs to, for per-key limits
    -- and round-robin claims.
    ADD COLUMN partition_key TEXT;

-- Unique jobs: an earlier job with the same key, newest first. Partial, so
-- jobs without a key never pay for it.
CREATE INDEX jobs_unique ON compute.jobs (queue, unique_key, created DESC) WHERE unique_key IS NOT NULL;

-- Keyed claims: the queued backlog of one queue by key, then claim order,
-- so the claim can step from key to key and take each key's first jobs.
-- Only queued rows: a claim moves a row out of it at no index cost.
CREATE INDEX jobs_partition ON compute.jobs (queue, partition_key, priority, run_at) WHERE status = 'queued';

-- Retention deletes expired jobs by last access; no other index holds them.
CREATE INDEX jobs_expired ON compute.jobs (last_accessed) WHERE status = 'expired';

-- Settings of a queue for the whole cluster. A queue with no row, or with
-- every limit NULL, fair off and not paused, takes the fast claim.
CREATE TABLE compute.queues (
    name            VARCHAR(32) PRIMARY KEY,
    paused          BOOLEAN     NOT NULL DEFAULT false,
    -- Running jobs of the queue across all workers.
    max_running     INTEGER CHECK (max_running > 0),
    -- Running jobs per partition key across all workers.
    key_max_running INTEGER CHECK (key_max_running > 0),
    -- Job starts per rate_period, for the queue and per key.
    rate_limit      INTEGER CHECK (rate_limit > 0),
    key_rate_limit  INTEGER CHECK (key_rate_limit > 0),
    rate_period     INTERVAL CHECK (rate_period > interval '0'),
    -- Claim round-robin across partition keys.
    fair            BOOLEAN     NOT NULL DEFAULT false,
    -- Where the last keyed claim stopped, so the next one goes on from there.
    fair_cursor     TEXT,
    -- Queued jobs waiting longer than this move up one priority step per
    -- period (down to 0); aged_at is when that last ran.
    age_after       INTERVAL CHECK (age_after > interval '0'),
    aged_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((rate_limit IS NULL AND key_rate_limit IS NULL) OR rate_period IS NOT NULL)
);

-- Job starts of rate-limited queues, one row per claimed job, kept for one
-- rate period: an exact sliding window that every worker reads.
CREATE TABLE compute.starts (
    queue         VARCHAR(32) NOT NULL,
    partition_key TEXT,
    at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX starts_queue ON compute.starts (queue, at);

-- Workers that are running, refreshed by each worker's heartbeat, so an
-- operator (and Explain) can tell whether anyone serves a queue.
CREATE TABLE compute.workers (
    worker  TEXT        PRIMARY KEY,
    queues  VARCHAR(32)[] NOT NULL,
    started TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Periodic schedules: the last tick enqueued, for bounded catch-up after a
-- time when no worker ran.
CREATE TABLE compute.periodic (
    name      VARCHAR(64) PRIMARY KEY,
    last_tick TIMESTAMPTZ NOT NULL
);

-- +goose Down
DROP TABLE compute.periodic;
DROP TABLE compute.workers;
DROP TABLE compute.starts;
DROP TABLE compute.queues;
DROP INDEX compute.jobs_expired;
DROP INDEX compute.jobs_partition;
DROP INDEX compute.jobs_unique;
ALTER TABLE compute.jobs
    DROP COLUMN partition_key,
    DROP COLUMN unique_key;
