//! A leased job's way on: heartbeats, completion, failure and release; and the maintenance
//! that promotes due jobs and rescues jobs whose lease ran out.

use mortar_core::storage::sqlite_writer::positional;
use mortar_core::with_pool;
use rusqlite::OptionalExtension;

use mortar_core::storage::sql::{FromSqlite, Param, Writes};

use super::dialect::RELEASE_HOLD_ON_FINISH;
use super::{COLUMNS, Completed, Completion, Job, JobStore};

const COMPLETE_ONE: &str = "UPDATE jobs_jobs SET state = 'completed', result = $3, finished_at_ms = $4, lease_id = NULL, \
    lease_until_ms = NULL, unique_hold = CASE WHEN unique_while = 'for_ms' THEN unique_hold ELSE NULL END \
    WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $4 \
    RETURNING id, queue, kind, started_at_ms";

/// Completes a batch by primary key. `state || ''` keeps the planner off `jobs_leased` (whose
/// predicate `state = 'running'` would match): with it, each batch scanned every running job
/// into a hash join — a cost that grew with the number of jobs in flight — instead of one
/// primary-key probe per completion.
pub(super) const COMPLETE_MANY_PG: &str = "UPDATE jobs_jobs SET state = 'completed', result = c.result, finished_at_ms = $4, lease_id = NULL, \
    lease_until_ms = NULL, unique_hold = CASE WHEN unique_while = 'for_ms' THEN unique_hold ELSE NULL END \
    FROM UNNEST($1::text[], $2::text[], $3::text[]) AS c(id, lease_id, result) \
    WHERE jobs_jobs.id = c.id AND jobs_jobs.lease_id = c.lease_id AND (jobs_jobs.state || '') = 'running' \
    AND jobs_jobs.lease_until_ms > $4 RETURNING jobs_jobs.id, jobs_jobs.queue, jobs_jobs.kind, jobs_jobs.started_at_ms";

const RESCUE: &str = "UPDATE jobs_jobs SET \
    state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'available' END, \
    finished_at_ms = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END, \
    unique_hold = CASE WHEN attempt >= max_attempts AND unique_while <> 'for_ms' THEN NULL ELSE unique_hold END, \
    lease_id = NULL, lease_until_ms = NULL \
    WHERE state = 'running' AND lease_until_ms <= $1 \
    RETURNING id, queue, kind, attempt, state, timeout_ms";

const RECORD_ERROR: &str =
    "INSERT INTO jobs_errors (job_id, attempt, error, at_ms) VALUES ($1, $2, $3, $4)";

/// One rescued job: id, queue, kind, attempt, new state, timeout.
type Rescued = (String, String, String, i32, String, i64);

fn lease_expired(timeout_ms: i64) -> String {
    format!(
        "lease expired: no completion or heartbeat within {timeout_ms} ms (the worker died, hung or lost its connection)"
    )
}

fn died(rescued: Vec<Rescued>) -> Vec<Completed> {
    rescued
        .into_iter()
        .filter(|r| r.4 == "dead")
        .map(|(id, queue, kind, ..)| Completed {
            id,
            queue,
            kind,
            started_at_ms: None,
        })
        .collect()
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

    /// Rescues running jobs whose lease ran out (the worker died, hung or lost its way): the
    /// lost attempt is recorded as an error and the job is `available` again, or `dead` when
    /// that was its last attempt. Returns the jobs that died.
    pub async fn rescue(&self, now_ms: u64) -> Result<Vec<Completed>, sqlx::Error> {
        let now = now_ms as i64;
        match self.db.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    let rescued: Vec<Rescued> = c
                        .prepare_cached(&positional(RESCUE))?
                        .query_map([now], |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                            ))
                        })?
                        .collect::<rusqlite::Result<_>>()?;
                    let mut record = c.prepare_cached(&positional(RECORD_ERROR))?;
                    for (id, _, _, attempt, _, timeout) in &rescued {
                        record.execute((id, attempt, lease_expired(*timeout), now))?;
                    }
                    Ok(died(rescued))
                })
                .await
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let rescued: Vec<Rescued> =
                    sqlx::query_as(RESCUE).bind(now).fetch_all(&mut *tx).await?;
                for (id, _, _, attempt, _, timeout) in &rescued {
                    sqlx::query(RECORD_ERROR)
                        // As an i64, like every binding of RECORD_ERROR (sqlx caches the statement
                        // with the first binding's types).
                        .bind(id)
                        .bind(i64::from(*attempt))
                        .bind(lease_expired(*timeout))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(died(rescued))
            }
        }
    }

    /// Extends a lease held by `lease_id`.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET lease_until_ms = $3 WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $4 RETURNING {COLUMNS}"
        );
        self.update_one(
            sql,
            vec![
                Param::from(id),
                Param::from(lease_id),
                Param::from((now_ms + lease_ms) as i64),
                Param::from(now_ms as i64),
            ],
        )
        .await
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

    /// Records a failed attempt and moves the job to `retryable` (at `retry_at`) or `dead`.
    pub async fn fail(
        &self,
        job: &Job,
        lease_id: &str,
        error: &str,
        next: Option<u64>,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        let (state, run_at, finished) = match next {
            Some(at) => ("retryable", at as i64, None),
            None => ("dead", job.run_at_ms, Some(now_ms as i64)),
        };
        let hold = if next.is_some() {
            "unique_hold = unique_hold"
        } else {
            RELEASE_HOLD_ON_FINISH
        };
        let sql = format!(
            "UPDATE jobs_jobs SET state = $3, run_at_ms = $4, finished_at_ms = $5, lease_id = NULL, lease_until_ms = NULL, {hold} \
             WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $6 RETURNING {COLUMNS}"
        );
        let updated = self
            .update_one(
                sql,
                vec![
                    Param::from(job.id.clone()),
                    Param::from(lease_id),
                    Param::from(state),
                    Param::from(run_at),
                    Param::from(finished),
                    Param::from(now_ms as i64),
                ],
            )
            .await?;
        if updated.is_some() {
            self.db
                .exec(
                    RECORD_ERROR.into(),
                    vec![
                        Param::from(job.id.clone()),
                        Param::from(i64::from(job.attempt)),
                        Param::from(error),
                        Param::from(now_ms as i64),
                    ],
                )
                .await?;
        }
        Ok(updated)
    }

    /// Gives a held job back at once without counting the attempt (a worker shutting down).
    pub async fn release(
        &self,
        id: &str,
        lease_id: &str,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'available', attempt = attempt - 1, lease_id = NULL, lease_until_ms = NULL, \
             worker = NULL, started_at_ms = NULL \
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
