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
//!
//! Here: the stored rows and the store's handle. By concern: `dialect` (the SQL fragments that
//! differ, parameters for either backend, one-statement writes), `rows` (decoding on SQLite),
//! `settings` (queue settings and the cache leases read them through), `group` (PostgreSQL's
//! group commit), `insert`, `lease`, `lifecycle` (a leased job's heartbeats, completion,
//! failure and release; promotion and rescue) and `manage` (reads and bulk operations).

mod dialect;
mod group;
mod insert;
mod lease;
mod lifecycle;
mod manage;
mod rows;
mod settings;
#[cfg(test)]
mod tests;

use mortar_core::storage::Durable;
use mortar_core::storage::sql::Db;
use sqlx::{FromRow, PgPool};
use std::sync::Arc;

use self::group::InsertGroup;
use self::settings::SettingsCache;
use crate::state::{State, UniqueWhile};

pub(crate) use self::insert::insert_pg;

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
    /// Attempts made before the last retry: the current budget is `max_attempts` after it.
    pub attempt_base: i32,
    /// When cancelling this running job was asked for.
    pub cancel_requested_at_ms: Option<i64>,
}

impl Job {
    pub fn state(&self) -> State {
        State::parse(&self.state).unwrap_or(State::Available)
    }

    /// When the current (or last) attempt must have ended.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.started_at_ms
            .map(|s| crate::engine::deadline_ms(s as u64, self.timeout_ms as u64))
    }

    /// The job's budget of attempts as of its current (or last) attempt.
    pub fn budget(&self) -> crate::engine::Budget {
        crate::engine::Budget {
            attempt: self.attempt.max(0) as u32,
            base: self.attempt_base.max(0) as u32,
            max_attempts: self.max_attempts.max(0) as u32,
            backoff: (self.backoff_base_ms as u64, self.backoff_max_ms as u64),
        }
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
    /// The pools, and SQLite's writer thread (embedded mode).
    db: Db,
    /// PostgreSQL connections that commit without waiting for the WAL flush, for the writes
    /// a crash may undo without losing anything acknowledged: a worker's lease (undone, the
    /// job is simply available again: at-least-once). A later durable commit on any
    /// connection (a completion, say) flushes the WAL up to it.
    relaxed: Option<PgPool>,
    /// Small plain enqueues on PostgreSQL, combined while one is being written.
    group: Arc<InsertGroup>,
    /// Every queue's settings as PostgreSQL leases last read them.
    settings: Arc<SettingsCache>,
    /// How long a lease lasts (never past the attempt's deadline).
    lease_ms: u64,
}

pub(crate) const COLUMNS: &str = "id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, backoff_base_ms, \
    backoff_max_ms, timeout_ms, lease_id, lease_until_ms, worker, result, unique_key, created_at_ms, finished_at_ms, \
    started_at_ms, tags, unique_while, unique_hold, unique_until_ms, attempt_base, cancel_requested_at_ms";

const QUEUE_COLUMNS: &str = "queue, paused, concurrency, rate_limit, rate_period_ms, rate_tokens, rate_at_ms, target_url, \
    secret, retention_ms, updated_at_ms";

/// A lease waiting on this node, served by an enqueue (see [`JobStore::insert`]).
#[derive(Debug, Clone)]
pub struct LeaseAsk {
    pub queues: Vec<String>,
    pub max: u32,
    pub worker: String,
}

/// What a lease found.
#[derive(Debug)]
pub struct Leased {
    pub jobs: Vec<Job>,
    /// No queue it looked at had a concurrency or rate limit, so finding fewer jobs than it
    /// asked for means there were no more (a limited queue's slots and tokens free up without
    /// any write that announces them).
    pub unlimited: bool,
}

impl JobStore {
    pub fn new(durable: Durable) -> Self {
        let relaxed = match &durable {
            Durable::Sqlite(_) => None,
            Durable::Postgres(pool) => {
                let opts = (*pool.connect_options())
                    .clone()
                    .options([("synchronous_commit", "off")]);
                let relaxed = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(pool.options().get_acquire_timeout())
                    .connect_lazy_with(opts);
                Some(relaxed)
            }
        };
        Self {
            db: Db::new(durable),
            relaxed,
            group: Arc::default(),
            settings: Arc::default(),
            lease_ms: crate::service::JobsConfig::default().lease_ms,
        }
    }

    /// Leases last `lease_ms` (default: `jobs.lease_ms`'s), never past an attempt's deadline.
    #[must_use]
    pub fn with_lease_ms(mut self, lease_ms: u64) -> Self {
        self.lease_ms = lease_ms.max(1);
        self
    }

    pub fn durable(&self) -> &Durable {
        self.db.durable()
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
