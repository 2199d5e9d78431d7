-- Jobs. Times are epoch milliseconds. Lower priority numbers run first; then run_at, then id.
CREATE TABLE IF NOT EXISTS jobs_jobs (
    id             TEXT PRIMARY KEY,
    queue          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    priority       INTEGER NOT NULL,
    run_at_ms      BIGINT NOT NULL,
    state          TEXT NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL,
    backoff_base_ms BIGINT NOT NULL,
    backoff_max_ms BIGINT NOT NULL,
    timeout_ms     BIGINT NOT NULL,
    lease_id       TEXT,
    lease_until_ms BIGINT,
    worker         TEXT,
    result         TEXT,
    unique_key     TEXT,
    created_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT
);
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs_jobs (queue, state, priority, run_at_ms, id);
CREATE INDEX IF NOT EXISTS jobs_unique ON jobs_jobs (queue, unique_key);

-- Every failed attempt's error.
CREATE TABLE IF NOT EXISTS jobs_errors (
    job_id  TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error   TEXT NOT NULL,
    at_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_errors_job ON jobs_errors (job_id);
