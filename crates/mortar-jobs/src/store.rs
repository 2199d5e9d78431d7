//! Jobs in the durable store: SQLite (embedded) or PostgreSQL (cluster, `FOR UPDATE SKIP
//! LOCKED` so workers on every node lease disjoint jobs). One implementation over both pools;
//! only a few fragments differ by dialect ([`Dialect`]).
//!
//! Unique jobs are enforced by the database, not by a read-then-write: `unique_hold` carries the
//! unique key while the job blocks duplicates, under a partial unique index on
//! `(queue, unique_hold)`, and an insert that hits it does nothing and returns the holder.
//! Queue limits (concurrency, rate) are enforced under the queue row's lock, so every node and
//! worker sees one count.

use mortar_core::storage::Durable;
use mortar_core::with_pool;
use sqlx::FromRow;

use crate::engine::{State, UniqueWhile};

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
    pub started_at_ms: Option<i64>,
    /// A JSON array of strings.
    pub tags: String,
    pub unique_while: Option<String>,
    pub unique_hold: Option<String>,
    pub unique_until_ms: Option<i64>,
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

/// A queue's settings row (absent = defaults).
#[derive(Debug, Clone, PartialEq, FromRow, Default)]
pub struct QueueRow {
    pub queue: String,
    pub paused: bool,
    pub concurrency: Option<i32>,
    pub rate_limit: Option<i32>,
    pub rate_period_ms: Option<i64>,
    pub rate_tokens: Option<f64>,
    pub rate_at_ms: Option<i64>,
    pub target_url: Option<String>,
    pub secret: Option<String>,
    pub retention_ms: Option<i64>,
    pub updated_at_ms: i64,
}

impl QueueRow {
    /// Leases of this queue must go through its row lock.
    pub fn limited(&self) -> bool {
        self.concurrency.is_some() || self.rate_limit.is_some()
    }
}

/// Counts of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub by_state: Vec<(String, i64)>,
    pub oldest_due_ms: Option<i64>,
    pub completed_last_minute: i64,
}

/// One item of a batch completion.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Completion {
    pub id: String,
    pub lease_id: String,
    /// JSON text.
    pub result: Option<String>,
}

/// A completed job, as much as metrics need.
#[derive(Debug, Clone, FromRow)]
pub struct Completed {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub started_at_ms: Option<i64>,
}

/// Which jobs a bulk operation touches (empty = any).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub queue: String,
    pub kind: String,
    pub state: String,
}

#[derive(Debug, Clone)]
pub struct JobStore {
    durable: Durable,
    /// SQLite's single writer, queued for in-process (see [`JobStore::write_lock`]).
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

pub(crate) const COLUMNS: &str = "id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, backoff_base_ms, \
    backoff_max_ms, timeout_ms, lease_id, lease_until_ms, worker, result, unique_key, created_at_ms, finished_at_ms, \
    started_at_ms, tags, unique_while, unique_hold, unique_until_ms";

pub(crate) const INSERT: &str = "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, \
    backoff_base_ms, backoff_max_ms, timeout_ms, unique_key, created_at_ms, tags, unique_while, unique_hold, unique_until_ms) \
    VALUES ($1,$2,$3,$4,$5,$6,$7,0,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17) ON CONFLICT DO NOTHING";

/// A job stops blocking duplicates when it finishes (unless its uniqueness is for a time).
const RELEASE_HOLD_ON_FINISH: &str =
    "unique_hold = CASE WHEN unique_while = 'for_ms' THEN unique_hold ELSE NULL END";

/// `queued` uniqueness ends when the job starts.
const RELEASE_HOLD_ON_START: &str =
    "unique_hold = CASE WHEN unique_while = 'queued' THEN NULL ELSE unique_hold END";

/// The SQL fragments that differ between SQLite and PostgreSQL.
#[derive(Debug, Clone, Copy)]
struct Dialect {
    /// Expands the JSON array of strings in parameter `$N` to rows.
    strings: &'static str,
    /// Row locking of the lease sub-select.
    skip_locked: &'static str,
    /// `(id, lease_id, result)` rows of a JSON array of completions in parameter `$1`
    /// (PostgreSQL; SQLite completes row by row).
    completions: &'static str,
}

const SQLITE: Dialect = Dialect {
    strings: "SELECT value FROM json_each(${n})",
    skip_locked: "",
    completions: "",
};

const POSTGRES: Dialect = Dialect {
    strings: "SELECT jsonb_array_elements_text(${n}::jsonb)",
    skip_locked: " FOR UPDATE SKIP LOCKED",
    completions: "SELECT id, lease_id, result FROM jsonb_to_recordset($1::jsonb) AS c(id text, lease_id text, result text)",
};

impl Dialect {
    fn strings(self, n: u32) -> String {
        self.strings.replace("{n}", &n.to_string())
    }

    /// Leases available jobs of the queue(s) in `$4` to lease `$2` for worker `$3`, at most
    /// `$5`, in priority, run_at, id order. One queue: `$4` is its name and the partial index
    /// `jobs_available` is walked in order; several: `$4` is a JSON array of names.
    fn lease_sql(self, queues: usize) -> String {
        let queue = if queues == 1 {
            "queue = $4".to_owned()
        } else {
            format!("queue IN ({})", self.strings(4))
        };
        format!(
            "UPDATE jobs_jobs SET state = 'running', attempt = attempt + 1, lease_id = $2, lease_until_ms = $1 + timeout_ms, \
             worker = $3, started_at_ms = $1, {RELEASE_HOLD_ON_START} \
             WHERE id IN (SELECT id FROM jobs_jobs WHERE state = 'available' AND {queue} \
             ORDER BY priority, run_at_ms, id LIMIT $5{}) RETURNING {COLUMNS}",
            self.skip_locked
        )
    }
}

fn json_strings(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

/// How `lease_sql(queues.len())` takes its queues.
fn queue_param(queues: &[String]) -> String {
    match queues {
        [one] => one.clone(),
        many => json_strings(many),
    }
}

/// Inserts `rows` on connection `$conn` (inside the caller's transaction): each either inserted
/// or, when its unique key is held, answered by the holder (`true` = duplicate).
macro_rules! insert_rows {
    ($conn:expr, $rows:expr, $now:expr) => {{
        let mut out = Vec::with_capacity($rows.len());
        for j in $rows {
            let j: &$crate::store::Job = j;
            let mut found = None;
            for attempt in 0..3 {
                if attempt > 0 && let Some(key) = &j.unique_hold {
                    // The key is held: by a time-bound hold that has expired, it stops blocking.
                    sqlx::query("UPDATE jobs_jobs SET unique_hold = NULL WHERE queue = $1 AND unique_hold = $2 AND unique_until_ms <= $3")
                        .bind(&j.queue).bind(key).bind($now as i64)
                        .execute(&mut *$conn).await?;
                }
                let done = sqlx::query($crate::store::INSERT)
                    .bind(&j.id).bind(&j.queue).bind(&j.kind).bind(&j.payload).bind(j.priority).bind(j.run_at_ms)
                    .bind(&j.state).bind(j.max_attempts).bind(j.backoff_base_ms).bind(j.backoff_max_ms)
                    .bind(j.timeout_ms).bind(&j.unique_key).bind(j.created_at_ms).bind(&j.tags)
                    .bind(&j.unique_while).bind(&j.unique_hold).bind(j.unique_until_ms)
                    .execute(&mut *$conn).await?;
                if done.rows_affected() == 1 {
                    found = Some((j.clone(), false));
                    break;
                }
                let sql = format!("SELECT {} FROM jobs_jobs WHERE queue = $1 AND unique_hold = $2", $crate::store::COLUMNS);
                let holder: Option<Job> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(&j.queue).bind(&j.unique_hold)
                    .fetch_optional(&mut *$conn).await?;
                if let Some(h) = holder
                    && h.unique_until_ms.is_none_or(|until| until > $now as i64)
                {
                    found = Some((h, true));
                    break;
                }
                // The hold expired, or the holder let go between the two statements: try again.
            }
            match found {
                Some(f) => out.push(f),
                None => return Err(sqlx::Error::Protocol(format!("job `{}`: unique key contended", j.id))),
            }
        }
        out
    }};
}
pub(crate) use insert_rows;

impl JobStore {
    pub fn new(durable: Durable) -> Self {
        Self {
            durable,
            writer: std::sync::Arc::default(),
        }
    }

    /// SQLite takes one writer at a time, and a writer that finds the lock taken sleeps in its
    /// busy handler in steps of up to 100 ms — the tail latency of every write. This node's
    /// job writes queue here instead, in order. PostgreSQL needs no such thing.
    async fn write_lock(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.durable {
            Durable::Sqlite(_) => Some(self.writer.lock().await),
            Durable::Postgres(_) => None,
        }
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    fn dialect(&self) -> Dialect {
        match self.durable {
            Durable::Sqlite(_) => SQLITE,
            Durable::Postgres(_) => POSTGRES,
        }
    }

    /// Inserts jobs in one transaction (all or none). A job whose unique key is held comes back
    /// as the holder, marked duplicate. On PostgreSQL, wakes every node's waiting leases.
    pub async fn insert(&self, jobs: &[Job], now_ms: u64) -> Result<Vec<(Job, bool)>, sqlx::Error> {
        let _writer = self.write_lock().await;
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            let out = insert_rows!(&mut *tx, jobs, now_ms);
            if matches!(self.durable, Durable::Postgres(_)) && out.iter().any(|(_, dup)| !dup) {
                sqlx::query("SELECT pg_notify('mortar_jobs', '')").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Settings rows of `queues` (only those that have one).
    pub async fn queue_rows(&self, queues: &[String]) -> Result<Vec<QueueRow>, sqlx::Error> {
        let sql = format!(
            "SELECT * FROM jobs_queues WHERE queue IN ({})",
            self.dialect().strings(1)
        );
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(json_strings(queues)).fetch_all(pool).await)
    }

    /// Every queue's settings row.
    pub async fn all_queue_rows(&self) -> Result<Vec<QueueRow>, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query_as("SELECT * FROM jobs_queues ORDER BY queue").fetch_all(pool).await)
    }

    /// Writes a queue's settings (the limiter state is kept).
    pub async fn put_queue(&self, q: &QueueRow) -> Result<(), sqlx::Error> {
        let _writer = self.write_lock().await;
        with_pool!(&self.durable, pool => sqlx::query(
            "INSERT INTO jobs_queues (queue, paused, concurrency, rate_limit, rate_period_ms, target_url, secret, retention_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused, \
             concurrency = excluded.concurrency, rate_limit = excluded.rate_limit, rate_period_ms = excluded.rate_period_ms, \
             target_url = excluded.target_url, secret = excluded.secret, retention_ms = excluded.retention_ms, \
             updated_at_ms = excluded.updated_at_ms")
            .bind(&q.queue).bind(q.paused).bind(q.concurrency).bind(q.rate_limit).bind(q.rate_period_ms)
            .bind(&q.target_url).bind(&q.secret).bind(q.retention_ms).bind(q.updated_at_ms)
            .execute(pool).await.map(drop))
    }

    /// Leases up to `max` due jobs of `queues` (highest priority, then oldest run_at, then id),
    /// each for its own `timeout_ms`; counts the attempt. Paused queues are skipped; queues with
    /// a concurrency or rate limit are leased under their row lock within their limits.
    pub async fn lease(
        &self,
        queues: &[String],
        max: u32,
        worker: &str,
        now_ms: u64,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let rows = self.queue_rows(queues).await?;
        let mut free = Vec::with_capacity(queues.len());
        let mut limited = Vec::new();
        for q in queues {
            match rows.iter().find(|r| &r.queue == q) {
                Some(r) if r.paused => {}
                Some(r) if r.limited() => limited.push(q.clone()),
                _ => free.push(q.clone()),
            }
        }
        let lease_id = mortar_core::ids::new_id();
        let mut jobs = Vec::new();
        for q in limited {
            let want = max - jobs.len() as u32;
            if want == 0 {
                break;
            }
            jobs.extend(
                self.lease_limited(&q, want, worker, &lease_id, now_ms)
                    .await?,
            );
        }
        let want = max - jobs.len() as u32;
        if want > 0 && !free.is_empty() {
            let _writer = self.write_lock().await;
            let sql = self.dialect().lease_sql(free.len());
            let got: Vec<Job> = with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(now_ms as i64).bind(&lease_id).bind(worker).bind(queue_param(&free)).bind(i64::from(want))
                .fetch_all(pool).await?);
            jobs.extend(got);
        }
        // RETURNING does not keep the sub-select's order.
        jobs.sort_by(|a, b| {
            (a.priority, a.run_at_ms, &a.id).cmp(&(b.priority, b.run_at_ms, &b.id))
        });
        Ok(jobs)
    }

    /// Leases from one limited queue under its row lock: no more running than `concurrency`,
    /// no more starts than the token bucket (`rate_limit` per `rate_period_ms`) holds.
    async fn lease_limited(
        &self,
        queue: &str,
        max: u32,
        worker: &str,
        lease_id: &str,
        now_ms: u64,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let _writer = self.write_lock().await;
        let now = now_ms as i64;
        let lease_sql = self.dialect().lease_sql(1);
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            // A write first: takes the row lock (PostgreSQL) or the write lock (SQLite) at once.
            let row: Option<QueueRow> = sqlx::query_as(
                "UPDATE jobs_queues SET updated_at_ms = updated_at_ms WHERE queue = $1 RETURNING *")
                .bind(queue).fetch_optional(&mut *tx).await?;
            let Some(row) = row else { return Ok(Vec::new()) };
            if row.paused {
                return Ok(Vec::new());
            }
            let mut allowed = i64::from(max);
            if let Some(c) = row.concurrency {
                let running: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM jobs_jobs WHERE queue = $1 AND state = 'running' AND lease_until_ms > $2")
                    .bind(queue).bind(now).fetch_one(&mut *tx).await?;
                allowed = allowed.min(i64::from(c) - running);
            }
            let bucket = row.rate_limit.zip(row.rate_period_ms).map(|(limit, period)| {
                crate::engine::refill(f64::from(limit), period as u64, row.rate_tokens, row.rate_at_ms.map(|t| t as u64), now_ms)
            });
            if let Some(tokens) = bucket {
                allowed = allowed.min(tokens.floor() as i64);
            }
            if allowed <= 0 {
                return Ok(Vec::new());
            }
            let jobs: Vec<Job> = sqlx::query_as(sqlx::AssertSqlSafe(lease_sql))
                .bind(now).bind(lease_id).bind(worker).bind(queue).bind(allowed)
                .fetch_all(&mut *tx).await?;
            if let Some(tokens) = bucket {
                sqlx::query("UPDATE jobs_queues SET rate_tokens = $2, rate_at_ms = $3 WHERE queue = $1")
                    .bind(queue).bind(tokens - jobs.len() as f64).bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(jobs)
        })
    }

    /// The earliest time something becomes leasable without a write: a scheduled or retryable
    /// job's `run_at`, a running job's lease end.
    pub async fn next_due(&self) -> Result<Option<i64>, sqlx::Error> {
        let (waiting, leased): (Option<i64>, Option<i64>) = with_pool!(&self.durable, pool => sqlx::query_as(
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
        let _writer = self.write_lock().await;
        with_pool!(&self.durable, pool => sqlx::query(
            "UPDATE jobs_jobs SET state = 'available' WHERE state IN ('scheduled', 'retryable') AND run_at_ms <= $1")
            .bind(now_ms as i64).execute(pool).await.map(|d| d.rows_affected()))
    }

    /// Rescues running jobs whose lease ran out (the worker died, hung or lost its way): the
    /// lost attempt is recorded as an error and the job is `available` again, or `dead` when
    /// that was its last attempt. Returns the jobs that died.
    pub async fn rescue(&self, now_ms: u64) -> Result<Vec<Completed>, sqlx::Error> {
        let _writer = self.write_lock().await;
        let now = now_ms as i64;
        let sql = "UPDATE jobs_jobs SET \
            state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'available' END, \
            finished_at_ms = CASE WHEN attempt >= max_attempts THEN $1 ELSE NULL END, \
            unique_hold = CASE WHEN attempt >= max_attempts AND unique_while <> 'for_ms' THEN NULL ELSE unique_hold END, \
            lease_id = NULL, lease_until_ms = NULL \
            WHERE state = 'running' AND lease_until_ms <= $1 \
            RETURNING id, queue, kind, attempt, state, timeout_ms";
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            let rescued: Vec<(String, String, String, i32, String, i64)> =
                sqlx::query_as(sql).bind(now).fetch_all(&mut *tx).await?;
            for (id, _, _, attempt, _, timeout) in &rescued {
                sqlx::query("INSERT INTO jobs_errors (job_id, attempt, error, at_ms) VALUES ($1, $2, $3, $4)")
                    .bind(id).bind(attempt)
                    .bind(format!("lease expired: no completion or heartbeat within {timeout} ms (the worker died, hung or lost its connection)"))
                    .bind(now).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(rescued
                .into_iter()
                .filter(|r| r.4 == "dead")
                .map(|(id, queue, kind, ..)| Completed { id, queue, kind, started_at_ms: None })
                .collect())
        })
    }

    /// Runs `sql` (which must `RETURNING` the columns) and returns the row it changed.
    async fn update_one(&self, sql: String, binds: Vec<Bind>) -> Result<Option<Job>, sqlx::Error> {
        let _writer = self.write_lock().await;
        with_pool!(&self.durable, pool => {
            let mut q = sqlx::query_as::<_, Job>(sqlx::AssertSqlSafe(sql));
            for b in binds {
                q = match b {
                    Bind::I(i) => q.bind(i),
                    Bind::S(s) => q.bind(s),
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

    /// Completes every job whose lease still holds, in one statement; returns those completed
    /// (the others' leases ran out or were never theirs).
    pub async fn complete(
        &self,
        items: &[Completion],
        now_ms: u64,
    ) -> Result<Vec<Completed>, sqlx::Error> {
        let _writer = self.write_lock().await;
        if let Durable::Sqlite(pool) = &self.durable {
            // In-process: one primary-key UPDATE per item in one transaction beats any join
            // SQLite's planner makes with a JSON table.
            let sql = format!(
                "UPDATE jobs_jobs SET state = 'completed', result = $3, finished_at_ms = $4, lease_id = NULL, \
                 lease_until_ms = NULL, {RELEASE_HOLD_ON_FINISH} \
                 WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $4 \
                 RETURNING id, queue, kind, started_at_ms"
            );
            let mut tx = pool.begin().await?;
            let mut done = Vec::with_capacity(items.len());
            for c in items {
                let row: Option<Completed> = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(&c.id)
                    .bind(&c.lease_id)
                    .bind(&c.result)
                    .bind(now_ms as i64)
                    .fetch_optional(&mut *tx)
                    .await?;
                done.extend(row);
            }
            tx.commit().await?;
            return Ok(done);
        }
        let json = serde_json::to_string(items).unwrap_or_else(|_| "[]".into());
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'completed', result = c.result, finished_at_ms = $2, lease_id = NULL, \
             lease_until_ms = NULL, {RELEASE_HOLD_ON_FINISH} \
             FROM ({}) AS c WHERE jobs_jobs.id = c.id AND jobs_jobs.lease_id = c.lease_id AND jobs_jobs.state = 'running' \
             AND jobs_jobs.lease_until_ms > $2 RETURNING jobs_jobs.id, jobs_jobs.queue, jobs_jobs.kind, jobs_jobs.started_at_ms",
            self.dialect().completions
        );
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(json).bind(now_ms as i64).fetch_all(pool).await)
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
            let _writer = self.write_lock().await;
            with_pool!(&self.durable, pool => sqlx::query("INSERT INTO jobs_errors (job_id, attempt, error, at_ms) VALUES ($1, $2, $3, $4)")
                .bind(&job.id).bind(job.attempt).bind(error).bind(now_ms as i64)
                .execute(pool).await.map(drop))?;
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
                Bind::S(id.into()),
                Bind::S(lease_id.into()),
                Bind::I(now_ms as i64),
            ],
        )
        .await
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM jobs_jobs WHERE id = $1");
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await)
    }

    pub async fn errors(&self, id: &str) -> Result<Vec<AttemptError>, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query_as("SELECT attempt, error, at_ms FROM jobs_errors WHERE job_id = $1 ORDER BY attempt")
            .bind(id).fetch_all(pool).await)
    }

    /// Jobs by id order, filtered by state, queue and kind (empty = any), after `after`.
    pub async fn list(&self, f: &Filter, after: &str, limit: u32) -> Result<Vec<Job>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM jobs_jobs WHERE ($1 = '' OR state = $1) AND ($2 = '' OR queue = $2) AND ($3 = '' OR kind = $3) \
             AND id > $4 ORDER BY id LIMIT $5"
        );
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&f.state).bind(&f.queue).bind(&f.kind).bind(after).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// Back to `available` now with a fresh attempt count (dead, cancelled or retryable jobs);
    /// `id` = one job, else every job matching the filter. Returns the jobs revived.
    pub async fn retry(
        &self,
        id: Option<&str>,
        f: &Filter,
        now_ms: u64,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let _writer = self.write_lock().await;
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'available', attempt = 0, run_at_ms = $1, finished_at_ms = NULL \
             WHERE state IN ('dead', 'cancelled', 'retryable') AND ($2 = '' OR id = $2) AND ($3 = '' OR queue = $3) \
             AND ($4 = '' OR kind = $4) AND ($5 = '' OR state = $5) RETURNING {COLUMNS}"
        );
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            let jobs: Vec<Job> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(now_ms as i64).bind(id.unwrap_or("")).bind(&f.queue).bind(&f.kind).bind(&f.state)
                .fetch_all(&mut *tx).await?;
            if matches!(self.durable, Durable::Postgres(_)) && !jobs.is_empty() {
                sqlx::query("SELECT pg_notify('mortar_jobs', '')").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(jobs)
        })
    }

    /// Cancels a job that has not run to completion (not running, completed or dead).
    pub async fn cancel(&self, id: &str, now_ms: u64) -> Result<Option<Job>, sqlx::Error> {
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'cancelled', finished_at_ms = $2, {RELEASE_HOLD_ON_FINISH} \
             WHERE id = $1 AND state IN ('scheduled', 'available', 'retryable') RETURNING {COLUMNS}"
        );
        self.update_one(sql, vec![Bind::S(id.into()), Bind::I(now_ms as i64)])
            .await
    }

    /// Deletes finished (dead, cancelled, completed) jobs matching the filter; returns how many.
    pub async fn discard(&self, f: &Filter) -> Result<u64, sqlx::Error> {
        let pick = format!(
            "SELECT id FROM jobs_jobs WHERE state IN ('dead', 'cancelled', 'completed') \
             AND ($1 = '' OR queue = $1) AND ($2 = '' OR kind = $2) AND ($3 = '' OR state = $3){}",
            self.dialect().skip_locked
        );
        self.delete_where(&pick, &[&f.queue, &f.kind, &f.state], None)
            .await
    }

    /// Deletes the jobs `pick` selects (and their errors) in one transaction.
    async fn delete_where(
        &self,
        pick: &str,
        binds: &[&str],
        cutoff: Option<i64>,
    ) -> Result<u64, sqlx::Error> {
        let _writer = self.write_lock().await;
        let jobs = format!("DELETE FROM jobs_jobs WHERE id IN ({pick}) RETURNING id");
        let errors = format!(
            "DELETE FROM jobs_errors WHERE job_id IN ({})",
            self.dialect().strings(1)
        );
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(jobs));
            for b in binds {
                q = q.bind(*b);
            }
            if let Some(c) = cutoff {
                q = q.bind(c);
            }
            let ids: Vec<String> = q.fetch_all(&mut *tx).await?;
            if !ids.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(errors)).bind(json_strings(&ids)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(ids.len() as u64)
        })
    }

    /// Deletes up to `limit` jobs of `queue` (empty = queues without their own retention,
    /// listed in `except`) in `states` that finished before `before_ms`.
    pub async fn prune(
        &self,
        queue: &str,
        except: &[String],
        states: &[&str],
        before_ms: u64,
        limit: u32,
    ) -> Result<u64, sqlx::Error> {
        let states = states
            .iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let pick = format!(
            "SELECT id FROM jobs_jobs WHERE state IN ({states}) AND finished_at_ms < $3 \
             AND (($1 <> '' AND queue = $1) OR ($1 = '' AND queue NOT IN ({}))) LIMIT {limit}{}",
            self.dialect().strings(2),
            self.dialect().skip_locked
        );
        self.delete_where(
            &pick,
            &[queue, &json_strings(except)],
            Some(before_ms as i64),
        )
        .await
    }

    /// Per queue: jobs by state, the oldest due job's `run_at`, completions in the last minute.
    pub async fn counts(&self, now_ms: u64) -> Result<Vec<(String, QueueCounts)>, sqlx::Error> {
        type Rows = (
            Vec<(String, String, i64)>,
            Vec<(String, Option<i64>)>,
            Vec<(String, i64)>,
        );
        let now = now_ms as i64;
        let (by_state, oldest, recent): Rows = with_pool!(&self.durable, pool => (
            sqlx::query_as("SELECT queue, state, count(*) FROM jobs_jobs GROUP BY queue, state ORDER BY queue, state")
                .fetch_all(pool).await?,
            sqlx::query_as("SELECT queue, min(run_at_ms) FROM jobs_jobs WHERE state IN ('available', 'scheduled', 'retryable') \
                AND run_at_ms <= $1 GROUP BY queue").bind(now).fetch_all(pool).await?,
            sqlx::query_as("SELECT queue, count(*) FROM jobs_jobs WHERE state = 'completed' AND finished_at_ms > $1 GROUP BY queue")
                .bind(now - 60_000).fetch_all(pool).await?,
        ));
        let mut out: Vec<(String, QueueCounts)> = Vec::new();
        for (queue, state, n) in by_state {
            match out.last_mut() {
                Some((q, c)) if *q == queue => c.by_state.push((state, n)),
                _ => out.push((
                    queue,
                    QueueCounts {
                        by_state: vec![(state, n)],
                        ..QueueCounts::default()
                    },
                )),
            }
        }
        for (q, c) in &mut out {
            c.oldest_due_ms = oldest.iter().find(|(o, _)| o == q).and_then(|(_, t)| *t);
            c.completed_last_minute = recent.iter().find(|(r, _)| r == q).map_or(0, |(_, n)| *n);
        }
        Ok(out)
    }
}

impl UniqueWhile {
    pub fn as_str(self) -> &'static str {
        match self {
            UniqueWhile::Queued => "queued",
            UniqueWhile::Active => "active",
            UniqueWhile::ForMs => "for_ms",
        }
    }
}

enum Bind {
    I(i64),
    S(String),
    OI(Option<i64>),
}
