//! The jobs statements whose text depends on the dialect (queue sets read from a JSON array,
//! the lease's row locks); parameters, binding and writes are the core SQL layer's
//! ([`mortar_core::storage::sql`]).

use mortar_core::storage::sql::{Dialect, Param, json};

use super::{COLUMNS, Job, JobStore, QUEUE_COLUMNS};

/// A job stops blocking duplicates when it finishes (unless its uniqueness is for a time).
pub(super) const RELEASE_HOLD_ON_FINISH: &str =
    "unique_hold = CASE WHEN unique_while = 'for_ms' THEN unique_hold ELSE NULL END";

/// `queued` uniqueness ends when the job starts.
const RELEASE_HOLD_ON_START: &str =
    "unique_hold = CASE WHEN unique_while = 'queued' THEN NULL ELSE unique_hold END";

/// The settings rows of the queues named in the JSON array `$1`.
pub(super) fn queue_rows_sql(d: Dialect) -> String {
    format!(
        "SELECT {QUEUE_COLUMNS} FROM jobs_queues WHERE queue IN ({})",
        d.json_strings(1)
    )
}

/// Leases available jobs of the queue(s) in `$4` to lease `$2` for worker `$3`, at most
/// `$5`, in priority, run_at, id order, each for `$6` ms or its `timeout_ms` if shorter (the
/// attempt's deadline). One queue: `$4` is its name and the partial index
/// `jobs_available` is walked in order; several: `$4` is a JSON array of names.
pub(super) fn lease_sql(d: Dialect, queues: usize) -> String {
    lease_sql_where(d, queues, "")
}

/// [`lease_sql`] for queues believed to have no limits, from settings that may be stale: a
/// queue that is paused or limited after all is skipped by the statement itself.
pub(super) fn free_lease_sql(d: Dialect, queues: usize) -> String {
    lease_sql_where(
        d,
        queues,
        " AND NOT EXISTS (SELECT 1 FROM jobs_queues s WHERE s.queue = jobs_jobs.queue \
         AND (s.paused OR s.concurrency IS NOT NULL OR s.rate_limit IS NOT NULL))",
    )
}

fn lease_sql_where(d: Dialect, queues: usize, guard: &str) -> String {
    let queue = if queues == 1 {
        "queue = $4".to_owned()
    } else {
        format!("queue IN ({})", d.json_strings(4))
    };
    format!(
        "UPDATE jobs_jobs SET state = 'running', attempt = attempt + 1, lease_id = $2, \
         lease_until_ms = $1 + CASE WHEN timeout_ms < $6 THEN timeout_ms ELSE $6 END, \
         worker = $3, started_at_ms = $1, {RELEASE_HOLD_ON_START} \
         WHERE id IN (SELECT id FROM jobs_jobs WHERE state = 'available' AND {queue}{guard} \
         ORDER BY priority, run_at_ms, id LIMIT $5{}) RETURNING {COLUMNS}",
        d.skip_locked()
    )
}

/// How `lease_sql(queues.len())` takes its queues.
pub(super) fn queue_param(queues: &[String]) -> String {
    match queues {
        [one] => one.clone(),
        many => json(many),
    }
}

impl JobStore {
    /// Runs `sql` (which must `RETURNING` the columns) and returns the row it changed.
    pub(super) async fn update_one(
        &self,
        sql: String,
        params: Vec<Param>,
    ) -> Result<Option<Job>, sqlx::Error> {
        Ok(self.db.rows(sql, params).await?.into_iter().next())
    }
}
