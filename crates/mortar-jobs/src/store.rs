//! Jobs in the durable store: SQLite (embedded) or PostgreSQL (cluster, `FOR UPDATE SKIP
//! LOCKED` so workers on every node lease disjoint jobs). One implementation over both pools;
//! only the lease statement differs by dialect.

use mortar_core::storage::Durable;
use mortar_core::with_pool;
use sqlx::FromRow;

use crate::engine::State;

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub payload: String,
    pub priority: i32,
    pub run_at_ms: i64,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub timeout_ms: i64,
    pub lease_id: Option<String>,
    pub lease_until_ms: Option<i64>,
    pub worker: Option<String>,
    pub result: Option<String>,
    pub unique_key: Option<String>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

impl Job {
    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Available)
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct AttemptError {
    pub attempt: i32,
    pub error: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct JobStore {
    durable: Durable,
}

const COLUMNS: &str = "id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, backoff_base_ms, \
    backoff_max_ms, timeout_ms, lease_id, lease_until_ms, worker, result, unique_key, created_at_ms, finished_at_ms";

/// States a lease may pick up (with `run_at_ms` due), plus running jobs whose lease ran out.
const LEASABLE: &str = "((state IN ('available', 'scheduled', 'retryable') AND run_at_ms <= $1) \
    OR (state = 'running' AND lease_until_ms <= $1))";

impl JobStore {
    pub fn new(durable: Durable) -> Self {
        Self { durable }
    }

    /// Inserts jobs in one transaction (all or none).
    pub async fn insert(&self, jobs: &[Job]) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO jobs_jobs ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)"
        );
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            for j in jobs {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(&j.id).bind(&j.queue).bind(&j.kind).bind(&j.payload).bind(j.priority).bind(j.run_at_ms)
                    .bind(&j.state).bind(j.attempt).bind(j.max_attempts).bind(j.backoff_base_ms).bind(j.backoff_max_ms)
                    .bind(j.timeout_ms).bind(&j.lease_id).bind(j.lease_until_ms).bind(&j.worker).bind(&j.result)
                    .bind(&j.unique_key).bind(j.created_at_ms).bind(j.finished_at_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })
    }

    /// Leases up to `max` due jobs of `queues` (highest priority, then oldest run_at, then id),
    /// each for its own `timeout_ms`; counts the attempt.
    pub async fn lease(
        &self,
        queues: &[String],
        max: u32,
        worker: &str,
        now_ms: u64,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let queues_json = serde_json::to_string(queues).unwrap_or_else(|_| "[]".into());
        let lease_id = mortar_core::ids::new_id();
        // Only the queue filter and the row locking differ between the dialects.
        let (queue_in, lock) = match &self.durable {
            Durable::Sqlite(_) => ("SELECT value FROM json_each($4)", ""),
            Durable::Postgres(_) => (
                "SELECT jsonb_array_elements_text($4::jsonb)",
                " FOR UPDATE SKIP LOCKED",
            ),
        };
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'running', attempt = attempt + 1, lease_id = $2, lease_until_ms = $1 + timeout_ms, worker = $3 \
             WHERE id IN (SELECT id FROM jobs_jobs WHERE queue IN ({queue_in}) AND {LEASABLE} \
             ORDER BY priority, run_at_ms, id LIMIT $5{lock}) RETURNING {COLUMNS}"
        );
        let mut jobs: Vec<Job> = with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now_ms as i64)
            .bind(&lease_id)
            .bind(worker)
            .bind(&queues_json)
            .bind(i64::from(max))
            .fetch_all(pool)
            .await?);
        // RETURNING does not keep the sub-select's order.
        jobs.sort_by(|a, b| {
            (a.priority, a.run_at_ms, &a.id).cmp(&(b.priority, b.run_at_ms, &b.id))
        });
        Ok(jobs)
    }

    /// Runs `sql` (which must `RETURNING` the columns) and returns the row it changed.
    async fn update_one(&self, sql: String, binds: Vec<Bind>) -> Result<Option<Job>, sqlx::Error> {
        with_pool!(&self.durable, pool => {
            let mut q = sqlx::query_as::<_, Job>(sqlx::AssertSqlSafe(sql));
            for b in binds {
                q = match b {
                    Bind::I(i) => q.bind(i),
                    Bind::S(s) => q.bind(s),
                    Bind::OS(s) => q.bind(s),
                    Bind::OI(i) => q.bind(i),
                };
            }
            q.fetch_optional(pool).await
        })
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
                Bind::S(id.into()),
                Bind::S(lease_id.into()),
                Bind::I((now_ms + lease_ms) as i64),
                Bind::I(now_ms as i64),
            ],
        )
        .await
    }

    /// Completes a job whose lease `lease_id` still holds.
    pub async fn complete(
        &self,
        id: &str,
        lease_id: &str,
        result: Option<String>,
        now_ms: u64,
    ) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'completed', result = $3, finished_at_ms = $4, lease_id = NULL, lease_until_ms = NULL \
             WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $4 RETURNING {COLUMNS}"
        );
        self.update_one(
            sql,
            vec![
                Bind::S(id.into()),
                Bind::S(lease_id.into()),
                Bind::OS(result),
                Bind::I(now_ms as i64),
            ],
        )
        .await
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
        let sql = format!(
            "UPDATE jobs_jobs SET state = $3, run_at_ms = $4, finished_at_ms = $5, lease_id = NULL, lease_until_ms = NULL \
             WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $6 RETURNING {COLUMNS}"
        );
        let updated = self
            .update_one(
                sql,
                vec![
                    Bind::S(job.id.clone()),
                    Bind::S(lease_id.into()),
                    Bind::S(state.into()),
                    Bind::I(run_at),
                    Bind::OI(finished),
                    Bind::I(now_ms as i64),
                ],
            )
            .await?;
        if updated.is_some() {
            with_pool!(&self.durable, pool => sqlx::query("INSERT INTO jobs_errors (job_id, attempt, error, at_ms) VALUES ($1, $2, $3, $4)")
                .bind(&job.id).bind(job.attempt).bind(error).bind(now_ms as i64)
                .execute(pool).await.map(drop))?;
        }
        Ok(updated)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM jobs_jobs WHERE id = $1");
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await)
    }

    pub async fn errors(&self, id: &str) -> Result<Vec<AttemptError>, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query_as("SELECT attempt, error, at_ms FROM jobs_errors WHERE job_id = $1 ORDER BY attempt")
            .bind(id).fetch_all(pool).await)
    }

    /// Jobs by id order, filtered by state and queue (empty = any), after `after`.
    pub async fn list(
        &self,
        state: &str,
        queue: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs_jobs WHERE ($1 = '' OR state = $1) AND ($2 = '' OR queue = $2) AND id > $3 ORDER BY id LIMIT $4"
        );
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(state).bind(queue).bind(after).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// Back to `available` now with a fresh attempt count (dead, cancelled or retryable jobs).
    pub async fn retry(&self, id: &str, now_ms: u64) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'available', attempt = 0, run_at_ms = $2, finished_at_ms = NULL \
             WHERE id = $1 AND state IN ('dead', 'cancelled', 'retryable') RETURNING {COLUMNS}"
        );
        self.update_one(sql, vec![Bind::S(id.into()), Bind::I(now_ms as i64)])
            .await
    }

    /// Cancels a job that has not run to completion (not running, completed or dead).
    pub async fn cancel(&self, id: &str, now_ms: u64) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'cancelled', finished_at_ms = $2 \
             WHERE id = $1 AND state IN ('scheduled', 'available', 'retryable') RETURNING {COLUMNS}"
        );
        self.update_one(sql, vec![Bind::S(id.into()), Bind::I(now_ms as i64)])
            .await
    }
}

enum Bind {
    I(i64),
    S(String),
    OS(Option<String>),
    OI(Option<i64>),
}
