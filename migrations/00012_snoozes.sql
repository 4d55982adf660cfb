-- Snoozes and hand-backs no longer count as attempts. attempt still rises
-- with every claim (it is half of the fencing token and never goes down),
-- and snoozes counts the claims that ended in a snooze or a hand-back (the
-- worker's shutdown, a claim the worker could not start): the attempts a
-- job has spent are attempt - snoozes, and that is what max_attempts, the
-- backoff and a queue's MaxAttempts compare with. Before, a snooze raised
-- max_attempts instead, so a queue's own cap and the backoff still saw
-- every snooze as an attempt: a job snoozed twice under MaxAttempts 2 failed
-- for good at its first real failure.
-- A constant default without a CHECK adds the column without rewriting or
-- scanning the table.

-- +goose Up
ALTER TABLE compute.jobs ADD COLUMN snoozes INTEGER NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE compute.jobs DROP COLUMN snoozes;
