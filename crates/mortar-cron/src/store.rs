//! Schedules and runs in the durable store: SQLite (embedded) or PostgreSQL (cluster). One
//! implementation over both pools.
//!
//! Exactly once rests on two things here. A tick advances a schedule's `next_fire_at_ms` and
//! inserts its runs in **one transaction** (PostgreSQL: the due rows are taken `FOR UPDATE SKIP
//! LOCKED`, so nodes split the due schedules instead of queueing on them; SQLite: `BEGIN
//! IMMEDIATE`, one writer). And `cron_runs` has the primary key `(schedule_id, fire_at_ms)`:
//! a fire time is claimed once, whatever path reaches it (tick, backfill, a re-planned
//! schedule), with `ON CONFLICT DO NOTHING`.

use mortar_core::storage::Durable;
use mortar_core::with_pool;
use sqlx::FromRow;

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
    durable: Durable,
}

const COLUMNS: &str = "id, name, expr, timezone, job, overlap, misfire, catchup_window_ms, jitter_ms, start_at_ms, end_at_ms, \
    enabled, version, next_fire_at_ms, last_fire_at_ms, created_at_ms, updated_at_ms";
const RUN_COLUMNS: &str =
    "schedule_id, fire_at_ms, kind, status, claimed_at_ms, node, job_id, enqueued_at_ms";

impl CronStore {
    pub fn new(durable: Durable) -> Self {
        Self { durable }
    }

    /// Inserts a schedule; `false` when the name is taken.
    pub async fn insert(&self, s: &Schedule) -> Result<bool, sqlx::Error> {
        let sql = format!(
            "INSERT INTO cron_schedules ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17) \
             ON CONFLICT (name) DO NOTHING"
        );
        let done = with_pool!(&self.durable, pool => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&s.id).bind(&s.name).bind(&s.expr).bind(&s.timezone).bind(&s.job).bind(&s.overlap)
            .bind(&s.misfire).bind(s.catchup_window_ms).bind(s.jitter_ms).bind(s.start_at_ms).bind(s.end_at_ms)
            .bind(s.enabled).bind(s.version).bind(s.next_fire_at_ms).bind(s.last_fire_at_ms)
            .bind(s.created_at_ms).bind(s.updated_at_ms)
            .execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// Replaces a schedule's definition (not its id, name or history) if `version` is still
    /// current; bumps the version. `false` when it changed meanwhile or is gone.
    pub async fn replace(&self, s: &Schedule) -> Result<bool, sqlx::Error> {
        let sql = "UPDATE cron_schedules SET expr = $2, timezone = $3, job = $4, overlap = $5, misfire = $6, \
             catchup_window_ms = $7, jitter_ms = $8, start_at_ms = $9, end_at_ms = $10, enabled = $11, \
             next_fire_at_ms = $12, updated_at_ms = $13, version = version + 1 WHERE id = $1 AND version = $14";
        let done = with_pool!(&self.durable, pool => sqlx::query(sql)
            .bind(&s.id).bind(&s.expr).bind(&s.timezone).bind(&s.job).bind(&s.overlap).bind(&s.misfire)
            .bind(s.catchup_window_ms).bind(s.jitter_ms).bind(s.start_at_ms).bind(s.end_at_ms).bind(s.enabled)
            .bind(s.next_fire_at_ms).bind(s.updated_at_ms).bind(s.version)
            .execute(pool).await?.rows_affected());
        Ok(done == 1)
    }

    /// A schedule by id or by name.
    pub async fn get(&self, id_or_name: &str) -> Result<Option<Schedule>, sqlx::Error> {
        let sql = format!("SELECT {COLUMNS} FROM cron_schedules WHERE id = $1 OR name = $1");
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id_or_name).fetch_optional(pool).await)
    }

    /// Schedules by name, after `after`.
    pub async fn list(&self, after: &str, limit: u32) -> Result<Vec<Schedule>, sqlx::Error> {
        let sql =
            format!("SELECT {COLUMNS} FROM cron_schedules WHERE name > $1 ORDER BY name LIMIT $2");
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// Deletes a schedule and its history; `false` when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, sqlx::Error> {
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("DELETE FROM cron_schedules WHERE id = $1").bind(id).execute(&mut *tx).await?.rows_affected();
            sqlx::query("DELETE FROM cron_runs WHERE schedule_id = $1").bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    /// The earliest next fire time of any enabled schedule.
    pub async fn earliest_due(&self) -> Result<Option<i64>, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query_scalar(
            "SELECT MIN(next_fire_at_ms) FROM cron_schedules WHERE enabled AND next_fire_at_ms IS NOT NULL")
            .fetch_one(pool).await)
    }

    /// Takes up to `limit` schedules due at `now` (enabled, `next_fire_at_ms <= now`), lets
    /// `decide` plan each, and in one transaction advances each schedule and claims its runs.
    /// Runs some other path already claimed are skipped.
    pub async fn claim_due<F>(
        &self,
        now_ms: u64,
        limit: u32,
        node: &str,
        mut decide: F,
    ) -> Result<Vec<Claimed>, sqlx::Error>
    where
        F: FnMut(&Schedule) -> Decision + Send,
    {
        let (begin, lock) = match &self.durable {
            Durable::Sqlite(_) => ("BEGIN IMMEDIATE", ""),
            Durable::Postgres(_) => ("BEGIN", " FOR UPDATE SKIP LOCKED"),
        };
        let select = format!(
            "SELECT {COLUMNS} FROM cron_schedules WHERE enabled AND next_fire_at_ms IS NOT NULL AND next_fire_at_ms <= $1 \
             ORDER BY next_fire_at_ms LIMIT $2{lock}"
        );
        let advance = "UPDATE cron_schedules SET next_fire_at_ms = $2, last_fire_at_ms = COALESCE($3, last_fire_at_ms) \
             WHERE id = $1 AND version = $4";
        let insert = format!(
            "INSERT INTO cron_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, 'claimed', $4, $5, NULL, NULL) \
             ON CONFLICT (schedule_id, fire_at_ms) DO NOTHING"
        );
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin_with(begin).await?;
            let due: Vec<Schedule> = sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(now_ms as i64).bind(i64::from(limit)).fetch_all(&mut *tx).await?;
            let mut out = Vec::with_capacity(due.len());
            for mut s in due {
                let d = decide(&s);
                let last = d.fires.last().map(|f| f.0 as i64);
                let next = d.next_fire_at_ms.map(|n| n as i64);
                let n = sqlx::query(advance).bind(&s.id).bind(next).bind(last).bind(s.version)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 0 {
                    continue;
                }
                let mut runs = Vec::with_capacity(d.fires.len());
                for (at, kind) in d.fires {
                    let inserted = sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                        .bind(&s.id).bind(at as i64).bind(kind).bind(now_ms as i64).bind(node)
                        .execute(&mut *tx).await?.rows_affected();
                    if inserted == 1 {
                        runs.push(Run {
                            schedule_id: s.id.clone(),
                            fire_at_ms: at as i64,
                            kind: kind.into(),
                            status: "claimed".into(),
                            claimed_at_ms: now_ms as i64,
                            node: node.into(),
                            job_id: None,
                            enqueued_at_ms: None,
                        });
                    }
                }
                s.next_fire_at_ms = next;
                if last.is_some() {
                    s.last_fire_at_ms = last;
                }
                out.push(Claimed { schedule: s, runs });
            }
            tx.commit().await?;
            Ok(out)
        })
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
        let insert = format!(
            "INSERT INTO cron_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, 'claimed', $4, $5, NULL, NULL) \
             ON CONFLICT (schedule_id, fire_at_ms) DO NOTHING"
        );
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            let mut runs = Vec::new();
            for (at, kind) in fires {
                let n = sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
                    .bind(schedule_id).bind(*at as i64).bind(*kind).bind(now_ms as i64).bind(node)
                    .execute(&mut *tx).await?.rows_affected();
                if n == 1 {
                    runs.push(Run {
                        schedule_id: schedule_id.into(),
                        fire_at_ms: *at as i64,
                        kind: (*kind).into(),
                        status: "claimed".into(),
                        claimed_at_ms: now_ms as i64,
                        node: node.into(),
                        job_id: None,
                        enqueued_at_ms: None,
                    });
                }
            }
            tx.commit().await?;
            Ok(runs)
        })
    }

    /// Records what became of claimed runs (`enqueued` with a job, `skipped`, `buffered`), in
    /// one transaction. Finished runs (enqueued, skipped) are not changed again.
    pub async fn settle(&self, runs: &[Run]) -> Result<(), sqlx::Error> {
        if runs.is_empty() {
            return Ok(());
        }
        let sql = "UPDATE cron_runs SET status = $3, job_id = $4, enqueued_at_ms = $5 \
             WHERE schedule_id = $1 AND fire_at_ms = $2 AND status IN ('claimed', 'buffered')";
        with_pool!(&self.durable, pool => {
            let mut tx = pool.begin().await?;
            for r in runs {
                sqlx::query(sql).bind(&r.schedule_id).bind(r.fire_at_ms).bind(&r.status).bind(&r.job_id)
                    .bind(r.enqueued_at_ms).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
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
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(status).bind(claimed_before as i64).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// The job of the schedule's latest run that has one (for overlap policies).
    pub async fn latest_job(&self, schedule_id: &str) -> Result<Option<String>, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query_scalar(
            "SELECT job_id FROM cron_runs WHERE schedule_id = $1 AND job_id IS NOT NULL ORDER BY fire_at_ms DESC LIMIT 1")
            .bind(schedule_id).fetch_optional(pool).await)
    }

    /// The schedule's buffered run (overlap `buffer_one`), if one is waiting.
    pub async fn buffered(&self, schedule_id: &str) -> Result<Option<Run>, sqlx::Error> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM cron_runs WHERE schedule_id = $1 AND status = 'buffered' ORDER BY fire_at_ms LIMIT 1"
        );
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
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
        with_pool!(&self.durable, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(schedule_id).bind(before).bind(i64::from(limit)).fetch_all(pool).await)
    }

    /// Forgets finished runs claimed before `before`; returns how many.
    pub async fn prune(&self, before: u64) -> Result<u64, sqlx::Error> {
        with_pool!(&self.durable, pool => sqlx::query(
            "DELETE FROM cron_runs WHERE claimed_at_ms < $1 AND status IN ('enqueued', 'skipped')")
            .bind(before as i64).execute(pool).await.map(|r| r.rows_affected()))
    }
}
