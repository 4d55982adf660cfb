-- The job journal: an event per status change of a job, in the order a
-- reader can rely on. A sequence alone is not commit order (a transaction
-- can take a lower number and commit later), so each row also records its
-- transaction id, and readers only take rows of transactions older than
-- every transaction still running (pg_snapshot_xmin): those can no longer
-- gain rows. One row holds the changes of one statement to one queue and
-- status, as parallel arrays: a claim of 2,000 jobs writes one row, not
-- 2,000, which keeps the journal's cost on the hot path small. An event's
-- cursor is (xid, seq, position in the arrays).

-- +goose Up
CREATE TABLE compute.events (
    xid      xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq      BIGINT      GENERATED ALWAYS AS IDENTITY,
    queue    VARCHAR(32) NOT NULL,
    -- The status the jobs entered.
    status   VARCHAR(16) NOT NULL,
    job_ids  BYTEA[]     NOT NULL,
    -- Each job's attempt count at the change, in job_ids' order.
    attempts INTEGER[]   NOT NULL,
    at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, seq)
);

-- Job ids are random bytes: skip the compression attempt on large arrays,
-- which cost a fifth of the worker's burn-down throughput (TOAST still
-- stores them out of line).
ALTER TABLE compute.events ALTER COLUMN job_ids SET STORAGE EXTERNAL;

-- Journal retention deletes by age. Events arrive in time order, so a BRIN
-- index finds old ones at almost no cost per insert.
CREATE INDEX events_at ON compute.events USING brin (at);

-- One function for both statement-level triggers (with transition tables):
-- one INSERT ... SELECT per statement, one row per queue and status however
-- many jobs it touched. compute.meta journal = off turns the journal off
-- (the triggers still capture their transition tables, which measured as
-- free). Status changes send one notification on compute_events so waiters
-- and followers read the journal at once, unless compute.meta says notify =
-- off (every notifying commit takes a cluster-wide lock; waiters then poll);
-- inserts rely on migration 2's compute_jobs notification instead. The
-- transition tables have no statistics, and a nested loop joining a
-- 5,000-row claim or completion with itself compares every row with every
-- other: it made the worker's burn-down four times slower. Hash joins only.
-- +goose StatementBegin
CREATE FUNCTION compute.journal() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
SET enable_nestloop = off
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM compute.meta WHERE key = 'journal' AND value = 'off') THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO compute.events (queue, status, job_ids, attempts)
        SELECT n.queue, n.status, array_agg(n.job_id), array_agg(coalesce(n.attempt, 0))
        FROM new_rows n GROUP BY n.queue, n.status;
        RETURN NULL;
    END IF;
    INSERT INTO compute.events (queue, status, job_ids, attempts)
    SELECT n.queue, n.status, array_agg(n.job_id), array_agg(coalesce(n.attempt, 0))
    FROM new_rows n JOIN old_rows o ON o.job_id = n.job_id
    WHERE n.status IS DISTINCT FROM o.status
    GROUP BY n.queue, n.status;
    IF FOUND AND NOT EXISTS (SELECT 1 FROM compute.meta WHERE key = 'notify' AND value = 'off') THEN
        PERFORM pg_notify('compute_events', '');
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER jobs_journal_insert
    AFTER INSERT ON compute.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION compute.journal();

CREATE TRIGGER jobs_journal_update
    AFTER UPDATE ON compute.jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION compute.journal();

-- +goose Down
DROP TRIGGER jobs_journal_update ON compute.jobs;
DROP TRIGGER jobs_journal_insert ON compute.jobs;
DROP FUNCTION compute.journal();
DROP TABLE compute.events;
