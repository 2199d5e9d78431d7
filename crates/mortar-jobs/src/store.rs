//! Jobs in the durable store: SQLite (embedded) or PostgreSQL (cluster, `FOR UPDATE SKIP
//! LOCKED` so workers on every node lease disjoint jobs). The statements are shared; only a few
//! fragments differ by dialect ([`Dialect`]).
//!
//! Writes go different ways to each: on PostgreSQL through the sqlx pool, a batch in a few
//! multi-row statements, and small plain enqueues that meet while one is being written together
//! in one (`InsertGroup`, a group commit); on SQLite through the file's [`SqliteWriter`], each
//! operation (a whole batch insert, lease or completion) one closure on the writer thread,
//! group-committed with whatever else is queued. Reads use the pools on both.
//!
//! Unique jobs are enforced by the database, not by a read-then-write: `unique_hold` carries the
//! unique key while the job blocks duplicates, under a partial unique index on
//! `(queue, unique_hold)`, and an insert that hits it does nothing and returns the holder.
//! Queue limits (concurrency, rate) are enforced under the queue row's lock, so every node and
//! worker sees one count.

use mortar_core::storage::Durable;
use mortar_core::storage::sqlite_writer::{SqliteWriter, positional};
use mortar_core::with_pool;
use rusqlite::OptionalExtension;
use sqlx::{FromRow, PgPool};
use std::sync::Arc;
use tokio::sync::oneshot;

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
#[derive(Debug, Clone)]
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
    /// SQLite's writer thread (embedded mode).
    writer: Option<SqliteWriter>,
    /// PostgreSQL connections that commit without waiting for the WAL flush, for the writes
    /// a crash may undo without losing anything acknowledged: a worker's lease (undone, the
    /// job is simply available again: at-least-once). A later durable commit on any
    /// connection (a completion, say) flushes the WAL up to it.
    relaxed: Option<PgPool>,
    /// Small plain enqueues on PostgreSQL, combined while one is being written.
    group: Arc<InsertGroup>,
    /// Every queue's settings as PostgreSQL leases last read them.
    settings: Arc<SettingsCache>,
}

/// Every queue's settings row, by name.
fn all_queue_rows_sql() -> String {
    format!("SELECT {QUEUE_COLUMNS} FROM jobs_queues ORDER BY queue")
}

/// How old the queue settings a PostgreSQL lease goes by may be: a queue configured on another
/// node is leased its new way within this (this node's own changes count at once).
const SETTINGS_TTL: std::time::Duration = std::time::Duration::from_millis(100);

/// The queue settings leases go by on PostgreSQL, read at most every [`SETTINGS_TTL`] instead of
/// at every lease. They only choose how a queue is leased (limits are always read under the
/// queue's row lock, and the free queues' statement skips paused and limited ones itself), so
/// staleness can delay a queue's jobs by up to the TTL, never break its limits.
#[derive(Debug, Default)]
struct SettingsCache {
    read: std::sync::Mutex<SettingsRead>,
}

/// (settings changes made on this node so far, the last read and when it started).
type SettingsRead = (u64, Option<(std::time::Instant, Arc<Vec<QueueRow>>)>);

impl SettingsCache {
    async fn rows(&self, conn: &mut sqlx::PgConnection) -> Result<Arc<Vec<QueueRow>>, sqlx::Error> {
        let changes = {
            let read = self.lock();
            if let Some((at, rows)) = &read.1
                && at.elapsed() < SETTINGS_TTL
            {
                return Ok(rows.clone());
            }
            read.0
        };
        let at = std::time::Instant::now();
        let rows: Arc<Vec<QueueRow>> = Arc::new(
            sqlx::query_as(sqlx::AssertSqlSafe(all_queue_rows_sql()))
                .fetch_all(&mut *conn)
                .await?,
        );
        let mut read = self.lock();
        // A read that a change here overtook is used once, not kept.
        if read.0 == changes {
            read.1 = Some((at, rows.clone()));
        }
        Ok(rows)
    }

    /// After a settings change on this node: the next lease reads them again.
    fn forget(&self) {
        let mut read = self.lock();
        read.0 += 1;
        read.1 = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SettingsRead> {
        self.read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Enqueues of at most this many plain jobs go through [`InsertGroup`]; bigger batches are a
/// statement of their own already.
const GROUP_MAX_JOBS: usize = 64;

type GroupReply = oneshot::Sender<Result<Vec<(Job, bool)>, String>>;

/// Group commit for small plain enqueues on PostgreSQL (most HTTP enqueues are one job). While
/// one INSERT is in flight, the enqueues that arrive queue up and go together in the next one:
/// one statement and one WAL flush for all of them instead of one each, so a busy server spends
/// its database's time on jobs, not on commits. An idle one writes at once, as before. The
/// statement is atomic, so a failure fails every enqueue in it (none is acknowledged).
#[derive(Default)]
struct InsertGroup {
    state: std::sync::Mutex<GroupState>,
    /// Statements written (tests look at it).
    statements: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct GroupState {
    /// A drain task is writing (it takes whatever is pending when its INSERT returns).
    busy: bool,
    pending: Vec<(Vec<Job>, GroupReply)>,
}

impl std::fmt::Debug for InsertGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InsertGroup").finish_non_exhaustive()
    }
}

impl InsertGroup {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Inserts `jobs` (plain) with whatever else is queued; durable when this returns.
    async fn insert(
        self: &Arc<Self>,
        pool: &PgPool,
        jobs: Vec<Job>,
    ) -> Result<Vec<(Job, bool)>, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut s = self.lock();
            s.pending.push((jobs, reply));
            !std::mem::replace(&mut s.busy, true)
        };
        if lead {
            // A task of its own: the enqueues it writes for are answered even if this request
            // is dropped.
            let (group, pool) = (self.clone(), pool.clone());
            tokio::spawn(async move { group.drain(&pool).await });
        }
        match answer.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(sqlx::Error::Protocol(e)),
            Err(_) => Err(sqlx::Error::PoolClosed), // the drain task ended unexpectedly
        }
    }

    async fn drain(&self, pool: &PgPool) {
        /// Lets the next enqueue lead again if this task ends by a panic (or is cancelled at
        /// runtime shutdown); the replies it held are dropped, so their enqueues fail.
        struct Lead<'a>(&'a InsertGroup, bool);
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                if !self.1 {
                    let mut s = self.0.lock();
                    s.busy = false;
                    s.pending.clear();
                }
            }
        }
        let mut lead = Lead(self, false);
        loop {
            let batch = {
                let mut s = self.lock();
                if s.pending.is_empty() {
                    s.busy = false;
                    lead.1 = true;
                    return;
                }
                std::mem::take(&mut s.pending)
            };
            let (jobs, replies): (Vec<Vec<Job>>, Vec<GroupReply>) = batch.into_iter().unzip();
            let sizes: Vec<usize> = jobs.iter().map(Vec::len).collect();
            let all: Vec<Job> = jobs.into_iter().flatten().collect();
            self.statements
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let refs: Vec<&Job> = all.iter().collect();
            let written = bind_plain(sqlx::query(INSERT_MANY_PG), &refs)
                .execute(pool)
                .await;
            drop(refs);
            match written {
                Ok(_) => {
                    let mut out = all.into_iter().map(|j| (j, false));
                    for (n, reply) in sizes.into_iter().zip(replies) {
                        let _ = reply.send(Ok(out.by_ref().take(n).collect()));
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Where a write goes.
enum Writes<'a> {
    Sqlite(&'a SqliteWriter),
    Postgres(&'a PgPool),
}

pub(crate) const COLUMNS: &str = "id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, backoff_base_ms, \
    backoff_max_ms, timeout_ms, lease_id, lease_until_ms, worker, result, unique_key, created_at_ms, finished_at_ms, \
    started_at_ms, tags, unique_while, unique_hold, unique_until_ms";

const QUEUE_COLUMNS: &str = "queue, paused, concurrency, rate_limit, rate_period_ms, rate_tokens, rate_at_ms, target_url, \
    secret, retention_ms, updated_at_ms";

const INSERT: &str = "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, \
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
}

const SQLITE: Dialect = Dialect {
    strings: "SELECT value FROM json_each(${n})",
    skip_locked: "",
};

const POSTGRES: Dialect = Dialect {
    strings: "SELECT jsonb_array_elements_text(${n}::jsonb)",
    skip_locked: " FOR UPDATE SKIP LOCKED",
};

impl Dialect {
    fn strings(self, n: u32) -> String {
        self.strings.replace("{n}", &n.to_string())
    }

    /// Leases available jobs of the queue(s) in `$4` to lease `$2` for worker `$3`, at most
    /// `$5`, in priority, run_at, id order. One queue: `$4` is its name and the partial index
    /// `jobs_available` is walked in order; several: `$4` is a JSON array of names.
    /// The settings rows of the queues named in the JSON array `$1`.
    fn queue_rows_sql(self) -> String {
        format!(
            "SELECT {QUEUE_COLUMNS} FROM jobs_queues WHERE queue IN ({})",
            self.strings(1)
        )
    }

    fn lease_sql(self, queues: usize) -> String {
        self.lease_sql_where(queues, "")
    }

    /// [`Dialect::lease_sql`] for queues believed to have no limits, from settings that may be
    /// stale: a queue that is paused or limited after all is skipped by the statement itself.
    fn free_lease_sql(self, queues: usize) -> String {
        self.lease_sql_where(
            queues,
            " AND NOT EXISTS (SELECT 1 FROM jobs_queues s WHERE s.queue = jobs_jobs.queue \
             AND (s.paused OR s.concurrency IS NOT NULL OR s.rate_limit IS NOT NULL))",
        )
    }

    fn lease_sql_where(self, queues: usize, guard: &str) -> String {
        let queue = if queues == 1 {
            "queue = $4".to_owned()
        } else {
            format!("queue IN ({})", self.strings(4))
        };
        format!(
            "UPDATE jobs_jobs SET state = 'running', attempt = attempt + 1, lease_id = $2, lease_until_ms = $1 + timeout_ms, \
             worker = $3, started_at_ms = $1, {RELEASE_HOLD_ON_START} \
             WHERE id IN (SELECT id FROM jobs_jobs WHERE state = 'available' AND {queue}{guard} \
             ORDER BY priority, run_at_ms, id LIMIT $5{}) RETURNING {COLUMNS}",
            self.skip_locked
        )
    }
}

/// A lease waiting on this node, served by an enqueue (see [`JobStore::insert`]).
#[derive(Debug, Clone)]
pub struct LeaseAsk {
    pub queues: Vec<String>,
    pub max: u32,
    pub worker: String,
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

/// Ends a time-bound unique hold that has expired, so the key can be taken again.
const EXPIRE_HOLD: &str = "UPDATE jobs_jobs SET unique_hold = NULL WHERE queue = $1 AND unique_hold = $2 AND unique_until_ms <= $3";

/// Jobs without a unique key, many in one statement (PostgreSQL; arrays of each column).
const INSERT_MANY_PG: &str = "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, \
    backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms, tags) \
    SELECT id, queue, kind, payload, priority, run_at_ms, state, 0, max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, \
    created_at_ms, tags FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int8[], $7::text[], \
    $8::int4[], $9::int8[], $10::int8[], $11::int8[], $12::int8[], $13::text[]) \
    AS t(id, queue, kind, payload, priority, run_at_ms, state, max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, \
    created_at_ms, tags)";

/// Plain jobs, some of them handed straight to waiting leases (PostgreSQL): those carry a
/// lease id and worker (`$14`, `$15`) and go in as `running`, started at `$16`, unless their
/// queue is paused or limited (then they go in as they are, and their lease looks again). One
/// statement, no transaction around it: enqueue to start is one round trip and one commit,
/// and a handed-off job is written once instead of twice.
const INSERT_HANDING_OFF_PG: &str = "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, \
    max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms, tags, lease_id, lease_until_ms, worker, \
    started_at_ms) \
    SELECT id, queue, kind, payload, priority, run_at_ms, CASE WHEN h THEN 'running' ELSE state END, \
    CASE WHEN h THEN 1 ELSE 0 END, max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms, tags, \
    CASE WHEN h THEN lease_id END, CASE WHEN h THEN $16 + timeout_ms END, CASE WHEN h THEN worker END, \
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

/// Inserts `jobs` on a PostgreSQL connection (inside the caller's transaction), like
/// [`insert_sqlite`]. Jobs without a unique key go in one statement.
fn col<T>(rows: &[&Job], f: impl Fn(&Job) -> T) -> Vec<T> {
    rows.iter().map(|j| f(j)).collect()
}

/// Binds `$1`–`$13` of [`INSERT_MANY_PG`] and [`INSERT_HANDING_OFF_PG`]: one array per column.
fn bind_plain<'q>(
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
    now_ms: u64,
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
            j.lease_until_ms = Some(now_ms as i64 + j.timeout_ms);
            j.worker = Some(asks[a].worker.clone());
            j.started_at_ms = Some(now_ms as i64);
            leased[a].push(j);
        }
    }
    Ok((jobs.into_iter().map(|j| (j, false)).collect(), leased))
}

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

/// The queues a lease reads: limited ones (under their row lock), and free ones (one
/// statement for all). Paused queues are in neither.
/// What a lease found.
#[derive(Debug)]
pub struct Leased {
    pub jobs: Vec<Job>,
    /// No queue it looked at had a concurrency or rate limit, so finding fewer jobs than it
    /// asked for means there were no more (a limited queue's slots and tokens free up without
    /// any write that announces them).
    pub unlimited: bool,
}

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
) -> rusqlite::Result<Leased> {
    let now = now_ms as i64;
    let rows: Vec<QueueRow> = sqlite_rows(
        c,
        &SQLITE.queue_rows_sql(),
        &[Bind::S(json_strings(queues))],
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
            &SQLITE.lease_sql(1),
            &[
                Bind::I(now),
                Bind::S(lease_id.clone()),
                Bind::S(worker.into()),
                Bind::S(row.queue.clone()),
                Bind::I(allowed),
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
            &SQLITE.lease_sql(free.len()),
            &[
                Bind::I(now),
                Bind::S(lease_id),
                Bind::S(worker.into()),
                Bind::S(queue_param(&free)),
                Bind::I(i64::from(want)),
            ],
        )?);
    }
    by_lease_order(&mut jobs);
    Ok(Leased { jobs, unlimited })
}

const COMPLETE_ONE: &str = "UPDATE jobs_jobs SET state = 'completed', result = $3, finished_at_ms = $4, lease_id = NULL, \
    lease_until_ms = NULL, unique_hold = CASE WHEN unique_while = 'for_ms' THEN unique_hold ELSE NULL END \
    WHERE id = $1 AND lease_id = $2 AND state = 'running' AND lease_until_ms > $4 \
    RETURNING id, queue, kind, started_at_ms";

/// Completes a batch by primary key. `state || ''` keeps the planner off `jobs_leased` (whose
/// predicate `state = 'running'` would match): with it, each batch scanned every running job
/// into a hash join — a cost that grew with the number of jobs in flight — instead of one
/// primary-key probe per completion.
const COMPLETE_MANY_PG: &str = "UPDATE jobs_jobs SET state = 'completed', result = c.result, finished_at_ms = $4, lease_id = NULL, \
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
fn handoff_sqlite(c: &rusqlite::Connection, asks: &[LeaseAsk], now_ms: u64) -> Vec<Vec<Job>> {
    if asks.is_empty() {
        return Vec::new();
    }
    let served = (|| {
        c.execute_batch("SAVEPOINT handoff")?;
        let leased = asks
            .iter()
            .map(|a| lease_sqlite(c, &a.queues, a.max, &a.worker, now_ms).map(|l| l.jobs))
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
async fn handoff_pg(
    conn: &mut sqlx::PgConnection,
    asks: &[LeaseAsk],
    now_ms: u64,
) -> Vec<Vec<Job>> {
    if asks.is_empty() {
        return Vec::new();
    }
    let served = async {
        let mut sp = sqlx::Connection::begin(&mut *conn).await?;
        let mut leased = Vec::with_capacity(asks.len());
        for a in asks {
            leased.push(
                lease_pg(&mut sp, &a.queues, a.max, &a.worker, now_ms, None)
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
async fn lease_pg(
    conn: &mut sqlx::PgConnection,
    queues: &[String],
    max: u32,
    worker: &str,
    now_ms: u64,
    settings: Option<&[QueueRow]>,
) -> Result<Leased, sqlx::Error> {
    let read;
    let rows = match settings {
        Some(rows) => rows,
        None => {
            read = sqlx::query_as::<_, QueueRow>(sqlx::AssertSqlSafe(POSTGRES.queue_rows_sql()))
                .bind(json_strings(queues))
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
        jobs.extend(lease_limited_pg(conn, &row.queue, want, worker, &lease_id, now_ms).await?);
    }
    let want = max - jobs.len() as u32;
    if want > 0 && !free.is_empty() {
        let got: Vec<Job> =
            sqlx::query_as(sqlx::AssertSqlSafe(POSTGRES.free_lease_sql(free.len())))
                .bind(now_ms as i64)
                .bind(&lease_id)
                .bind(worker)
                .bind(queue_param(&free))
                .bind(i64::from(want))
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
    now_ms: u64,
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
    let jobs: Vec<Job> = sqlx::query_as(sqlx::AssertSqlSafe(POSTGRES.lease_sql(1)))
        .bind(now)
        .bind(lease_id)
        .bind(worker)
        .bind(queue)
        .bind(allowed)
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
    pub fn new(durable: Durable) -> Self {
        let (writer, relaxed) = match &durable {
            Durable::Sqlite(pool) => (Some(SqliteWriter::for_pool(pool)), None),
            Durable::Postgres(pool) => {
                let opts = (*pool.connect_options())
                    .clone()
                    .options([("synchronous_commit", "off")]);
                let relaxed = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(pool.options().get_acquire_timeout())
                    .connect_lazy_with(opts);
                (None, Some(relaxed))
            }
        };
        Self {
            durable,
            writer,
            relaxed,
            group: Arc::default(),
            settings: Arc::default(),
        }
    }

    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    fn writes(&self) -> Writes<'_> {
        match (&self.durable, &self.writer) {
            (Durable::Sqlite(_), Some(w)) => Writes::Sqlite(w),
            (Durable::Postgres(pool), _) => Writes::Postgres(pool),
            (Durable::Sqlite(_), None) => unreachable!("JobStore::new gives SQLite its writer"),
        }
    }

    fn dialect(&self) -> Dialect {
        match self.durable {
            Durable::Sqlite(_) => SQLITE,
            Durable::Postgres(_) => POSTGRES,
        }
    }

    /// Runs one write statement and returns the rows it gives back (`RETURNING`).
    async fn write_rows<T>(&self, sql: String, binds: Vec<Bind>) -> Result<Vec<T>, sqlx::Error>
    where
        T: FromSqlite + for<'r> FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin + 'static,
    {
        match self.writes() {
            Writes::Sqlite(w) => w.write(move |c| sqlite_rows(c, &sql, &binds)).await,
            Writes::Postgres(pool) => {
                sqlx::query_as_with(sqlx::AssertSqlSafe(sql), pg_args(binds)?)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// Runs one write statement; returns the rows it changed.
    async fn write_exec(&self, sql: String, binds: Vec<Bind>) -> Result<u64, sqlx::Error> {
        match self.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    c.prepare_cached(&positional(&sql))?
                        .execute(rusqlite::params_from_iter(&binds))
                        .map(|n| n as u64)
                })
                .await
            }
            Writes::Postgres(pool) => sqlx::query_with(sqlx::AssertSqlSafe(sql), pg_args(binds)?)
                .execute(pool)
                .await
                .map(|d| d.rows_affected()),
        }
    }

    /// Runs `sql` (which must `RETURNING` the columns) and returns the row it changed.
    async fn update_one(&self, sql: String, binds: Vec<Bind>) -> Result<Option<Job>, sqlx::Error> {
        Ok(self.write_rows(sql, binds).await?.into_iter().next())
    }

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
        match self.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    let out = insert_sqlite(c, jobs, now)?;
                    Ok((out, handoff_sqlite(c, &asks, now_ms)))
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
                    insert_handing_off_pg(pool, jobs, &asks, now_ms).await
                }
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let out = insert_pg(&mut tx, jobs, now).await?;
                let leased = handoff_pg(&mut tx, &asks, now_ms).await;
                tx.commit().await?;
                Ok((out, leased))
            }
        }
    }

    /// Settings rows of `queues` (only those that have one).
    pub async fn queue_rows(&self, queues: &[String]) -> Result<Vec<QueueRow>, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(self.dialect().queue_rows_sql()))
            .bind(json_strings(queues)).fetch_all(pool).await)
    }

    /// Every queue's settings row.
    pub async fn all_queue_rows(&self) -> Result<Vec<QueueRow>, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(all_queue_rows_sql())).fetch_all(pool).await)
    }

    /// Writes a queue's settings (the limiter state is kept).
    pub async fn put_queue(&self, q: &QueueRow) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO jobs_queues (queue, paused, concurrency, rate_limit, rate_period_ms, target_url, secret, retention_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (queue) DO UPDATE SET paused = excluded.paused, \
             concurrency = excluded.concurrency, rate_limit = excluded.rate_limit, rate_period_ms = excluded.rate_period_ms, \
             target_url = excluded.target_url, secret = excluded.secret, retention_ms = excluded.retention_ms, \
             updated_at_ms = excluded.updated_at_ms";
        self.write_exec(
            sql.into(),
            vec![
                Bind::S(q.queue.clone()),
                Bind::B(q.paused),
                Bind::OI(q.concurrency.map(i64::from)),
                Bind::OI(q.rate_limit.map(i64::from)),
                Bind::OI(q.rate_period_ms),
                Bind::OS(q.target_url.clone()),
                Bind::OS(q.secret.clone()),
                Bind::OI(q.retention_ms),
                Bind::I(q.updated_at_ms),
            ],
        )
        .await?;
        self.settings.forget();
        Ok(())
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
    ) -> Result<Leased, sqlx::Error> {
        let pool = match self.writes() {
            Writes::Sqlite(w) => {
                let (queues, worker) = (queues.to_vec(), worker.to_owned());
                return w
                    .write(move |c| lease_sqlite(c, &queues, max, &worker, now_ms))
                    .await;
            }
            Writes::Postgres(pool) => pool,
        };
        let pool = self.relaxed.as_ref().unwrap_or(pool);
        let mut conn = pool.acquire().await?;
        let settings = self.settings.rows(&mut conn).await?;
        lease_pg(&mut conn, queues, max, worker, now_ms, Some(&settings)).await
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
        self.write_exec(
            "UPDATE jobs_jobs SET state = 'available' WHERE state IN ('scheduled', 'retryable') AND run_at_ms <= $1".into(),
            vec![Bind::I(now_ms as i64)],
        )
        .await
    }

    /// Rescues running jobs whose lease ran out (the worker died, hung or lost its way): the
    /// lost attempt is recorded as an error and the job is `available` again, or `dead` when
    /// that was its last attempt. Returns the jobs that died.
    pub async fn rescue(&self, now_ms: u64) -> Result<Vec<Completed>, sqlx::Error> {
        let now = now_ms as i64;
        match self.writes() {
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
                Bind::S(id.into()),
                Bind::S(lease_id.into()),
                Bind::I((now_ms + lease_ms) as i64),
                Bind::I(now_ms as i64),
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
        match self.writes() {
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
            self.write_exec(
                RECORD_ERROR.into(),
                vec![
                    Bind::S(job.id.clone()),
                    Bind::I(i64::from(job.attempt)),
                    Bind::S(error.into()),
                    Bind::I(now_ms as i64),
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
        let sql = format!(
            "UPDATE jobs_jobs SET state = 'available', attempt = 0, run_at_ms = $1, finished_at_ms = NULL \
             WHERE state IN ('dead', 'cancelled', 'retryable') AND ($2 = '' OR id = $2) AND ($3 = '' OR queue = $3) \
             AND ($4 = '' OR kind = $4) AND ($5 = '' OR state = $5) RETURNING {COLUMNS}"
        );
        let binds = vec![
            Bind::I(now_ms as i64),
            Bind::S(id.unwrap_or("").into()),
            Bind::S(f.queue.clone()),
            Bind::S(f.kind.clone()),
            Bind::S(f.state.clone()),
        ];
        let pool = match self.writes() {
            Writes::Sqlite(_) => return self.write_rows(sql, binds).await,
            Writes::Postgres(pool) => pool,
        };
        let mut tx = pool.begin().await?;
        let jobs: Vec<Job> = sqlx::query_as_with(sqlx::AssertSqlSafe(sql), pg_args(binds)?)
            .fetch_all(&mut *tx)
            .await?;
        if !jobs.is_empty() {
            sqlx::query("SELECT pg_notify('mortar_jobs', '')")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(jobs)
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
            "SELECT id FROM jobs_jobs WHERE state IN ('dead', 'cancelled', 'completed') AND finished_at_ms IS NOT NULL \
             AND ($1 = '' OR queue = $1) AND ($2 = '' OR kind = $2) AND ($3 = '' OR state = $3){}",
            self.dialect().skip_locked
        );
        self.delete_where(
            &pick,
            vec![
                Bind::S(f.queue.clone()),
                Bind::S(f.kind.clone()),
                Bind::S(f.state.clone()),
            ],
        )
        .await
    }

    /// Deletes the jobs `pick` selects (and their errors) in one transaction.
    async fn delete_where(&self, pick: &str, binds: Vec<Bind>) -> Result<u64, sqlx::Error> {
        let jobs = format!("DELETE FROM jobs_jobs WHERE id IN ({pick}) RETURNING id");
        let errors = format!(
            "DELETE FROM jobs_errors WHERE job_id IN ({})",
            self.dialect().strings(1)
        );
        match self.writes() {
            Writes::Sqlite(w) => {
                w.write(move |c| {
                    let ids: Vec<String> = c
                        .prepare_cached(&positional(&jobs))?
                        .query_map(rusqlite::params_from_iter(&binds), |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    if !ids.is_empty() {
                        c.prepare_cached(&positional(&errors))?
                            .execute([json_strings(&ids)])?;
                    }
                    Ok(ids.len() as u64)
                })
                .await
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let ids: Vec<String> =
                    sqlx::query_scalar_with(sqlx::AssertSqlSafe(jobs), pg_args(binds)?)
                        .fetch_all(&mut *tx)
                        .await?;
                if !ids.is_empty() {
                    sqlx::query(sqlx::AssertSqlSafe(errors))
                        .bind(json_strings(&ids))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(ids.len() as u64)
            }
        }
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
            vec![
                Bind::S(queue.into()),
                Bind::S(json_strings(except)),
                Bind::I(before_ms as i64),
            ],
        )
        .await
    }

    /// Per queue: jobs by state, the oldest due job's `run_at`, completions in the last minute.
    /// Each part reads an index made for it (live states: the partial indexes leases and
    /// maintenance use; finished states: `jobs_finished`).
    pub async fn counts(&self, now_ms: u64) -> Result<Vec<(String, QueueCounts)>, sqlx::Error> {
        type Rows = (
            Vec<(String, String, i64)>,
            Vec<(String, Option<i64>)>,
            Vec<(String, i64)>,
        );
        let now = now_ms as i64;
        let (by_state, oldest, recent): Rows = with_pool!(&self.durable, pool => (
            sqlx::query_as(BY_STATE).fetch_all(pool).await?,
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

/// Jobs by queue and state, ordered so, each arm answered by one index.
const BY_STATE: &str = "SELECT queue, state, n FROM ( \
    SELECT queue, 'available' AS state, count(*) AS n FROM jobs_jobs WHERE state = 'available' GROUP BY queue \
    UNION ALL SELECT queue, state, count(*) FROM jobs_jobs WHERE state IN ('scheduled', 'retryable') GROUP BY queue, state \
    UNION ALL SELECT queue, 'running', count(*) FROM jobs_jobs WHERE state = 'running' GROUP BY queue \
    UNION ALL SELECT queue, state, count(*) FROM jobs_jobs WHERE finished_at_ms IS NOT NULL GROUP BY queue, state \
    ) AS c ORDER BY queue, state";

/// A statement parameter, for the statements both backends run.
enum Bind {
    I(i64),
    B(bool),
    S(String),
    OI(Option<i64>),
    OS(Option<String>),
}

impl rusqlite::ToSql for Bind {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Bind::I(i) => i.to_sql(),
            Bind::B(b) => b.to_sql(),
            Bind::S(s) => s.to_sql(),
            Bind::OI(i) => i.to_sql(),
            Bind::OS(s) => s.to_sql(),
        }
    }
}

fn pg_args(binds: Vec<Bind>) -> Result<sqlx::postgres::PgArguments, sqlx::Error> {
    use sqlx::Arguments as _;
    let mut args = sqlx::postgres::PgArguments::default();
    for b in binds {
        match b {
            Bind::I(i) => args.add(i),
            Bind::B(b) => args.add(b),
            Bind::S(s) => args.add(s),
            Bind::OI(i) => args.add(i),
            Bind::OS(s) => args.add(s),
        }
        .map_err(sqlx::Error::Encode)?;
    }
    Ok(args)
}

/// Rows of `sql` (with `$N` parameters) on the SQLite writer's connection.
fn sqlite_rows<T: FromSqlite>(
    c: &rusqlite::Connection,
    sql: &str,
    binds: &[Bind],
) -> rusqlite::Result<Vec<T>> {
    c.prepare_cached(&positional(sql))?
        .query_map(rusqlite::params_from_iter(binds), T::from_sqlite)?
        .collect()
}

/// Decoding of a row on the SQLite writer's connection (sqlx decodes with `FromRow`; both
/// read the columns in the order the statements list them).
trait FromSqlite: Sized {
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

impl FromSqlite for Job {
    /// [`COLUMNS`] in order.
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Job {
            id: r.get(0)?,
            queue: r.get(1)?,
            kind: r.get(2)?,
            payload: r.get(3)?,
            priority: r.get(4)?,
            run_at_ms: r.get(5)?,
            state: r.get(6)?,
            attempt: r.get(7)?,
            max_attempts: r.get(8)?,
            backoff_base_ms: r.get(9)?,
            backoff_max_ms: r.get(10)?,
            timeout_ms: r.get(11)?,
            lease_id: r.get(12)?,
            lease_until_ms: r.get(13)?,
            worker: r.get(14)?,
            result: r.get(15)?,
            unique_key: r.get(16)?,
            created_at_ms: r.get(17)?,
            finished_at_ms: r.get(18)?,
            started_at_ms: r.get(19)?,
            tags: r.get(20)?,
            unique_while: r.get(21)?,
            unique_hold: r.get(22)?,
            unique_until_ms: r.get(23)?,
        })
    }
}

impl FromSqlite for QueueRow {
    /// [`QUEUE_COLUMNS`] in order.
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(QueueRow {
            queue: r.get(0)?,
            paused: r.get(1)?,
            concurrency: r.get(2)?,
            rate_limit: r.get(3)?,
            rate_period_ms: r.get(4)?,
            rate_tokens: r.get(5)?,
            rate_at_ms: r.get(6)?,
            target_url: r.get(7)?,
            secret: r.get(8)?,
            retention_ms: r.get(9)?,
            updated_at_ms: r.get(10)?,
        })
    }
}

impl FromSqlite for Completed {
    /// `id, queue, kind, started_at_ms`.
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Completed {
            id: r.get(0)?,
            queue: r.get(1)?,
            kind: r.get(2)?,
            started_at_ms: r.get(3)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worker leases commit without waiting for the WAL flush; everything else waits.
    #[tokio::test]
    async fn postgres_leases_commit_relaxed_and_the_rest_durably() {
        let Some(services) = mortar_testkit::services("jobs relaxed lease pool") else {
            return;
        };
        let db = services.create_database().await.unwrap();
        let pool = PgPool::connect(&db.url).await.unwrap();
        let store = JobStore::new(Durable::Postgres(pool.clone()));
        let setting = |p: PgPool| async move {
            sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
                .fetch_one(&p)
                .await
                .unwrap()
        };
        assert_eq!(setting(store.relaxed.clone().unwrap()).await, "off");
        assert_eq!(setting(pool.clone()).await, "on");
        pool.close().await;
    }

    /// A job of queue `q`, kind `k`, with no unique key, as an enqueue prepares it.
    fn plain_job(payload: &serde_json::Value) -> Job {
        let new: crate::service::NewJob = serde_json::from_value(
            serde_json::json!({"queue": "q", "kind": "k", "payload": payload}),
        )
        .unwrap();
        crate::service::prepare(&new, "", 1 << 20, 1_000).unwrap()
    }

    /// A fresh database with the jobs schema, and a pool on it.
    async fn with_schema(
        services: &mortar_testkit::Services,
    ) -> (
        mortar_core::storage::Storage,
        PgPool,
        mortar_testkit::TestDatabase,
        tempfile::TempDir,
    ) {
        let db = services.create_database().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let storage =
            mortar_core::storage::Storage::connect(&mortar_core::storage::StorageConfig {
                data_dir: dir.path().into(),
                database_url: Some(db.url.clone()),
                redis_url: None,
                redis_prefix: "m:".into(),
            })
            .await
            .unwrap();
        storage
            .migrate(&crate::service::migrations())
            .await
            .unwrap();
        let pool = PgPool::connect(&db.url).await.unwrap();
        (storage, pool, db, dir)
    }

    /// Small enqueues that meet while one is being written go in together as one statement;
    /// each caller gets exactly its own jobs back, and every job is stored.
    #[tokio::test]
    async fn postgres_concurrent_small_enqueues_are_one_statement() {
        let Some(services) = mortar_testkit::services("jobs grouped insert") else {
            return;
        };
        let (storage, pool, _db, _dir) = with_schema(&services).await;
        let store = JobStore::new(Durable::Postgres(pool.clone()));
        let rows = |caller: usize, n: usize| -> Vec<Job> {
            (0..n)
                .map(|i| plain_job(&serde_json::json!({"caller": caller, "i": i})))
                .collect()
        };
        // On this single-threaded runtime every caller queues before the first write starts.
        let callers: Vec<Vec<Job>> = (0..40).map(|c| rows(c, 1 + c % 3)).collect();
        let answers = futures_util::future::join_all(
            callers
                .iter()
                .map(|jobs| store.insert(jobs.clone(), 1_000, Vec::new())),
        )
        .await;
        for (jobs, answer) in callers.iter().zip(answers) {
            let (out, leased) = answer.unwrap();
            assert!(leased.is_empty());
            let back: Vec<&Job> = out
                .iter()
                .map(|(j, dup)| {
                    assert!(!dup);
                    j
                })
                .collect();
            assert_eq!(back, jobs.iter().collect::<Vec<_>>());
        }
        assert_eq!(
            store
                .group
                .statements
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_jobs")
            .fetch_one(&pool)
            .await
            .unwrap();
        let sent: usize = callers.iter().map(Vec::len).sum();
        assert_eq!(stored as usize, sent);
        // A failing statement fails every enqueue in it, and the next one writes again.
        let dup = callers[0].clone();
        let (a, b) = tokio::join!(
            store.insert(dup.clone(), 1_000, Vec::new()),
            store.insert(rows(99, 1), 1_000, Vec::new())
        );
        assert!(
            a.is_err() && b.is_err(),
            "one statement: both fail on the duplicate id"
        );
        store.insert(rows(100, 2), 1_000, Vec::new()).await.unwrap();
        pool.close().await;
        storage.close().await;
    }

    /// Leases go by queue settings read at most every SETTINGS_TTL; a node whose copy is stale
    /// (here: store `b`, while `a` changes the settings) still never leases from a paused
    /// queue or past a concurrency limit, and takes the limited way once its copy is renewed.
    #[tokio::test]
    async fn postgres_leases_on_stale_settings_keep_pause_and_limits() {
        let Some(services) = mortar_testkit::services("jobs settings cache") else {
            return;
        };
        let (storage, pool, _db, _dir) = with_schema(&services).await;
        let (a, b) = (
            JobStore::new(Durable::Postgres(pool.clone())),
            JobStore::new(Durable::Postgres(pool.clone())),
        );
        let jobs: Vec<Job> = (0..6)
            .map(|i| plain_job(&serde_json::json!({ "i": i })))
            .collect();
        a.insert(jobs, 1_000, Vec::new()).await.unwrap();
        let q = vec!["q".to_owned()];
        assert_eq!(b.lease(&q, 1, "w", 2_000).await.unwrap().jobs.len(), 1); // b reads: q is free
        let put = |paused, concurrency| QueueRow {
            queue: "q".into(),
            paused,
            concurrency,
            ..QueueRow::default()
        };
        a.put_queue(&put(true, None)).await.unwrap();
        assert!(a.lease(&q, 10, "w", 2_000).await.unwrap().jobs.is_empty());
        assert!(
            b.lease(&q, 10, "w", 2_000).await.unwrap().jobs.is_empty(),
            "b's copy says free, but q is paused"
        );
        a.put_queue(&put(false, Some(2))).await.unwrap();
        // b's copy may still say free (then it takes nothing) or be renewed (then it takes the
        // one slot left): never more.
        let mut taken = b.lease(&q, 10, "w", 2_000).await.unwrap().jobs.len();
        assert!(taken <= 1, "concurrency 2 with 1 running, b took {taken}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while taken == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(SETTINGS_TTL / 4).await;
            taken = b.lease(&q, 10, "w", 2_000).await.unwrap().jobs.len();
        }
        assert_eq!(taken, 1, "b's renewed copy leases q within its limit");
        assert!(b.lease(&q, 10, "w", 2_000).await.unwrap().jobs.is_empty());
        pool.close().await;
        storage.close().await;
    }

    /// A batch completion probes the primary key once per job, whatever the statistics say
    /// (here: 2 000 running jobs the planner has not seen), rather than scanning every running
    /// job through `jobs_leased`.
    #[tokio::test]
    async fn postgres_batch_completion_looks_jobs_up_by_id() {
        let Some(services) = mortar_testkit::services("jobs completion plan") else {
            return;
        };
        let (storage, pool, _db, _dir) = with_schema(&services).await;
        sqlx::query(
            "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, \
             backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms, lease_id, lease_until_ms) \
             SELECT 'j' || i, 'q', 'k', '{}', 10, 0, 'running', 1, 5, 1000, 60000, 30000, 0, 'l' || i, 9000000000000 \
             FROM generate_series(1, 2000) AS i",
        )
        .execute(&pool)
        .await
        .unwrap();
        let plan: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {COMPLETE_MANY_PG}")))
                .bind(vec!["j1", "j2", "j3"])
                .bind(vec!["l1", "l2", "l3"])
                .bind(vec![None::<&str>, None, None])
                .bind(1_i64)
                .fetch_all(&pool)
                .await
                .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("jobs_jobs_pkey") && !plan.contains("jobs_leased"),
            "{plan}"
        );
        pool.close().await;
        storage.close().await;
    }
}
