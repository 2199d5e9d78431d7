-- Cron schedules. Times are epoch milliseconds. `next_fire_at_ms` is NULL once a schedule has
-- no more fires; every node polls the index on it.
CREATE TABLE IF NOT EXISTS cron_schedules (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    expr              TEXT NOT NULL,
    timezone          TEXT NOT NULL,
    job               TEXT NOT NULL,
    overlap           TEXT NOT NULL,
    misfire           TEXT NOT NULL,
    catchup_window_ms BIGINT NOT NULL,
    jitter_ms         BIGINT NOT NULL,
    start_at_ms       BIGINT,
    end_at_ms         BIGINT,
    enabled           BOOLEAN NOT NULL,
    version           BIGINT NOT NULL,
    next_fire_at_ms   BIGINT,
    last_fire_at_ms   BIGINT,
    created_at_ms     BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS cron_schedules_due ON cron_schedules (next_fire_at_ms);

-- Every fire time claimed, once: the primary key is what makes a fire exactly-once.
CREATE TABLE IF NOT EXISTS cron_runs (
    schedule_id    TEXT NOT NULL,
    fire_at_ms     BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    status         TEXT NOT NULL,
    claimed_at_ms  BIGINT NOT NULL,
    node           TEXT NOT NULL,
    job_id         TEXT,
    enqueued_at_ms BIGINT,
    PRIMARY KEY (schedule_id, fire_at_ms)
);
CREATE INDEX IF NOT EXISTS cron_runs_status ON cron_runs (status, claimed_at_ms);
CREATE INDEX IF NOT EXISTS cron_runs_claimed ON cron_runs (claimed_at_ms);
