//! Inserting jobs: unique keys held by the database (a duplicate answered by its holder), plain
//! jobs many to a statement on PostgreSQL, and new jobs handed straight to waiting leases.

use mortar_core::storage::sqlite_writer::positional;
use rusqlite::OptionalExtension;
use sqlx::PgPool;

use super::group::GROUP_MAX_JOBS;
use super::lease::{handoff_pg, handoff_sqlite};
use mortar_core::storage::sql::{FromSqlite, Writes};

use super::{COLUMNS, Job, JobStore, LeaseAsk};

const INSERT: &str = "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, \
    backoff_base_ms, backoff_max_ms, timeout_ms, unique_key, created_at_ms, tags, unique_while, unique_hold, unique_until_ms) \
    VALUES ($1,$2,$3,$4,$5,$6,$7,0,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17) ON CONFLICT DO NOTHING";

/// Ends a time-bound unique hold that has expired, so the key can be taken again.
const EXPIRE_HOLD: &str = "UPDATE jobs_jobs SET unique_hold = NULL WHERE queue = $1 AND unique_hold = $2 AND unique_until_ms <= $3";

/// Jobs without a unique key, many in one statement (PostgreSQL; arrays of each column).
pub(super) const INSERT_MANY_PG: &str = "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, \
    backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms, tags) \
    SELECT id, queue, kind, payload, priority, run_at_ms, state, 0, max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, \
    created_at_ms, tags FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int8[], $7::text[], \
    $8::int4[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::text[]) \
    AS t(id, queue, kind, payload, priority, run_at_ms, state, max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, \
    created_at_ms, tags)";

/// Plain jobs, some of them handed straight to waiting leases (PostgreSQL): those carry a
/// lease id and worker (`$14`, `$15`) and go in as `running`, started at `$16` and leased for
/// `$17` ms (or their `timeout_ms` if shorter), unless their
/// queue is paused or limited (then they go in as they are, and their lease looks again). One
/// statement, no transaction around it: enqueue to start is one round trip and one commit,
/// and a handed-off job is written once instead of twice.
const INSERT_HANDING_OFF_PG: &str = "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, \
    max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms, tags, lease_id, lease_until_ms, worker, \
    started_at_ms) \
    SELECT id, queue, kind, payload, priority, run_at_ms, CASE WHEN h THEN 'running' ELSE state END, \
    CASE WHEN h THEN 1 ELSE 0 END, max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms, tags, \
    CASE WHEN h THEN lease_id END, CASE WHEN h THEN $16 + LEAST(timeout_ms, $17::int8) END, CASE WHEN h THEN worker END, \
    CASE WHEN h THEN $16::int8 END \
    FROM (SELECT t.*, t.lease_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM jobs_queues q WHERE q.queue = t.queue \
    AND (q.paused OR q.concurrency IS NOT NULL OR q.rate_limit IS NOT NULL)) AS h \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int8[], $7::text[], \
    $8::int4[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::text[], $14::text[], $15::text[]) \
    AS t(id, queue, kind, payload, priority, run_at_ms, state, max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, \
    created_at_ms, tags, lease_id, worker)) AS j \
    RETURNING id, state";

fn holder_sql() -> String {
    format!("SELECT {COLUMNS} FROM jobs_jobs WHERE queue = $1 AND unique_hold = $2")
}

fn contended(id: &str) -> String {
    format!("job `{id}`: unique key contended")
}

/// Inserts `jobs` on the SQLite writer's connection: each either inserted or, when its unique
/// key is held, answered by the holder (`true` = duplicate).
fn insert_sqlite(
    c: &rusqlite::Connection,
    jobs: Vec<Job>,
    now: i64,
) -> rusqlite::Result<Vec<(Job, bool)>> {
    let mut insert = c.prepare_cached(&positional(INSERT))?;
    let mut out = Vec::with_capacity(jobs.len());
    'jobs: for j in jobs {
        for attempt in 0..3 {
            if attempt > 0
                && let Some(key) = &j.unique_hold
            {
                c.prepare_cached(&positional(EXPIRE_HOLD))?
                    .execute((&j.queue, key, now))?;
            }
            let inserted = insert.execute(rusqlite::params![
                j.id,
                j.queue,
                j.kind,
                j.payload,
                j.priority,
                j.run_at_ms,
                j.state,
                j.max_attempts,
                j.backoff_base_ms,
                j.backoff_max_ms,
                j.timeout_ms,
                j.unique_key,
                j.created_at_ms,
                j.tags,
                j.unique_while,
                j.unique_hold,
                j.unique_until_ms
            ])?;
            if inserted == 1 {
                out.push((j, false));
                continue 'jobs;
            }
            let holder = c
                .prepare_cached(&positional(&holder_sql()))?
                .query_row((&j.queue, &j.unique_hold), Job::from_sqlite)
                .optional()?;
            if let Some(h) = holder
                && h.unique_until_ms.is_none_or(|until| until > now)
            {
                out.push((h, true));
                continue 'jobs;
            }
            // The hold expired: try again.
        }
        return Err(rusqlite::Error::ToSqlConversionFailure(
            contended(&j.id).into(),
        ));
    }
    Ok(out)
}

fn col<T>(rows: &[&Job], f: impl Fn(&Job) -> T) -> Vec<T> {
    rows.iter().map(|j| f(j)).collect()
}

/// Binds `$1`–`$13` of [`INSERT_MANY_PG`] and [`INSERT_HANDING_OFF_PG`]: one array per column.
pub(super) fn bind_plain<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    rows: &[&Job],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(col(rows, |j| j.id.clone()))
        .bind(col(rows, |j| j.queue.clone()))
        .bind(col(rows, |j| j.kind.clone()))
        .bind(col(rows, |j| j.payload.clone()))
        .bind(col(rows, |j| j.priority))
        .bind(col(rows, |j| j.run_at_ms))
        .bind(col(rows, |j| j.state.clone()))
        .bind(col(rows, |j| j.max_attempts))
        .bind(col(rows, |j| j.backoff_base_ms))
        .bind(col(rows, |j| j.backoff_max_ms))
        .bind(col(rows, |j| j.timeout_ms))
        .bind(col(rows, |j| j.created_at_ms))
        .bind(col(rows, |j| j.tags.clone()))
}

/// Inserts plain jobs (no unique key) on PostgreSQL and hands the available ones straight to
/// the waiting leases `asks`, in lease order (priority, run_at, id), each ask up to its `max`
/// of its queues: one statement. Jobs of a paused or limited queue are inserted as they are
/// and given to no one.
async fn insert_handing_off_pg(
    pool: &PgPool,
    jobs: Vec<Job>,
    asks: &[LeaseAsk],
    (now_ms, lease_ms): (u64, u64),
) -> Result<(Vec<(Job, bool)>, Vec<Vec<Job>>), sqlx::Error> {
    let mut order: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].state == "available")
        .collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&jobs[a], &jobs[b]);
        (a.priority, a.run_at_ms, &a.id).cmp(&(b.priority, b.run_at_ms, &b.id))
    });
    // Which ask each job goes to, and under which lease.
    let mut to: Vec<Option<usize>> = vec![None; jobs.len()];
    let leases: Vec<String> = asks.iter().map(|_| mortar_core::ids::new_id()).collect();
    for (a, ask) in asks.iter().enumerate() {
        let mut room = ask.max as usize;
        for &i in &order {
            if room == 0 {
                break;
            }
            if to[i].is_none() && ask.queues.contains(&jobs[i].queue) {
                to[i] = Some(a);
                room -= 1;
            }
        }
    }
    let rows: Vec<&Job> = jobs.iter().collect();
    let inserted = bind_plain(sqlx::query(INSERT_HANDING_OFF_PG), &rows)
        .bind(
            to.iter()
                .map(|a| a.map(|a| leases[a].clone()))
                .collect::<Vec<_>>(),
        )
        .bind(
            to.iter()
                .map(|a| a.map(|a| asks[a].worker.clone()))
                .collect::<Vec<_>>(),
        )
        .bind(now_ms as i64)
        .bind(lease_ms as i64)
        .fetch_all(pool)
        .await?;
    let mut running = std::collections::HashSet::new();
    for r in &inserted {
        if sqlx::Row::try_get::<&str, _>(r, 1)? == "running" {
            running.insert(sqlx::Row::try_get::<String, _>(r, 0)?);
        }
    }
    let mut leased = vec![Vec::new(); asks.len()];
    for &i in &order {
        if let Some(a) = to[i].filter(|_| running.contains(&jobs[i].id)) {
            let mut j = jobs[i].clone();
            j.state = "running".into();
            j.attempt = 1;
            j.lease_id = Some(leases[a].clone());
            j.lease_until_ms = Some(now_ms as i64 + j.timeout_ms.min(lease_ms as i64));
            j.worker = Some(asks[a].worker.clone());
            j.started_at_ms = Some(now_ms as i64);
            leased[a].push(j);
        }
    }
    Ok((jobs.into_iter().map(|j| (j, false)).collect(), leased))
}

/// Inserts `jobs` on a PostgreSQL connection (inside the caller's transaction), like
/// [`insert_sqlite`]. Jobs without a unique key go in one statement.
pub(crate) async fn insert_pg(
    conn: &mut sqlx::PgConnection,
    jobs: Vec<Job>,
    now: i64,
) -> Result<Vec<(Job, bool)>, sqlx::Error> {
    let plain: Vec<&Job> = jobs.iter().filter(|j| j.unique_hold.is_none()).collect();
    if !plain.is_empty() {
        bind_plain(sqlx::query(INSERT_MANY_PG), &plain)
            .execute(&mut *conn)
            .await?;
    }
    let mut out = Vec::with_capacity(jobs.len());
    'jobs: for j in jobs {
        let Some(key) = j.unique_hold.clone() else {
            out.push((j, false));
            continue;
        };
        for attempt in 0..3 {
            if attempt > 0 {
                sqlx::query(EXPIRE_HOLD)
                    .bind(&j.queue)
                    .bind(&key)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
            }
            let done = sqlx::query(INSERT)
                .bind(&j.id)
                .bind(&j.queue)
                .bind(&j.kind)
                .bind(&j.payload)
                .bind(j.priority)
                .bind(j.run_at_ms)
                .bind(&j.state)
                .bind(j.max_attempts)
                .bind(j.backoff_base_ms)
                .bind(j.backoff_max_ms)
                .bind(j.timeout_ms)
                .bind(&j.unique_key)
                .bind(j.created_at_ms)
                .bind(&j.tags)
                .bind(&j.unique_while)
                .bind(&j.unique_hold)
                .bind(j.unique_until_ms)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 1 {
                out.push((j, false));
                continue 'jobs;
            }
            let holder: Option<Job> = sqlx::query_as(sqlx::AssertSqlSafe(holder_sql()))
                .bind(&j.queue)
                .bind(&key)
                .fetch_optional(&mut *conn)
                .await?;
            if let Some(h) = holder
                && h.unique_until_ms.is_none_or(|until| until > now)
            {
                out.push((h, true));
                continue 'jobs;
            }
            // The hold expired, or the holder let go between the two statements: try again.
        }
        return Err(sqlx::Error::Protocol(contended(&j.id)));
    }
    Ok(out)
}

impl JobStore {
    /// Inserts jobs in one transaction (all or none). A job whose unique key is held comes back
    /// as the holder, marked duplicate.
    ///
    /// `asks` are leases waiting on this node: each is served in the same transaction, after
    /// the insert (so a new job can start as soon as its enqueue commits, without a second
    /// commit), and the jobs leased for each come back in the same order. A failing hand-off
    /// is rolled back alone and answered with no jobs: it never fails the enqueue.
    pub async fn insert(
        &self,
        jobs: Vec<Job>,
        now_ms: u64,
        asks: Vec<LeaseAsk>,
    ) -> Result<(Vec<(Job, bool)>, Vec<Vec<Job>>), sqlx::Error> {
        let now = now_ms as i64;
        let lease_ms = self.lease_ms;
        match self.db.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    let out = insert_sqlite(c, jobs, now)?;
                    Ok((out, handoff_sqlite(c, &asks, now_ms, lease_ms)))
                })
                .await
            }
            // Plain jobs: one statement, atomic by itself, so no BEGIN/COMMIT round trips.
            Writes::Postgres(pool) if jobs.iter().all(|j| j.unique_hold.is_none()) => {
                if asks.is_empty() && jobs.len() <= GROUP_MAX_JOBS {
                    Ok((self.group.insert(pool, jobs).await?, Vec::new()))
                } else if asks.is_empty() {
                    Ok((
                        insert_pg(&mut *pool.acquire().await?, jobs, now).await?,
                        Vec::new(),
                    ))
                } else {
                    insert_handing_off_pg(pool, jobs, &asks, (now_ms, lease_ms)).await
                }
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let out = insert_pg(&mut tx, jobs, now).await?;
                let leased = handoff_pg(&mut tx, &asks, now_ms, lease_ms).await;
                tx.commit().await?;
                Ok((out, leased))
            }
        }
    }
}
