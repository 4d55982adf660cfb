-- What the engine needs on top of v1. Every new column has a default, so a
-- program that inserts only the v1 columns still submits a job a worker runs.
-- now() is STABLE, not volatile, so ADD COLUMN ... DEFAULT now() stores the
-- default in the catalog and does not rewrite an existing table.

-- +goose Up
ALTER TABLE compute.jobs
    -- Smaller runs first, as in most peers; 0 is the default.
    ADD COLUMN priority      SMALLINT    NOT NULL DEFAULT 0,
    -- When the job may run; the claim only takes rows whose run_at has come.
    ADD COLUMN run_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Attempts started so far. Incremented by every claim and never lowered,
    -- so (job_id, attempt, worker) is a fencing token for the holder.
    ADD COLUMN attempt       INTEGER     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    ADD COLUMN max_attempts  INTEGER     NOT NULL DEFAULT 25 CHECK (max_attempts > 0),
    -- Identity of the worker that holds (or last held) the job.
    ADD COLUMN worker        TEXT,
    -- The holder's lease; past it, RequeueStale hands the job back.
    ADD COLUMN lease_expires TIMESTAMPTZ,
    -- One object per failed attempt: {"attempt", "at", "error"}.
    ADD COLUMN errors        JSONB       NOT NULL DEFAULT '[]';

-- The claim: queued rows of one queue in (priority, run_at) order. Partial, so
-- it holds only the queued backlog and finished rows never slow the claim.
CREATE INDEX jobs_claim ON compute.jobs (queue, priority, run_at) WHERE status = 'queued';

-- RequeueStale and "who holds what": only in-progress rows, few at any time.
-- Keyed by worker, not lease_expires, so a heartbeat (which changes only
-- lease_expires) touches no indexed column and can be a HOT update.
CREATE INDEX jobs_running ON compute.jobs (worker) WHERE status = 'in-progress';

-- Expire: finished rows by last access.
CREATE INDEX jobs_finished ON compute.jobs (last_accessed) WHERE status IN ('complete', 'failed');

-- List of failed jobs, the listing operators need most. There is no index
-- over all statuses: every state change is a non-HOT update that inserts
-- into every full index, and one on (queue, status, job_id) cost a fifth of
-- the claim-and-complete throughput. The other statuses list through the
-- primary key or the partial indexes above.
CREATE INDEX jobs_failed ON compute.jobs (queue, job_id) WHERE status = 'failed';

-- Wake-ups: one pg_notify per statement and queue (not per row), with the queue
-- name as payload. Every notifying commit takes a cluster-wide lock, so the
-- trigger is cheap per statement and can be switched off through compute.meta
-- ('notify' = 'off') for very high insert rates; workers poll regardless.
-- Only INSERT: an UPDATE trigger with a transition table would copy every
-- claimed and completed row; the library notifies its own requeues itself.
-- +goose StatementBegin
CREATE FUNCTION compute.notify_queued() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    q text;
BEGIN
    IF EXISTS (SELECT 1 FROM compute.meta WHERE key = 'notify' AND value = 'off') THEN
        RETURN NULL;
    END IF;
    FOR q IN SELECT DISTINCT n.queue FROM new_rows n WHERE n.status = 'queued' LOOP
        PERFORM pg_notify('compute_jobs', q);
    END LOOP;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER jobs_notify_insert
    AFTER INSERT ON compute.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION compute.notify_queued();

-- +goose Down
DROP TRIGGER jobs_notify_insert ON compute.jobs;
DROP FUNCTION compute.notify_queued();
DROP INDEX compute.jobs_failed;
DROP INDEX compute.jobs_finished;
DROP INDEX compute.jobs_running;
DROP INDEX compute.jobs_claim;
ALTER TABLE compute.jobs
    DROP COLUMN errors,
    DROP COLUMN lease_expires,
    DROP COLUMN worker,
    DROP COLUMN max_attempts,
    DROP COLUMN attempt,
    DROP COLUMN run_at,
    DROP COLUMN priority;
