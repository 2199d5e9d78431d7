-- Leases read only `available` jobs, in (priority, run_at, id) order per queue: a partial index
-- walked in order, never a sort of the backlog. Due scheduled/retryable jobs are promoted to
-- `available`, and running jobs whose lease ran out rescued, through the two small indexes below.
CREATE INDEX IF NOT EXISTS jobs_available ON jobs_jobs (queue, priority, run_at_ms, id) WHERE state = 'available';
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs_jobs (run_at_ms) WHERE state IN ('scheduled', 'retryable');
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs_jobs (lease_until_ms) WHERE state = 'running';
-- Counts by queue and state.
CREATE INDEX IF NOT EXISTS jobs_queue_state ON jobs_jobs (queue, state);
DROP INDEX IF EXISTS jobs_ready;
