//! Schedules and runs in the durable store: SQLite (embedded) or PostgreSQL (cluster). One
//! implementation over both, with one SQL text per statement (`store/sql.rs`).
//!
//! Exactly once rests on two things here. A tick advances a schedule's `next_fire_at_ms` and
//! inserts its runs in **one transaction** (PostgreSQL: the due rows are taken `FOR UPDATE SKIP
//! LOCKED`, so nodes split the due schedules instead of queueing on them; SQLite: one operation
//! of the file's single writer, below). And `cron_runs` has the primary key `(schedule_id,
//! fire_at_ms)`: a fire time is claimed once, whatever path reaches it (tick, backfill, a
//! re-planned schedule), with `ON CONFLICT DO NOTHING`; `RETURNING` tells which this claim got.
//!
//! Batches are set-based: the rows of an advance, a claim or a settle travel as one JSON array
//! parameter that the statement reads as a table, so a batch of thousands of runs is a handful
//! of statements on either backend, not one per run.
//!
//! On SQLite every write goes through the process's one writer thread for the file
//! ([`mortar_core::storage::sqlite_writer`]): a whole operation (a tick's select, plan, advance and claim) runs on it
//! synchronously, one thread hand-off instead of one per statement and per row as through sqlx,
//! and cron never contends with the other blocks' writers for SQLite's write lock. Reads go
//! through the sqlx pool.

mod batch;
mod sql;

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;

use mortar_core::params;
use mortar_core::storage::Durable;
use mortar_core::storage::sql::{Db, FromSqlite, Writes, json, sqlite_rows};
use mortar_core::with_pool;
use sqlx::{FromRow, PgExecutor};

use batch::{Inserted, Planned, claim_rows, claimed_run};
use sql::{POSTGRES, SQLITE, SettleRow, Sql};

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Schedule {
    pub id: String,
    pub name: String,
    pub expr: String,
    pub timezone: String,
    /// The job template (JSON of a `mortar_jobs::NewJob`).
    pub job: String,
    pub overlap: String,
    pub misfire: String,
    pub catchup_window_ms: i64,
    pub jitter_ms: i64,
    pub start_at_ms: Option<i64>,
    pub end_at_ms: Option<i64>,
    pub enabled: bool,
    /// Bumped by every change, so a plan made from an older copy is not applied.
    pub version: i64,
    /// `None` once the schedule has no more fires (past `end_at`).
    pub next_fire_at_ms: Option<i64>,
    pub last_fire_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One claimed fire of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Run {
    pub schedule_id: String,
    pub fire_at_ms: i64,
    /// `scheduled`, `catchup` (a misfire fired late), `manual` (trigger) or `backfill`.
    pub kind: String,
    /// `claimed` (not yet enqueued), `enqueued`, `skipped` (overlap) or `buffered` (overlap
    /// `buffer_one`, waiting for the previous job).
    pub status: String,
    pub claimed_at_ms: i64,
    pub node: String,
    pub job_id: Option<String>,
    pub enqueued_at_ms: Option<i64>,
}

/// What a tick decided for one due schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Fire times to claim, oldest first, with their kind.
    pub fires: Vec<(u64, &'static str)>,
    pub next_fire_at_ms: Option<u64>,
}

/// A due schedule after its tick: the runs this node claimed (those another path had already
/// claimed are left out).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub schedule: Schedule,
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone)]
pub struct CronStore {
    /// The pools, and SQLite's writer thread, which every write here goes through.
    db: Db,
}

const COLUMNS: &str = "id, name, expr, timezone, job, overlap, misfire, catchup_window_ms, jitter_ms, start_at_ms, end_at_ms, \
    enabled, version, next_fire_at_ms, last_fire_at_ms, created_at_ms, updated_at_ms";
const RUN_COLUMNS: &str =
    "schedule_id, fire_at_ms, kind, status, claimed_at_ms, node, job_id, enqueued_at_ms";

impl CronStore {
    /// The durable store this one runs on.
    pub fn durable(&self) -> &Durable {
        self.db.durable()
    }

    pub fn new(durable: Durable) -> Self {
        Self {
            db: Db::new(durable),
        }
    }

    /// Inserts a schedule; `false` when the name is taken.
    pub async fn insert(&self, s: &Schedule) -> Result<bool, sqlx::Error> {
        let params = params![
            s.id.as_str(),
            s.name.as_str(),
            s.expr.as_str(),
            s.timezone.as_str(),
            s.job.as_str(),
            s.overlap.as_str(),
            s.misfire.as_str(),
            s.catchup_window_ms,
            s.jitter_ms,
            s.start_at_ms,
            s.end_at_ms,
            s.enabled,
            s.version,
            s.next_fire_at_ms,
            s.last_fire_at_ms,
            s.created_at_ms,
            s.updated_at_ms,
        ];
        let done = self.db.exec_all(vec![(&self.sql().insert, params)]).await?;
        Ok(done == [1])
    }

    /// Replaces a schedule's definition (not its id, name or history) if `version` is still
    /// current; bumps the version. `false` when it changed meanwhile or is gone.
    pub async fn replace(&self, s: &Schedule) -> Result<bool, sqlx::Error> {
        let params = params![
            s.id.as_str(),
            s.expr.as_str(),
            s.timezone.as_str(),
            s.job.as_str(),
            s.overlap.as_str(),
            s.misfire.as_str(),
            s.catchup_window_ms,
            s.jitter_ms,
            s.start_at_ms,
            s.end_at_ms,
            s.enabled,
            s.next_fire_at_ms,
            s.updated_at_ms,
            s.version,
        ];
        let done = self
            .db
            .exec_all(vec![(&self.sql().replace, params)])
            .await?;
        Ok(done == [1])
    }

    /// A schedule by id or by name.
    pub async fn get(&self, id_or_name: &str) -> Result<Option<Schedule>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM cron_schedules WHERE id = $1 OR name = $1");
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id_or_name).fetch_optional(pool).await)
    }

    /// Schedules by name, after `after`.
    pub async fn list(&self, after: &str, limit: u32) -> Result<Vec<Schedule>, sqlx::Error> {
        let sql =
            format!("SELECT {COLUMNS} FROM cron_schedules WHERE name > $1 ORDER BY name LIMIT $2");
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// Deletes a schedule and its history; `false` when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, sqlx::Error> {
        let sql = self.sql();
        let done = self
            .db
            .exec_all(vec![
                (&sql.delete, params![id]),
                (&sql.delete_runs, params![id]),
            ])
            .await?;
        Ok(done[0] == 1)
    }

    /// The earliest next fire time of any enabled schedule.
    pub async fn earliest_due(&self) -> Result<Option<i64>, sqlx::Error> {
        with_pool!(self.db.durable(), pool => sqlx::query_scalar(
            "SELECT MIN(next_fire_at_ms) FROM cron_schedules WHERE enabled AND next_fire_at_ms IS NOT NULL")
            .fetch_one(pool).await)
    }

    /// Takes up to `limit` schedules due at `now` (enabled, `next_fire_at_ms <= now`), lets
    /// `decide` plan each, and in one transaction advances each schedule and claims its runs.
    /// Runs some other path already claimed are skipped.
    ///
    /// On SQLite all of it, `decide` included, runs on the writer thread.
    pub async fn claim_due<F>(
        &self,
        now_ms: u64,
        limit: u32,
        node: &str,
        decide: F,
    ) -> Result<Vec<Claimed>, sqlx::Error>
    where
        F: FnMut(&Schedule) -> Decision + Send + 'static,
    {
        let now = now_ms as i64;
        let limit = i64::from(limit);
        match self.db.writes() {
            Writes::Sqlite(w) => {
                let node = node.to_owned();
                let op = move |c: &rusqlite::Connection| {
                    let due: Vec<Schedule> =
                        sqlite_rows(c, &SQLITE.select_due, &params![now, limit])?;
                    // The writer thread serves every block: a panicking plan fails this tick,
                    // not the thread.
                    let planned =
                        std::panic::catch_unwind(AssertUnwindSafe(|| Planned::new(due, decide)))
                            .map_err(|_| {
                                rusqlite::Error::ToSqlConversionFailure(
                                    "cron: planning a tick panicked".into(),
                                )
                            })?;
                    let advanced = match planned.advances() {
                        Some(rows) => sqlite_rows::<String>(c, &SQLITE.advance, &params![rows])?
                            .into_iter()
                            .collect(),
                        None => HashSet::new(),
                    };
                    let inserted = match planned.claims(&advanced) {
                        Some(rows) => sqlite_claim(c, &rows, now, &node)?,
                        None => Inserted::default(),
                    };
                    Ok(planned.claimed(now, &node, &advanced, inserted))
                };
                w.write(op).await
            }
            Writes::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let due: Vec<Schedule> = sqlx::query_as(POSTGRES.select_due.as_str())
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                let planned = Planned::new(due, decide);
                let advanced = match planned.advances() {
                    Some(rows) => sqlx::query_scalar(POSTGRES.advance.as_str())
                        .bind(rows)
                        .fetch_all(&mut *tx)
                        .await?
                        .into_iter()
                        .collect(),
                    None => HashSet::new(),
                };
                let inserted = match planned.claims(&advanced) {
                    Some(rows) => pg_claim(&mut *tx, rows, now, node).await?,
                    None => Inserted::default(),
                };
                tx.commit().await?;
                Ok(planned.claimed(now, node, &advanced, inserted))
            }
        }
    }

    /// Claims given fire times of one schedule (trigger, backfill). Returns the runs claimed
    /// now; times claimed before are left out.
    pub async fn claim(
        &self,
        schedule_id: &str,
        fires: &[(u64, &'static str)],
        node: &str,
        now_ms: u64,
    ) -> Result<Vec<Run>, sqlx::Error> {
        let Some(rows) = claim_rows(fires.iter().map(|(at, kind)| (schedule_id, *at, *kind)))
        else {
            return Ok(Vec::new());
        };
        let now = now_ms as i64;
        let mut inserted = match self.db.writes() {
            Writes::Sqlite(w) => {
                let node = node.to_owned();
                w.write(move |c| sqlite_claim(c, &rows, now, &node)).await?
            }
            Writes::Postgres(pool) => pg_claim(pool, rows, now, node).await?,
        };
        Ok(fires
            .iter()
            .filter(|(at, _)| inserted.take(schedule_id, *at))
            .map(|(at, kind)| claimed_run(schedule_id, *at, kind, now, node))
            .collect())
    }

    /// Records what became of claimed runs (`enqueued` with a job, `skipped`, `buffered`), in
    /// one statement. Finished runs (enqueued, skipped) are not changed again.
    pub async fn settle(&self, runs: &[Run]) -> Result<(), sqlx::Error> {
        if runs.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<SettleRow> = runs.iter().map(SettleRow::from).collect();
        // Key order: concurrent settles of the same runs (sweepers on several nodes) lock
        // them in one order instead of deadlocking.
        rows.sort_unstable_by_key(|r| (r.schedule_id, r.fire_at_ms));
        self.db
            .exec_all(vec![(&self.sql().settle, params![json(&rows)])])
            .await?;
        Ok(())
    }

    /// Runs in `status` claimed before `claimed_before` (crashed between claim and enqueue, or
    /// buffered), oldest first.
    pub async fn pending(
        &self,
        status: &str,
        claimed_before: u64,
        limit: u32,
    ) -> Result<Vec<Run>, sqlx::Error> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM cron_runs WHERE status = $1 AND claimed_at_ms < $2 ORDER BY claimed_at_ms LIMIT $3"
        );
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(status).bind(claimed_before as i64).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// The job of the schedule's latest run that has one (for overlap policies).
    pub async fn latest_job(&self, schedule_id: &str) -> Result<Option<String>, sqlx::Error> {
        with_pool!(self.db.durable(), pool => sqlx::query_scalar(
            "SELECT job_id FROM cron_runs WHERE schedule_id = $1 AND job_id IS NOT NULL ORDER BY fire_at_ms DESC LIMIT 1")
            .bind(schedule_id).fetch_optional(pool).await)
    }

    /// The schedule's buffered run (overlap `buffer_one`), if one is waiting.
    pub async fn buffered(&self, schedule_id: &str) -> Result<Option<Run>, sqlx::Error> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM cron_runs WHERE schedule_id = $1 AND status = 'buffered' ORDER BY fire_at_ms LIMIT 1"
        );
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(schedule_id).fetch_optional(pool).await)
    }

    /// A schedule's runs, newest fire time first, before `before` (exclusive).
    pub async fn runs(
        &self,
        schedule_id: &str,
        before: i64,
        limit: u32,
    ) -> Result<Vec<Run>, sqlx::Error> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM cron_runs WHERE schedule_id = $1 AND fire_at_ms < $2 ORDER BY fire_at_ms DESC LIMIT $3"
        );
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(schedule_id).bind(before).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// Each schedule's latest run of any kind — scheduled, catch-up, manual or backfill — by
    /// claim time (the latest fire time among runs claimed together).
    pub async fn last_runs(&self, schedule_ids: &[&str]) -> Result<Vec<Run>, sqlx::Error> {
        if schedule_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM cron_runs r WHERE r.schedule_id IN ({}) AND r.fire_at_ms = \
             (SELECT m.fire_at_ms FROM cron_runs m WHERE m.schedule_id = r.schedule_id \
              ORDER BY m.claimed_at_ms DESC, m.fire_at_ms DESC LIMIT 1)",
            self.db.dialect().json_strings(1)
        );
        with_pool!(self.db.durable(), pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(json(schedule_ids)).fetch_all(pool).await)
    }

    /// Forgets finished runs claimed before `before`; returns how many.
    pub async fn prune(&self, before: u64) -> Result<u64, sqlx::Error> {
        let done = self
            .db
            .exec_all(vec![(&self.sql().prune, params![before as i64])])
            .await?;
        Ok(done[0])
    }

    /// The write statements in this store's dialect.
    fn sql(&self) -> &'static Sql {
        match self.db.writes() {
            Writes::Sqlite(_) => &SQLITE,
            Writes::Postgres(_) => &POSTGRES,
        }
    }
}

fn sqlite_claim(
    c: &rusqlite::Connection,
    rows: &str,
    now: i64,
    node: &str,
) -> rusqlite::Result<Inserted> {
    let keys: Vec<(String, i64)> = sqlite_rows(c, &SQLITE.claim, &params![rows, now, node])?;
    Ok(keys.into_iter().collect())
}

async fn pg_claim(
    ex: impl PgExecutor<'_>,
    rows: String,
    now: i64,
    node: &str,
) -> Result<Inserted, sqlx::Error> {
    let keys: Vec<(String, i64)> = sqlx::query_as(POSTGRES.claim.as_str())
        .bind(rows)
        .bind(now)
        .bind(node)
        .fetch_all(ex)
        .await?;
    Ok(keys.into_iter().collect())
}

impl FromSqlite for Schedule {
    /// A rusqlite row of [`COLUMNS`].
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Schedule {
            id: r.get("id")?,
            name: r.get("name")?,
            expr: r.get("expr")?,
            timezone: r.get("timezone")?,
            job: r.get("job")?,
            overlap: r.get("overlap")?,
            misfire: r.get("misfire")?,
            catchup_window_ms: r.get("catchup_window_ms")?,
            jitter_ms: r.get("jitter_ms")?,
            start_at_ms: r.get("start_at_ms")?,
            end_at_ms: r.get("end_at_ms")?,
            enabled: r.get("enabled")?,
            version: r.get("version")?,
            next_fire_at_ms: r.get("next_fire_at_ms")?,
            last_fire_at_ms: r.get("last_fire_at_ms")?,
            created_at_ms: r.get("created_at_ms")?,
            updated_at_ms: r.get("updated_at_ms")?,
        })
    }
}
