-- The trace context of the code that enqueued a job (W3C traceparent and
-- tracestate, as a JSON object of strings), so that a worker's span for
-- each attempt can link to the producer's span. NULL means no trace:
-- producers that insert with plain SQL (the v1 contract) leave it out and
-- are unaffected. The library writes at most 1 KiB per job, small enough
-- to stay inline in the row, so a claim reads it at no extra cost. A
-- nullable column without a default is added without rewriting or
-- scanning the table.

-- +goose Up
ALTER TABLE compute.jobs ADD COLUMN trace_context JSONB;

-- +goose Down
ALTER TABLE compute.jobs DROP COLUMN trace_context;
