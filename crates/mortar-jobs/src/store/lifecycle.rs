//! A leased job's way on: heartbeats (never past the attempt's deadline), completion,
//! failure, release and cancellation; and the maintenance that promotes due jobs and ends the
//! attempts whose lease ran out (timed out, or their worker gone).

use mortar_core::storage::sqlite_writer::positional;
use mortar_core::with_pool;
use rusqlite::OptionalExtension;

use mortar_core::storage::sql::{FromSqlite, Param, Writes, pg_args, sqlite_rows};

use super::dialect::RELEASE_HOLD_ON_FINISH;
use super::{COLUMNS, Completed, Completion, Job, JobStore};
use crate::engine::AfterFailure;

/// Completes a job whose lease holds, even when its cancellation was asked for (a completion
/// that comes first wins). The lease id stays, so a late call with it is told what happened.
const COMPLETE_ONE: &str = "UPDATE jobs_jobs SET state = 'completed', result = $3, finished_at_ms = $4, \
    lease_until_ms = NULL, unique_hold = CASE WHEN unique_while = 'for_ms' THEN unique_hold ELSE NULL END \
    WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $4 \
    RETURNING id, queue, kind, started_at_ms";

/// Completes a batch by primary key. `state || ''` keeps the planner off `jobs_leased` (whose
/// predicate `state = 'running'` would match): with it, each batch scanned every running job
/// into a hash join — a cost that grew with the number of jobs in flight — instead of one
/// primary-key probe per completion.
pub(super) const COMPLETE_MANY_PG: &str = "UPDATE jobs_jobs SET state = 'completed', result = c.result, finished_at_ms = $4, \
    lease_until_ms = NULL, unique_hold = CASE WHEN unique_while = 'for_ms' THEN unique_hold ELSE NULL END \
    FROM UNNEST($1::text[], $2::text[], $3::text[]) AS c(id, lease_id, result) \
    WHERE jobs_jobs.id = c.id AND jobs_jobs.lease_id = c.lease_id AND (jobs_jobs.state || '') = 'running' \
    AND jobs_jobs.lease_until_ms > $4 RETURNING jobs_jobs.id, jobs_jobs.queue, jobs_jobs.kind, jobs_jobs.started_at_ms";

/// Ends a running attempt held by lease `$2` that did not complete: the job goes to state `$3`
/// (`available`, `retryable` at `$4`, or `dead`), or `cancelled` when its cancellation was
/// asked for, whatever `$3` says (decided here, so a cancellation asked for meanwhile is never
/// lost to a retry). `$5` is now; `{guard}` says whose call it is (the worker's, while its
/// lease holds; maintenance's, once it ran out). The lease id stays.
fn end_attempt_sql(guard: &str) -> String {
    format!(
        "UPDATE jobs_jobs SET \
         state = CASE WHEN cancel_requested_at_ms IS NULL THEN $3 ELSE 'cancelled' END, \
         run_at_ms = CASE WHEN cancel_requested_at_ms IS NULL AND $3 = 'retryable' THEN $4 ELSE run_at_ms END, \
         finished_at_ms = CASE WHEN cancel_requested_at_ms IS NOT NULL OR $3 = 'dead' THEN $5 ELSE NULL END, \
         lease_until_ms = NULL, \
         unique_hold = CASE WHEN (cancel_requested_at_ms IS NOT NULL OR $3 = 'dead') \
         AND COALESCE(unique_while, '') <> 'for_ms' THEN NULL ELSE unique_hold END \
         WHERE id = $1 AND lease_id = $2 AND state = 'running' AND {guard} RETURNING {COLUMNS}"
    )
}

/// The worker's own report: only while its lease holds.
const WHILE_HELD: &str = "lease_until_ms > $5";

/// Maintenance's: only once the lease ran out.
const RAN_OUT: &str = "lease_until_ms <= $5";

/// Running jobs whose lease ran out, oldest first, a bounded number per pass (`$2`: only this
/// job, when not empty), with `lock` after (PostgreSQL's row locks).
fn expired_sql(lock: &str) -> String {
    format!(
        "SELECT {COLUMNS} FROM jobs_jobs WHERE state = 'running' AND lease_until_ms <= $1 \
         AND ($2 = '' OR id = $2) ORDER BY lease_until_ms LIMIT 1000{lock}"
    )
}

/// Ends the attempt of a running job whose cancellation was asked for, at its worker's
/// heartbeat (whether or not its lease still holds).
fn cancel_running_sql() -> String {
    format!(
        "UPDATE jobs_jobs SET state = 'cancelled', finished_at_ms = $3, lease_until_ms = NULL, {RELEASE_HOLD_ON_FINISH} \
         WHERE id = $1 AND lease_id = $2 AND state = 'running' AND cancel_requested_at_ms IS NOT NULL RETURNING {COLUMNS}"
    )
}

const RECORD_ERROR: &str =
    "INSERT INTO jobs_errors (job_id, attempt, error, at_ms) VALUES ($1, $2, $3, $4)";

/// What a cancelled attempt's history says.
pub const CANCELLED_WHILE_RUNNING: &str =
    "cancelled while running: its worker stopped it at its heartbeat";

/// The state, run_at and the flag "finished" of a job whose attempt ended so.
fn end_params(id: &str, lease_id: &str, next: AfterFailure, now_ms: u64) -> Vec<Param> {
    let (state, run_at) = match next {
        AfterFailure::RetryAt(at) if at <= now_ms => ("available", now_ms),
        AfterFailure::RetryAt(at) => ("retryable", at),
        AfterFailure::Dead => ("dead", now_ms),
    };
    vec![
        Param::from(id),
        Param::from(lease_id),
        Param::from(state),
        Param::from(run_at as i64),
        Param::from(now_ms as i64),
    ]
}

async fn record_error_pg(
    conn: &mut sqlx::PgConnection,
    job: &Job,
    error: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(RECORD_ERROR)
        // As an i64, like every binding of RECORD_ERROR (sqlx caches the statement with the
        // first binding's types).
        .bind(&job.id)
        .bind(i64::from(job.attempt))
        .bind(error)
        .bind(now)
        .execute(conn)
        .await
        .map(drop)
}

fn record_error_sqlite(
    c: &rusqlite::Connection,
    job: &Job,
    error: &str,
    now: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(&positional(RECORD_ERROR))?
        .execute((&job.id, job.attempt, error, now))
        .map(drop)
}

impl JobStore {
    /// The earliest time something becomes leasable without a write: a scheduled or retryable
    /// job's `run_at`, a running job's lease end.
    pub async fn next_due(&self) -> Result<Option<i64>, sqlx::Error> {
        let (waiting, leased): (Option<i64>, Option<i64>) = with_pool!(self.db.durable(), pool => sqlx::query_as(
            "SELECT (SELECT min(run_at_ms) FROM jobs_jobs WHERE state IN ('scheduled', 'retryable')), \
                    (SELECT min(lease_until_ms) FROM jobs_jobs WHERE state = 'running')")
            .fetch_one(pool).await?);
        Ok(match (waiting, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Makes due scheduled and retryable jobs `available`.
    pub async fn promote(&self, now_ms: u64) -> Result<u64, sqlx::Error> {
        self.db.exec(
            "UPDATE jobs_jobs SET state = 'available' WHERE state IN ('scheduled', 'retryable') AND run_at_ms <= $1".into(),
            vec![Param::from(now_ms as i64)],
        )
        .await
    }

    /// Ends the attempts of running jobs whose lease ran out (up to 1000 a call; `only`: just
    /// that job): `decide` says, for each, where the job goes and the attempt's error
    /// (recorded in its history). A job whose cancellation was asked for ends `cancelled`.
    /// Returns the jobs as they are now, each with its attempt's error. On PostgreSQL the
    /// rows are locked, so nodes never end the same attempt twice: a pass skips rows another
    /// holds, a call for one job waits for them (and then finds it ended).
    pub async fn rescue<D>(
        &self,
        now_ms: u64,
        only: Option<&str>,
        decide: D,
    ) -> Result<Vec<(Job, String)>, sqlx::Error>
    where
        D: Fn(&Job) -> (AfterFailure, String) + Send + 'static,
    {
        let now = now_ms as i64;
        let one = only.unwrap_or_default().to_owned();
        let end = end_attempt_sql(RAN_OUT);
        match self.db.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    let expired: Vec<Job> =
                        sqlite_rows(c, &expired_sql(""), &[Param::from(now), Param::from(one)])?;
                    let mut ended = Vec::with_capacity(expired.len());
                    for j in &expired {
                        let lease_id = j.lease_id.clone().unwrap_or_default();
                        let (next, error) = decide(j);
                        let params = end_params(&j.id, &lease_id, next, now_ms);
                        if let Some(done) = sqlite_rows::<Job>(c, &end, &params)?.pop() {
                            record_error_sqlite(c, &done, &error, now)?;
                            ended.push((done, error));
                        }
                    }
                    Ok(ended)
                })
                .await
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let lock = if one.is_empty() {
                    " FOR UPDATE SKIP LOCKED"
                } else {
                    " FOR UPDATE"
                };
                let expired: Vec<Job> = sqlx::query_as(sqlx::AssertSqlSafe(expired_sql(lock)))
                    .bind(now)
                    .bind(one)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut ended = Vec::with_capacity(expired.len());
                for j in &expired {
                    let lease_id = j.lease_id.clone().unwrap_or_default();
                    let (next, error) = decide(j);
                    let params = end_params(&j.id, &lease_id, next, now_ms);
                    let done: Option<Job> =
                        sqlx::query_as_with(sqlx::AssertSqlSafe(end.clone()), pg_args(params)?)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if let Some(done) = done {
                        record_error_pg(&mut tx, &done, &error, now).await?;
                        ended.push((done, error));
                    }
                }
                tx.commit().await?;
                Ok(ended)
            }
        }
    }

    /// Extends a lease held by `lease_id` to `lease_ms` from now, never past the attempt's
    /// deadline (`started_at_ms + timeout_ms`). None when the lease no longer holds or the
    /// job's cancellation was asked for.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET lease_until_ms = CASE WHEN $3 < started_at_ms + timeout_ms THEN $3 \
             ELSE started_at_ms + timeout_ms END \
             WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $4 \
             AND cancel_requested_at_ms IS NULL RETURNING {COLUMNS}"
        );
        self.update_one(
            sql,
            vec![
                Param::from(id),
                Param::from(lease_id),
                Param::from(now_ms.saturating_add(lease_ms) as i64),
                Param::from(now_ms as i64),
            ],
        )
        .await
    }

    /// Asks a running job to stop: its worker learns at its next heartbeat. None when the job
    /// is not running.
    pub async fn request_cancel(&self, id: &str, now_ms: u64) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET cancel_requested_at_ms = COALESCE(cancel_requested_at_ms, $2) \
             WHERE id = $1 AND state = 'running' RETURNING {COLUMNS}"
        );
        self.update_one(sql, vec![Param::from(id), Param::from(now_ms as i64)])
            .await
    }

    /// Ends, as `cancelled`, the attempt held by `lease_id` of a running job whose cancellation
    /// was asked for (its worker's heartbeat is how it learns), recording why.
    pub async fn cancel_running(
        &self,
        id: &str,
        lease_id: &str,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        self.end_recording(
            cancel_running_sql(),
            vec![
                Param::from(id),
                Param::from(lease_id),
                Param::from(now_ms as i64),
            ],
            CANCELLED_WHILE_RUNNING.to_owned(),
            now_ms,
        )
        .await
    }

    /// Runs `sql` (an UPDATE of one job `RETURNING` its columns) and, when it changed the
    /// job, records `error` for the job's attempt: one transaction.
    async fn end_recording(
        &self,
        sql: String,
        params: Vec<Param>,
        error: String,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        let now = now_ms as i64;
        match self.db.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    let done = sqlite_rows::<Job>(c, &sql, &params)?.pop();
                    if let Some(j) = &done {
                        record_error_sqlite(c, j, &error, now)?;
                    }
                    Ok(done)
                })
                .await
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let done: Option<Job> =
                    sqlx::query_as_with(sqlx::AssertSqlSafe(sql), pg_args(params)?)
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(j) = &done {
                    record_error_pg(&mut tx, j, &error, now).await?;
                }
                tx.commit().await?;
                Ok(done)
            }
        }
    }
    /// Completes every job whose lease still holds, as one operation; returns those completed
    /// (the others' leases ran out or were never theirs).
    pub async fn complete(
        &self,
        items: &[Completion],
        now_ms: u64,
    ) -> Result<Vec<Completed>, sqlx::Error> {
        let now = now_ms as i64;
        match self.db.writes() {
            Writes::Sqlite(w) => {
                // On the writer thread, one primary-key UPDATE per item beats any join SQLite's
                // planner makes with a JSON table.
                let items = items.to_vec();
                w.write(move |c| {
                    let mut complete = c.prepare_cached(&positional(COMPLETE_ONE))?;
                    let mut done = Vec::with_capacity(items.len());
                    for i in &items {
                        done.extend(
                            complete
                                .query_row(
                                    (&i.id, &i.lease_id, &i.result, now),
                                    Completed::from_sqlite,
                                )
                                .optional()?,
                        );
                    }
                    Ok(done)
                })
                .await
            }
            Writes::Postgres(pool) => {
                let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
                let leases: Vec<&str> = items.iter().map(|i| i.lease_id.as_str()).collect();
                let results: Vec<Option<&str>> =
                    items.iter().map(|i| i.result.as_deref()).collect();
                sqlx::query_as(COMPLETE_MANY_PG)
                    .bind(ids)
                    .bind(leases)
                    .bind(results)
                    .bind(now)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// Records a failed attempt (the state and its error in one transaction) and moves the job
    /// on as `next` says — or to `cancelled` when its cancellation was asked for.
    pub async fn fail(
        &self,
        id: &str,
        lease_id: &str,
        error: &str,
        next: AfterFailure,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        self.end_recording(
            end_attempt_sql(WHILE_HELD),
            end_params(id, lease_id, next, now_ms),
            error.to_owned(),
            now_ms,
        )
        .await
    }

    /// Gives a held job back at once without counting the attempt (a worker shutting down);
    /// a job whose cancellation was asked for is cancelled instead.
    pub async fn release(
        &self,
        id: &str,
        lease_id: &str,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET \
             state = CASE WHEN cancel_requested_at_ms IS NULL THEN 'available' ELSE 'cancelled' END, \
             attempt = CASE WHEN cancel_requested_at_ms IS NULL THEN attempt - 1 ELSE attempt END, \
             lease_id = CASE WHEN cancel_requested_at_ms IS NULL THEN NULL ELSE lease_id END, \
             lease_until_ms = NULL, \
             worker = CASE WHEN cancel_requested_at_ms IS NULL THEN NULL ELSE worker END, \
             started_at_ms = CASE WHEN cancel_requested_at_ms IS NULL THEN NULL ELSE started_at_ms END, \
             finished_at_ms = CASE WHEN cancel_requested_at_ms IS NULL THEN NULL ELSE $3 END, \
             unique_hold = CASE WHEN cancel_requested_at_ms IS NOT NULL AND COALESCE(unique_while, '') <> 'for_ms' \
             THEN NULL ELSE unique_hold END \
             WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $3 RETURNING {COLUMNS}"
        );
        self.update_one(
            sql,
            vec![
                Param::from(id),
                Param::from(lease_id),
                Param::from(now_ms as i64),
            ],
        )
        .await
    }
}
