//! Leasing: free queues in one statement, limited ones (concurrency, rate) under their row
//! lock, on SQLite's writer or a PostgreSQL connection; and serving waiting leases inside an
//! enqueue (the hand-off).

use mortar_core::storage::sqlite_writer::positional;

use mortar_core::storage::sql::{Dialect, Param, Writes, json, sqlite_rows};

use super::dialect::{free_lease_sql, lease_sql, queue_param, queue_rows_sql};
use super::{Job, JobStore, LeaseAsk, Leased, QUEUE_COLUMNS, QueueRow};

/// The queues a lease reads: limited ones (under their row lock), and free ones (one
/// statement for all). Paused queues are in neither.
fn split_queues(queues: &[String], rows: &[QueueRow]) -> (Vec<QueueRow>, Vec<String>) {
    let mut limited = Vec::new();
    let mut free = Vec::with_capacity(queues.len());
    for q in queues {
        match rows.iter().find(|r| &r.queue == q) {
            Some(r) if r.paused => {}
            Some(r) if r.limited() => limited.push(r.clone()),
            _ => free.push(q.clone()),
        }
    }
    (limited, free)
}

/// How many jobs a limited queue may start now (of `max` wanted), given how many of its jobs
/// run; and its token bucket's level before these starts, when it has one.
fn allowance(row: &QueueRow, max: u32, running: i64, now_ms: u64) -> (i64, Option<f64>) {
    let mut allowed = i64::from(max);
    if let Some(c) = row.concurrency {
        allowed = allowed.min(i64::from(c) - running);
    }
    let bucket = row
        .rate_limit
        .zip(row.rate_period_ms)
        .map(|(limit, period)| {
            crate::engine::refill(
                f64::from(limit),
                period as u64,
                row.rate_tokens,
                row.rate_at_ms.map(|t| t as u64),
                now_ms,
            )
        });
    if let Some(tokens) = bucket {
        allowed = allowed.min(tokens.floor() as i64);
    }
    (allowed, bucket)
}

const RUNNING_IN_QUEUE: &str =
    "SELECT count(*) FROM jobs_jobs WHERE queue = $1 AND state = 'running' AND lease_until_ms > $2";

const SPEND_TOKENS: &str =
    "UPDATE jobs_queues SET rate_tokens = $2, rate_at_ms = $3 WHERE queue = $1";

fn by_lease_order(jobs: &mut [Job]) {
    // RETURNING does not keep the sub-select's order.
    jobs.sort_by(|a, b| (a.priority, a.run_at_ms, &a.id).cmp(&(b.priority, b.run_at_ms, &b.id)));
}

/// A lease on the SQLite writer's connection (the whole of [`JobStore::lease`] in one
/// operation: the writer's transaction is the queue rows' lock).
fn lease_sqlite(
    c: &rusqlite::Connection,
    queues: &[String],
    max: u32,
    worker: &str,
    now_ms: u64,
    lease_ms: u64,
) -> rusqlite::Result<Leased> {
    let now = now_ms as i64;
    let rows: Vec<QueueRow> = sqlite_rows(
        c,
        &queue_rows_sql(Dialect::Sqlite),
        &[Param::from(json(queues))],
    )?;
    let (limited, free) = split_queues(queues, &rows);
    let unlimited = limited.is_empty();
    let lease_id = mortar_core::ids::new_id();
    let mut jobs: Vec<Job> = Vec::new();
    for row in limited {
        let want = max - jobs.len() as u32;
        if want == 0 {
            break;
        }
        let running = match row.concurrency {
            Some(_) => c
                .prepare_cached(&positional(RUNNING_IN_QUEUE))?
                .query_row((&row.queue, now), |r| r.get(0))?,
            None => 0,
        };
        let (allowed, bucket) = allowance(&row, want, running, now_ms);
        if allowed <= 0 {
            continue;
        }
        let got: Vec<Job> = sqlite_rows(
            c,
            &lease_sql(Dialect::Sqlite, 1),
            &[
                Param::from(now),
                Param::from(lease_id.clone()),
                Param::from(worker),
                Param::from(row.queue.clone()),
                Param::from(allowed),
                Param::from(lease_ms as i64),
            ],
        )?;
        if let Some(tokens) = bucket {
            c.prepare_cached(&positional(SPEND_TOKENS))?.execute((
                &row.queue,
                tokens - got.len() as f64,
                now,
            ))?;
        }
        jobs.extend(got);
    }
    let want = max - jobs.len() as u32;
    if want > 0 && !free.is_empty() {
        jobs.extend(sqlite_rows::<Job>(
            c,
            &lease_sql(Dialect::Sqlite, free.len()),
            &[
                Param::from(now),
                Param::from(lease_id),
                Param::from(worker),
                Param::from(queue_param(&free)),
                Param::from(i64::from(want)),
                Param::from(lease_ms as i64),
            ],
        )?);
    }
    by_lease_order(&mut jobs);
    Ok(Leased { jobs, unlimited })
}

/// A hand-off's jobs, or none for each of the `n` leases when it failed (it was rolled back
/// alone; those leases look again).
fn or_nothing<E: std::fmt::Display>(served: Result<Vec<Vec<Job>>, E>, n: usize) -> Vec<Vec<Job>> {
    served.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "jobs: handing new jobs to waiting leases failed; they lease them again");
        vec![Vec::new(); n]
    })
}

/// Serves waiting leases inside an enqueue's transaction on the SQLite writer (see
/// [`JobStore::insert`]), under a savepoint of their own.
pub(super) fn handoff_sqlite(
    c: &rusqlite::Connection,
    asks: &[LeaseAsk],
    now_ms: u64,
    lease_ms: u64,
) -> Vec<Vec<Job>> {
    if asks.is_empty() {
        return Vec::new();
    }
    let served = (|| {
        c.execute_batch("SAVEPOINT handoff")?;
        let leased = asks
            .iter()
            .map(|a| lease_sqlite(c, &a.queues, a.max, &a.worker, now_ms, lease_ms).map(|l| l.jobs))
            .collect::<rusqlite::Result<Vec<_>>>();
        match leased {
            Ok(l) => c.execute_batch("RELEASE handoff").map(|()| l),
            Err(e) => {
                c.execute_batch("ROLLBACK TO handoff; RELEASE handoff")?;
                Err(e)
            }
        }
    })();
    or_nothing(served, asks.len())
}

/// Serves waiting leases inside an enqueue's transaction on PostgreSQL, under a savepoint.
pub(super) async fn handoff_pg(
    conn: &mut sqlx::PgConnection,
    asks: &[LeaseAsk],
    now_ms: u64,
    lease_ms: u64,
) -> Vec<Vec<Job>> {
    if asks.is_empty() {
        return Vec::new();
    }
    let served = async {
        let mut sp = sqlx::Connection::begin(&mut *conn).await?;
        let mut leased = Vec::with_capacity(asks.len());
        for a in asks {
            leased.push(
                lease_pg(
                    &mut sp,
                    &a.queues,
                    a.max,
                    &a.worker,
                    (now_ms, lease_ms),
                    None,
                )
                .await?
                .jobs,
            );
        }
        sp.commit().await?;
        Ok::<_, sqlx::Error>(leased)
    }
    .await;
    or_nothing(served, asks.len())
}

/// A lease on one PostgreSQL connection: limited queues each in a transaction of their own
/// (a savepoint when the connection is in one), then the free ones in one statement.
///
/// `settings`: the queues' settings rows if known (they may be stale: they only choose the way
/// each queue is leased, and the free queues' statement skips any that is paused or limited
/// after all); read here otherwise.
///
/// `at`: now and the lease's length, in milliseconds.
async fn lease_pg(
    conn: &mut sqlx::PgConnection,
    queues: &[String],
    max: u32,
    worker: &str,
    at: (u64, u64),
    settings: Option<&[QueueRow]>,
) -> Result<Leased, sqlx::Error> {
    let (now_ms, lease_ms) = at;
    let read;
    let rows = match settings {
        Some(rows) => rows,
        None => {
            read = sqlx::query_as::<_, QueueRow>(sqlx::AssertSqlSafe(queue_rows_sql(
                Dialect::Postgres,
            )))
            .bind(json(queues))
            .fetch_all(&mut *conn)
            .await?;
            &read
        }
    };
    let (limited, free) = split_queues(queues, rows);
    let unlimited = limited.is_empty();
    let lease_id = mortar_core::ids::new_id();
    let mut jobs = Vec::new();
    for row in limited {
        let want = max - jobs.len() as u32;
        if want == 0 {
            break;
        }
        jobs.extend(lease_limited_pg(conn, &row.queue, want, worker, &lease_id, at).await?);
    }
    let want = max - jobs.len() as u32;
    if want > 0 && !free.is_empty() {
        let got: Vec<Job> = sqlx::query_as(sqlx::AssertSqlSafe(free_lease_sql(
            Dialect::Postgres,
            free.len(),
        )))
        .bind(now_ms as i64)
        .bind(&lease_id)
        .bind(worker)
        .bind(queue_param(&free))
        .bind(i64::from(want))
        .bind(lease_ms as i64)
        .fetch_all(&mut *conn)
        .await?;
        jobs.extend(got);
    }
    by_lease_order(&mut jobs);
    Ok(Leased { jobs, unlimited })
}

/// Leases from one limited queue under its row lock: no more running than `concurrency`,
/// no more starts than the token bucket (`rate_limit` per `rate_period_ms`) holds.
async fn lease_limited_pg(
    conn: &mut sqlx::PgConnection,
    queue: &str,
    max: u32,
    worker: &str,
    lease_id: &str,
    (now_ms, lease_ms): (u64, u64),
) -> Result<Vec<Job>, sqlx::Error> {
    let now = now_ms as i64;
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    // A write first: takes the row lock at once.
    let row: Option<QueueRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE jobs_queues SET updated_at_ms = updated_at_ms WHERE queue = $1 RETURNING {QUEUE_COLUMNS}"
    )))
    .bind(queue)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row.filter(|r| !r.paused) else {
        return Ok(Vec::new());
    };
    let running: i64 = match row.concurrency {
        Some(_) => {
            sqlx::query_scalar(RUNNING_IN_QUEUE)
                .bind(queue)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
        }
        None => 0,
    };
    let (allowed, bucket) = allowance(&row, max, running, now_ms);
    if allowed <= 0 {
        return Ok(Vec::new());
    }
    let jobs: Vec<Job> = sqlx::query_as(sqlx::AssertSqlSafe(lease_sql(Dialect::Postgres, 1)))
        .bind(now)
        .bind(lease_id)
        .bind(worker)
        .bind(queue)
        .bind(allowed)
        .bind(lease_ms as i64)
        .fetch_all(&mut *tx)
        .await?;
    if let Some(tokens) = bucket {
        sqlx::query(SPEND_TOKENS)
            .bind(queue)
            .bind(tokens - jobs.len() as f64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(jobs)
}

impl JobStore {
    /// Leases up to `max` due jobs of `queues` (highest priority, then oldest run_at, then id),
    /// each for the store's `lease_ms` or its own `timeout_ms` if shorter; counts the attempt.
    /// Paused queues are skipped; queues with a concurrency or rate limit are leased under their
    /// row lock within their limits.
    pub async fn lease(
        &self,
        queues: &[String],
        max: u32,
        worker: &str,
        now_ms: u64,
    ) -> Result<Leased, sqlx::Error> {
        let lease_ms = self.lease_ms;
        let pool = match self.db.writes() {
            Writes::Sqlite(w) => {
                let (queues, worker) = (queues.to_vec(), worker.to_owned());
                return w
                    .write(move |c| lease_sqlite(c, &queues, max, &worker, now_ms, lease_ms))
                    .await;
            }
            Writes::Postgres(pool) => pool,
        };
        let pool = self.relaxed.as_ref().unwrap_or(pool);
        let mut conn = pool.acquire().await?;
        let settings = self.settings.rows(&mut conn).await?;
        lease_pg(
            &mut conn,
            queues,
            max,
            worker,
            (now_ms, lease_ms),
            Some(&settings),
        )
        .await
    }
}
