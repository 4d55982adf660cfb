-- The v1 schema exactly as the compute platform database contract documents it
-- (names, types, nullability and checks). Other programs read and write these
-- tables with plain SQL: never change this file, add a migration instead.

-- +goose Up
CREATE SCHEMA IF NOT EXISTS compute;

CREATE TABLE compute.meta (
    key   VARCHAR(32)  PRIMARY KEY CHECK (length(key) > 2),
    value VARCHAR(256) NOT NULL
);

CREATE TABLE compute.jobs (
    job_id        BYTEA       PRIMARY KEY CHECK (length(job_id) = 16),
    status        VARCHAR(11) NOT NULL
                  CHECK (status IN ('queued', 'in-progress', 'complete', 'failed', 'expired')),
    queue         VARCHAR(32) NOT NULL,
    config        TEXT,
    input_files   VARCHAR[]   NOT NULL,
    created       TIMESTAMPTZ NOT NULL,
    last_accessed TIMESTAMPTZ NOT NULL,
    grabbed       TIMESTAMPTZ,
    finished      TIMESTAMPTZ,
    output_files  VARCHAR[]
);

-- +goose Down
DROP TABLE compute.jobs;
DROP TABLE compute.meta;
