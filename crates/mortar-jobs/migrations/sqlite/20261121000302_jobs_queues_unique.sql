-- When an attempt started (enqueue→start latency, run time, cron history).
ALTER TABLE jobs_jobs ADD COLUMN started_at_ms BIGINT;
-- Labels for filtering, a JSON array of strings.
ALTER TABLE jobs_jobs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
-- Unique jobs: `unique_while` is queued | active | for_ms. `unique_hold` carries the unique key
-- while the job still blocks duplicates (NULL once it stops); for for_ms, until `unique_until_ms`.
ALTER TABLE jobs_jobs ADD COLUMN unique_while TEXT;
ALTER TABLE jobs_jobs ADD COLUMN unique_hold TEXT;
ALTER TABLE jobs_jobs ADD COLUMN unique_until_ms BIGINT;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_hold ON jobs_jobs (queue, unique_hold) WHERE unique_hold IS NOT NULL;
DROP INDEX IF EXISTS jobs_unique;
-- Retention pruning and throughput figures.
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs_jobs (state, finished_at_ms);

-- Per-queue settings; a queue with no row has the defaults (not paused, no limits).
-- rate_tokens/rate_at_ms: the queue's token bucket, updated under this row's lock.
CREATE TABLE IF NOT EXISTS jobs_queues (
    queue          TEXT PRIMARY KEY,
    paused         BOOLEAN NOT NULL DEFAULT FALSE,
    concurrency    INTEGER,
    rate_limit     INTEGER,
    rate_period_ms BIGINT,
    rate_tokens    REAL,
    rate_at_ms     BIGINT,
    target_url     TEXT,
    secret         TEXT,
    retention_ms   BIGINT,
    updated_at_ms  BIGINT NOT NULL
);
