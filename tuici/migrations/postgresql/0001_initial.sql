-- The dispatcher's record, shared by every dispatcher of a group. Bodies are msgspec msgpack of the wire structs.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE commits (
    sha TEXT PRIMARY KEY, branch TEXT NOT NULL, author TEXT NOT NULL, subject TEXT NOT NULL,
    time DOUBLE PRECISION NOT NULL, seen_at DOUBLE PRECISION NOT NULL, skipped BOOLEAN NOT NULL DEFAULT false,
    ord BIGSERIAL NOT NULL
);
CREATE TABLE tips (branch TEXT PRIMARY KEY, sha TEXT NOT NULL);
CREATE TABLE jobs (id BIGINT PRIMARY KEY, commit_sha TEXT NOT NULL, priority INTEGER NOT NULL, body BYTEA NOT NULL);
CREATE INDEX jobs_commit ON jobs (commit_sha);
CREATE TABLE attempts (
    job_id BIGINT NOT NULL, attempt INTEGER NOT NULL, body BYTEA NOT NULL, PRIMARY KEY (job_id, attempt)
);
CREATE TABLE bisections (id BIGINT PRIMARY KEY, body BYTEA NOT NULL, made BYTEA NOT NULL);
CREATE TABLE events (seq BIGINT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL);
CREATE INDEX events_ts ON events (ts);
-- Job output in the pieces it arrived in; a job's log is its chunks in offset order.
CREATE TABLE log_chunks (
    job_id BIGINT NOT NULL, "offset" BIGINT NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (job_id, "offset")
);
-- The one active dispatcher: whoever holds this row's lease, fenced by its epoch (every write checks it).
CREATE TABLE leader (
    id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, address TEXT NOT NULL,
    epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL
);
-- Every dispatcher of the group, active or standing by, as last seen (for `tuici status`).
CREATE TABLE dispatchers (
    holder TEXT PRIMARY KEY, address TEXT NOT NULL, started_at TIMESTAMPTZ NOT NULL, seen_at TIMESTAMPTZ NOT NULL
);
