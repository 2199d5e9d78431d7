-- The (queue, state) index served counts, but it also matched the lease's `queue = ? AND
-- state = 'available'`: a planner with stale statistics (a table created empty, then filled
-- faster than it is analyzed) picked it and sorted the whole backlog on every lease. It cost
-- two index writes per state change too. Leases now have only `jobs_available` to choose;
-- counts of live states read the partial indexes, and finished jobs (counts, throughput,
-- retention) this index, written once when a job finishes.
DROP INDEX IF EXISTS jobs_queue_state;
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs_jobs (queue, state, finished_at_ms) WHERE finished_at_ms IS NOT NULL;
