-- One trigger for inserts instead of two. Migration 2's jobs_notify_insert
-- (the compute_jobs notification) and migration 4's jobs_journal_insert (the
-- journal's queued events) both fired after every INSERT into compute.jobs:
-- two plpgsql calls, two function-level settings to set and restore, and two
-- reads of compute.meta, for each enqueue. compute.enqueued() does both
-- jobs in one call, in the same order (journal first, then notify), and
-- honours the same meta keys: journal = off skips the events, notify = off
-- the notification. compute.journal() keeps serving UPDATEs.
-- Measured on an idle 2-core machine (server with fsync off), one connection
-- enqueueing one job per transaction, 5,000 per run, busy CPU time of the
-- whole machine per transaction, ten runs each, alternating: 378 us with
-- this migration, 400 us without it (medians).

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION compute.enqueued() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    journal_off boolean;
    notify_off boolean;
    q text;
BEGIN
    -- One read of compute.meta for both switches.
    SELECT coalesce(bool_or(key = 'journal'), false), coalesce(bool_or(key = 'notify'), false)
    INTO journal_off, notify_off
    FROM compute.meta WHERE key IN ('journal', 'notify') AND value = 'off';
    IF NOT journal_off THEN
        INSERT INTO compute.events (queue, status, job_ids, attempts)
        SELECT n.queue, n.status, array_agg(n.job_id), array_agg(coalesce(n.attempt, 0))
        FROM new_rows n GROUP BY n.queue, n.status;
    END IF;
    IF NOT notify_off THEN
        FOR q IN SELECT DISTINCT n.queue FROM new_rows n WHERE n.status = 'queued' LOOP
            PERFORM pg_notify('compute_jobs', q);
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

DROP TRIGGER jobs_journal_insert ON compute.jobs;
DROP TRIGGER jobs_notify_insert ON compute.jobs;
CREATE TRIGGER jobs_insert
    AFTER INSERT ON compute.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION compute.enqueued();
DROP FUNCTION compute.notify_queued();

-- +goose Down
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

DROP TRIGGER jobs_insert ON compute.jobs;
DROP FUNCTION compute.enqueued();
CREATE TRIGGER jobs_notify_insert
    AFTER INSERT ON compute.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION compute.notify_queued();
CREATE TRIGGER jobs_journal_insert
    AFTER INSERT ON compute.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION compute.journal();
