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
    rate_tokens    DOUBLE PRECISION,
    rate_at_ms     BIGINT,
    target_url     TEXT,
    secret         TEXT,
    retention_ms   BIGINT,
    updated_at_ms  BIGINT NOT NULL
);

-- Plain-SQL enqueue (the transactional outbox for any language): call it inside your own
-- transaction; the job exists only if that transaction commits, and idle workers are woken
-- when it does (NOTIFY is delivered at commit). Returns the job id (a ULID).
CREATE OR REPLACE FUNCTION mortar_jobs_ulid() RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    alphabet CONSTANT text := '0123456789abcdefghjkmnpqrstvwxyz';
    ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    id text := '';
BEGIN
    FOR i IN REVERSE 9..0 LOOP
        id := id || substr(alphabet, ((ms >> (i * 5)) & 31)::int + 1, 1);
    END LOOP;
    FOR i IN 1..16 LOOP
        id := id || substr(alphabet, floor(random() * 32)::int + 1, 1);
    END LOOP;
    RETURN id;
END $$;

CREATE OR REPLACE FUNCTION mortar_jobs_enqueue(
    p_queue text,
    p_kind text,
    p_payload jsonb DEFAULT '{}'::jsonb,
    p_priority integer DEFAULT 10,
    p_run_at timestamptz DEFAULT NULL,
    p_max_attempts integer DEFAULT 20,
    p_timeout_ms bigint DEFAULT 30000
) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ms bigint := floor(extract(epoch FROM clock_timestamp()) * 1000);
    run_ms bigint := coalesce(floor(extract(epoch FROM p_run_at) * 1000), now_ms);
    new_id text := mortar_jobs_ulid();
BEGIN
    IF p_priority NOT BETWEEN 0 AND 100 OR p_max_attempts NOT BETWEEN 1 AND 1000
       OR p_timeout_ms NOT BETWEEN 1 AND 86400000 THEN
        RAISE EXCEPTION 'mortar_jobs_enqueue: priority must be 0..100, max_attempts 1..1000, timeout_ms 1..86400000';
    END IF;
    INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts,
                           backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms)
    VALUES (new_id, p_queue, p_kind, p_payload::text, p_priority, run_ms,
            CASE WHEN run_ms > now_ms THEN 'scheduled' ELSE 'available' END, 0, p_max_attempts,
            1000, 3600000, p_timeout_ms, now_ms);
    PERFORM pg_notify('mortar_jobs', p_queue);
    RETURN new_id;
END $$;
