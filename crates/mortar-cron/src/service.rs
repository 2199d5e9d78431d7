//! `CronService`: validation, the scheduler loop every node runs, the fire path (claim →
//! enqueue → settle), overlap and misfire policies, the sweeper, and the operations.
//!
//! The fire path: a tick claims due fire times in the database (see `store`), then enqueues
//! one job per claimed run into mortar-jobs with the unique key `cron:{schedule_id}:{fire_at}`,
//! then records the job on the run. A node that dies between claim and enqueue leaves runs in
//! `claimed`; any node's sweeper enqueues them after `cron.sweep_after_ms`, and the unique key
//! makes a second enqueue of the same run return the first job instead of a new one.

use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use mortar_core::FieldError;
use mortar_core::api::NAME;
use mortar_core::clock::{Clock, rfc3339};
use mortar_core::storage::Storage;
use mortar_jobs::engine::UniqueWhile;
use mortar_jobs::{JobsService, NewJob};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::engine::{self, CronExpr, Misfire, Overlap, PlanLimits, Timing};
use crate::error::CronError;
use crate::store::{CronStore, Decision, Run, Schedule};

pub const FIRES: &str = "mortar_cron_fires_total";
pub const FIRE_LAG: &str = "mortar_cron_fire_lag_seconds";
pub const MISFIRES: &str = "mortar_cron_misfires_total";
pub const OVERLAPS_SKIPPED: &str = "mortar_cron_overlaps_skipped_total";
pub const ENQUEUE_FAILED: &str = "mortar_cron_enqueue_failed_total";

/// The block's migrations.
pub fn migrations() -> mortar_core::storage::Migrations {
    mortar_core::storage::Migrations {
        block: "cron",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

/// `[cron]` in `mortar.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CronConfig {
    /// Run the scheduler loop on this node (every node may; there is no leader).
    pub scheduler: bool,
    /// How often an idle node re-checks for schedules created or changed on other nodes.
    pub poll_ms: u64,
    /// Most due schedules one tick claims in one transaction.
    pub batch: u32,
    /// A fire time more than this far behind is a misfire (its schedule's policy applies).
    pub misfire_threshold_ms: u64,
    /// Largest `catchup_window_ms` a schedule may ask for.
    pub max_catchup_window_ms: u64,
    /// Most fire times one backfill may claim.
    pub max_backfill: u32,
    /// How long run history is kept (also how long a fire's unique key blocks a duplicate job).
    pub history_retention_ms: u64,
    /// A run claimed this long ago and still not enqueued (its node died) is enqueued by any node.
    pub sweep_after_ms: u64,
}

impl Default for CronConfig {
    fn default() -> Self {
        Self {
            scheduler: true,
            poll_ms: 1000,
            batch: 1000,
            misfire_threshold_ms: 5_000,
            max_catchup_window_ms: 7 * 86_400_000,
            max_backfill: 10_000,
            history_retention_ms: 7 * 86_400_000,
            sweep_after_ms: 10_000,
        }
    }
}

impl CronConfig {
    pub const DOCS: &[mortar_core::config::KeyDoc] = &[
        mortar_core::config::KeyDoc::new(
            "cron.scheduler",
            "run the scheduler on this node (every node may: fires are claimed in the database, no leader)",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.poll_ms",
            "how often an idle node re-checks for schedules created or changed on other nodes",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.batch",
            "most due schedules one tick claims in one transaction",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.misfire_threshold_ms",
            "a fire time more than this far behind is a misfire; the schedule's misfire policy decides",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.max_catchup_window_ms",
            "largest catchup_window_ms a schedule may ask for",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.max_backfill",
            "most fire times one backfill request may claim",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.history_retention_ms",
            "how long run history is kept (and how long a fire's job unique key blocks duplicates)",
        ),
        mortar_core::config::KeyDoc::new(
            "cron.sweep_after_ms",
            "a run claimed this long ago but not enqueued (its node died) is enqueued by any node",
        ),
    ];

    pub fn validate(&self) -> Result<(), mortar_core::config::ConfigError> {
        let bad = |key: &str, why: &str| {
            Err(mortar_core::config::ConfigError(format!(
                "key `cron.{key}`: {why}"
            )))
        };
        if !(10..=60_000).contains(&self.poll_ms) {
            return bad("poll_ms", "must be 10 to 60000");
        }
        if !(1..=10_000).contains(&self.batch) {
            return bad("batch", "must be 1 to 10000");
        }
        if self.misfire_threshold_ms == 0 {
            return bad("misfire_threshold_ms", "must be at least 1");
        }
        if self.max_backfill == 0 {
            return bad("max_backfill", "must be at least 1");
        }
        if self.history_retention_ms < 60_000 {
            return bad("history_retention_ms", "must be at least 60000");
        }
        if self.sweep_after_ms < 1_000 {
            return bad("sweep_after_ms", "must be at least 1000");
        }
        Ok(())
    }
}

/// A schedule as created or replaced through the API.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique; 1 to 128 of letters, digits, `_`, `.`, `-`, `:`.
    pub name: String,
    /// 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or a macro
    /// (@yearly, @monthly, @weekly, @daily, @hourly). Ranges, steps, lists, names, L, W, #.
    pub expr: String,
    /// IANA time zone the expression is read in (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The job each fire enqueues: a mortar-jobs job (`queue`, `kind`, `payload`, `priority`,
    /// `max_attempts`, …). Cron sets its unique key and run time.
    #[schema(value_type = Object)]
    pub job: serde_json::Value,
    /// While the previous fire's job is unfinished: `allow` (default), `skip` or `buffer_one`.
    #[serde(default = "allow")]
    pub overlap: String,
    /// Fires missed while no node ran: `skip`, `fire_once` (default) or `fire_all`.
    #[serde(default = "fire_once")]
    pub misfire: String,
    /// Missed fires older than this are dropped whatever the policy (default 1 hour).
    #[serde(default = "hour")]
    pub catchup_window_ms: u64,
    /// Each fire's job runs up to this much later (stable per fire; 0 to 3600000).
    #[serde(default)]
    pub jitter_ms: u64,
    /// No fires before this instant (RFC 3339).
    pub start_at: Option<String>,
    /// No fires after this instant (RFC 3339).
    pub end_at: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn utc() -> String {
    "UTC".into()
}
fn allow() -> String {
    "allow".into()
}
fn fire_once() -> String {
    "fire_once".into()
}
fn hour() -> u64 {
    3_600_000
}
fn yes() -> bool {
    true
}

/// A run with what became of its job.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run: Run,
    /// The job's state (`available`, `running`, `completed`, `dead`, …) when it has one.
    pub job_state: Option<String>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// What a backfill did.
#[derive(Debug, Clone)]
pub struct Backfilled {
    pub runs: Vec<Run>,
    /// Fire times in the range that had already been claimed (not fired again).
    pub already: usize,
}

pub struct CronService {
    store: CronStore,
    jobs: Arc<JobsService>,
    cfg: CronConfig,
    clock: Arc<dyn Clock>,
    node: String,
    wake: Notify,
    housekeeping: std::sync::Mutex<Housekeeping>,
    stopping: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Housekeeping {
    swept_at_ms: u64,
    pruned_at_ms: u64,
}

impl std::fmt::Debug for CronService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CronService")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn jobs_err(e: mortar_jobs::error::JobsError) -> CronError {
    use mortar_jobs::error::JobsError as J;
    match e {
        J::Invalid(errors) => CronError::Rejected(
            errors
                .into_iter()
                .map(|f| FieldError::new(format!("job.{}", f.field), f.message))
                .collect(),
        ),
        J::NotFound(what) => CronError::NotFound(what),
        J::Conflict(why) => CronError::Conflict(why),
        J::Unavailable(what) => CronError::Unavailable(what),
    }
}

fn finished(state: &str) -> bool {
    matches!(state, "completed" | "dead" | "cancelled")
}

/// A schedule's timing from its stored row (validated when it was stored).
fn timing_of(s: &Schedule) -> Option<Timing> {
    let mut t = Timing::new(
        CronExpr::parse(&s.expr).ok()?,
        engine::parse_zone(&s.timezone).ok()?,
    );
    t.start_at_ms = s.start_at_ms.map(|v| v as u64);
    t.end_at_ms = s.end_at_ms.map(|v| v as u64);
    Some(t)
}

fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}:{}", std::process::id())
}

impl CronService {
    /// A failed store call as the 503 naming the store (used as `.map_err(self.db())`).
    fn db(&self) -> impl Fn(sqlx::Error) -> CronError + use<> {
        let durable = self.store.durable().clone();
        move |e| CronError::Unavailable(durable.failed("cron", &e).into())
    }

    /// The service (no background work: call [`CronService::spawn`] for the scheduler loop).
    pub fn new(
        storage: &Storage,
        jobs: Arc<JobsService>,
        cfg: &CronConfig,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        describe_metrics();
        Arc::new(Self {
            store: CronStore::new(storage.durable.clone()),
            jobs,
            cfg: cfg.clone(),
            clock,
            node: node_name(),
            wake: Notify::new(),
            housekeeping: std::sync::Mutex::new(Housekeeping::default()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// This node's name in run history.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Starts the scheduler loop (when `cron.scheduler` is on): ticks at each next fire time,
    /// or every `poll_ms` when idle, or at once when a schedule changes on this node.
    pub fn spawn(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if !self.cfg.scheduler {
            return None;
        }
        let svc = self.clone();
        Some(tokio::spawn(async move { svc.scheduler_loop().await }))
    }

    async fn scheduler_loop(self: Arc<Self>) {
        tracing::info!(node = %self.node, "cron scheduler started");
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                tracing::info!("cron scheduler stopped");
                return;
            }
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let claimed = match self.tick().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cron: tick failed; retrying");
                    tokio::time::sleep(Duration::from_millis(self.cfg.poll_ms)).await;
                    continue;
                }
            };
            let now = self.clock.now_ms();
            let wait = match self.store.earliest_due().await {
                Ok(Some(t)) if t as u64 > now => (t as u64 - now).min(self.cfg.poll_ms),
                // More due: go on at once, unless nothing was claimed (another node holds them).
                Ok(Some(_)) if claimed > 0 => 0,
                Ok(Some(_)) => 5,
                Ok(None) | Err(_) => self.cfg.poll_ms,
            };
            if wait > 0 {
                let _ = tokio::time::timeout(Duration::from_millis(wait), woken).await;
            }
        }
    }

    /// Stops the scheduler loop after its current tick (graceful shutdown; a tick cut short by a
    /// crash instead is recovered by the other nodes' sweepers).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    /// One pass of the scheduler at the clock's `now`: claims every due fire (in batches),
    /// applies overlap policies, enqueues, and does housekeeping (sweeping runs whose node
    /// died, releasing buffered runs, pruning history). Returns how many runs it claimed.
    pub async fn tick(&self) -> Result<usize, CronError> {
        let now = self.clock.now_ms();
        let limits = PlanLimits {
            misfire_threshold_ms: self.cfg.misfire_threshold_ms,
            max_fires: 1000,
        };
        let threshold = self.cfg.misfire_threshold_ms;
        let claimed = self
            .store
            .claim_due(now, self.cfg.batch, &self.node, move |s| {
                decide(s, now, threshold, limits)
            })
            .await
            .map_err(self.db())?;
        let mut total = 0;
        let mut ready = Vec::new();
        let mut held = Vec::new();
        for c in claimed {
            total += c.runs.len();
            let overlap = Overlap::parse(&c.schedule.overlap).unwrap_or(Overlap::Allow);
            if overlap == Overlap::Allow || c.runs.is_empty() {
                ready.extend(c.runs.into_iter().map(|r| (c.schedule.clone(), r)));
                continue;
            }
            let mut busy = self.previous_unfinished(&c.schedule.id).await?;
            let mut buffered = false;
            if overlap == Overlap::BufferOne
                && let Some(waiting) = self
                    .store
                    .buffered(&c.schedule.id)
                    .await
                    .map_err(self.db())?
            {
                if busy {
                    buffered = true;
                } else {
                    // The waiting fire goes first; this tick's fires queue behind it.
                    busy = true;
                    ready.push((c.schedule.clone(), waiting));
                }
            }
            for mut r in c.runs {
                if !busy {
                    busy = true;
                    ready.push((c.schedule.clone(), r));
                } else if overlap == Overlap::BufferOne && !buffered {
                    buffered = true;
                    r.status = "buffered".into();
                    held.push(r);
                } else {
                    metrics::counter!(OVERLAPS_SKIPPED, "policy" => overlap.as_str()).increment(1);
                    r.status = "skipped".into();
                    held.push(r);
                }
            }
        }
        self.store.settle(&held).await.map_err(self.db())?;
        self.enqueue_runs(ready).await?;
        self.housekeeping(now).await?;
        Ok(total)
    }

    async fn previous_unfinished(&self, schedule_id: &str) -> Result<bool, CronError> {
        let Some(job_id) = self
            .store
            .latest_job(schedule_id)
            .await
            .map_err(self.db())?
        else {
            return Ok(false);
        };
        match self.jobs.get(&job_id).await {
            Ok((job, _)) => Ok(!finished(&job.state)),
            Err(mortar_jobs::error::JobsError::NotFound(_)) => Ok(false),
            Err(e) => Err(jobs_err(e)),
        }
    }

    fn new_job(&self, s: &Schedule, fire_at: u64) -> Result<NewJob, String> {
        let mut job: NewJob = serde_json::from_str(&s.job).map_err(|e| e.to_string())?;
        job.unique_key = Some(format!("cron:{}:{fire_at}", s.id));
        job.unique_while = Some(UniqueWhile::ForMs);
        job.unique_for_ms = Some(self.cfg.history_retention_ms);
        let jitter = engine::jitter_ms(&s.id, fire_at, s.jitter_ms as u64);
        if jitter > 0 {
            job.run_at = Some(rfc3339(fire_at + jitter));
        }
        Ok(job)
    }

    /// Enqueues claimed runs as one batch and records their jobs. A batch the jobs block
    /// rejects is retried run by run, so one bad template does not hold the others back.
    async fn enqueue_runs(&self, runs: Vec<(Schedule, Run)>) -> Result<(), CronError> {
        for chunk in runs.chunks(5_000) {
            let mut jobs = Vec::with_capacity(chunk.len());
            let mut keep = Vec::with_capacity(chunk.len());
            let mut failed = Vec::new();
            for (s, r) in chunk {
                match self.new_job(s, r.fire_at_ms as u64) {
                    Ok(j) => {
                        jobs.push(j);
                        keep.push(r.clone());
                    }
                    Err(e) => {
                        tracing::error!(schedule = %s.name, error = %e, "cron: bad job template");
                        let mut r = r.clone();
                        r.status = "failed".into();
                        failed.push(r);
                    }
                }
            }
            self.store.settle(&failed).await.map_err(self.db())?;
            if jobs.is_empty() {
                continue;
            }
            match self.jobs.enqueue(&jobs).await {
                Ok(done) => {
                    let settled = self.settle_enqueued(keep, done.into_iter().map(|e| e.job.id));
                    self.store.settle(&settled).await.map_err(self.db())?;
                }
                Err(mortar_jobs::error::JobsError::Invalid(errors)) if jobs.len() > 1 => {
                    tracing::warn!(?errors, "cron: a batch was rejected; enqueueing one by one");
                    for (job, run) in jobs.into_iter().zip(keep) {
                        match self.jobs.enqueue(std::slice::from_ref(&job)).await {
                            Ok(done) => {
                                let settled = self
                                    .settle_enqueued(vec![run], done.into_iter().map(|e| e.job.id));
                                self.store.settle(&settled).await.map_err(self.db())?;
                            }
                            Err(mortar_jobs::error::JobsError::Invalid(errors)) => {
                                tracing::error!(schedule = %run.schedule_id, ?errors, "cron: job rejected");
                                metrics::counter!(ENQUEUE_FAILED).increment(1);
                                let mut run = run;
                                run.status = "failed".into();
                                self.store.settle(&[run]).await.map_err(self.db())?;
                            }
                            Err(e) => return Err(jobs_err(e)),
                        }
                    }
                }
                Err(mortar_jobs::error::JobsError::Invalid(errors)) => {
                    tracing::error!(schedule = %keep[0].schedule_id, ?errors, "cron: job rejected");
                    metrics::counter!(ENQUEUE_FAILED).increment(1);
                    let mut run = keep.remove(0);
                    run.status = "failed".into();
                    self.store.settle(&[run]).await.map_err(self.db())?;
                }
                Err(e) => return Err(jobs_err(e)),
            }
        }
        Ok(())
    }

    fn settle_enqueued(&self, runs: Vec<Run>, ids: impl Iterator<Item = String>) -> Vec<Run> {
        let at = self.clock.now_ms();
        runs.into_iter()
            .zip(ids)
            .map(|(mut r, id)| {
                r.status = "enqueued".into();
                r.job_id = Some(id);
                r.enqueued_at_ms = Some(at as i64);
                metrics::counter!(FIRES, "kind" => kind_label(&r.kind)).increment(1);
                if r.kind == "scheduled" {
                    let lag = at.saturating_sub(r.fire_at_ms as u64);
                    metrics::histogram!(FIRE_LAG).record(lag as f64 / 1000.0);
                }
                r
            })
            .collect()
    }

    /// Sweeps runs whose node died before enqueueing them, releases buffered runs whose
    /// previous job finished, prunes old history. At most once a second (prune once a minute).
    async fn housekeeping(&self, now: u64) -> Result<(), CronError> {
        let (sweep, prune) = {
            let mut h = self
                .housekeeping
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // abs_diff: a clock stepped back must not stop housekeeping until it catches up.
            let sweep = now.abs_diff(h.swept_at_ms) >= 1_000;
            let prune = now.abs_diff(h.pruned_at_ms) >= 60_000;
            if sweep {
                h.swept_at_ms = now;
            }
            if prune {
                h.pruned_at_ms = now;
            }
            (sweep, prune)
        };
        if sweep {
            self.sweep(now).await?;
        }
        if prune {
            let n = self
                .store
                .prune(now.saturating_sub(self.cfg.history_retention_ms))
                .await
                .map_err(self.db())?;
            if n > 0 {
                tracing::debug!(runs = n, "cron: pruned history");
            }
        }
        Ok(())
    }

    /// Enqueues stale claimed runs and due buffered runs. Safe on every node at once: the
    /// job's unique key makes a second enqueue of the same run return the first job.
    pub async fn sweep(&self, now: u64) -> Result<usize, CronError> {
        let stale = self
            .store
            .pending(
                "claimed",
                now.saturating_sub(self.cfg.sweep_after_ms),
                self.cfg.batch,
            )
            .await
            .map_err(self.db())?;
        let mut ready = Vec::new();
        for r in stale {
            if let Some(s) = self.store.get(&r.schedule_id).await.map_err(self.db())? {
                tracing::info!(schedule = %s.name, fire_at = %rfc3339(r.fire_at_ms as u64), claimed_by = %r.node, "cron: enqueueing a run its node left claimed");
                ready.push((s, r));
            }
        }
        for r in self
            .store
            .pending("buffered", now + 1, self.cfg.batch)
            .await
            .map_err(self.db())?
        {
            if self.previous_unfinished(&r.schedule_id).await? {
                continue;
            }
            if let Some(s) = self.store.get(&r.schedule_id).await.map_err(self.db())? {
                ready.push((s, r));
            }
        }
        let n = ready.len();
        self.enqueue_runs(ready).await?;
        Ok(n)
    }

    // ---- operations ----

    fn check(&self, spec: &ScheduleSpec, now: u64) -> Result<(Schedule, Timing), CronError> {
        let mut bad = Vec::new();
        let mut rejected = Vec::new();
        if !NAME.is_valid(&spec.name) {
            bad.push(FieldError::new("name", NAME.describe()));
        }
        let expr = CronExpr::parse(&spec.expr)
            .map_err(|e| bad.push(FieldError::new("expr", e.to_string())))
            .ok();
        let zone: Option<Tz> = engine::parse_zone(&spec.timezone)
            .map_err(|e| bad.push(FieldError::new("timezone", e)))
            .ok();
        if Overlap::parse(&spec.overlap).is_none() {
            bad.push(FieldError::new("overlap", "one of allow, skip, buffer_one"));
        }
        if Misfire::parse(&spec.misfire).is_none() {
            bad.push(FieldError::new(
                "misfire",
                "one of skip, fire_once, fire_all",
            ));
        }
        let time = |field: &str, v: &Option<String>, bad: &mut Vec<FieldError>| match v {
            None => None,
            Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(t) if t.timestamp_millis() >= 0 => Some(t.timestamp_millis() as u64),
                _ => {
                    bad.push(FieldError::new(
                        field,
                        "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
                    ));
                    None
                }
            },
        };
        let start_at = time("start_at", &spec.start_at, &mut bad);
        let end_at = time("end_at", &spec.end_at, &mut bad);
        if let (Some(s), Some(e)) = (start_at, end_at)
            && e <= s
        {
            rejected.push(FieldError::new("end_at", "must be after start_at"));
        }
        if spec.catchup_window_ms > self.cfg.max_catchup_window_ms {
            rejected.push(FieldError::new(
                "catchup_window_ms",
                format!(
                    "{} is over cron.max_catchup_window_ms ({})",
                    spec.catchup_window_ms, self.cfg.max_catchup_window_ms
                ),
            ));
        }
        if spec.jitter_ms > 3_600_000 {
            rejected.push(FieldError::new("jitter_ms", "must be 0 to 3600000"));
        }
        let job = self.check_job(&spec.job, &mut bad, &mut rejected);
        if !bad.is_empty() {
            return Err(CronError::Invalid(bad));
        }
        let (Some(expr), Some(zone), Some(job)) = (expr, zone, job) else {
            return Err(CronError::Invalid(bad));
        };
        let mut timing = Timing::new(expr, zone);
        timing.start_at_ms = start_at;
        timing.end_at_ms = end_at;
        let next = timing.next_after(now);
        if next.is_none() && rejected.is_empty() {
            rejected.push(FieldError::new(
                if end_at.is_some() { "end_at" } else { "expr" },
                "the schedule would never fire again",
            ));
        }
        if !rejected.is_empty() {
            return Err(CronError::Rejected(rejected));
        }
        let schedule = Schedule {
            id: mortar_core::ids::new_id(),
            name: spec.name.clone(),
            expr: timing.expr.as_str().to_owned(),
            timezone: spec.timezone.clone(),
            job,
            overlap: spec.overlap.clone(),
            misfire: spec.misfire.clone(),
            catchup_window_ms: spec.catchup_window_ms as i64,
            jitter_ms: spec.jitter_ms as i64,
            start_at_ms: start_at.map(|v| v as i64),
            end_at_ms: end_at.map(|v| v as i64),
            enabled: spec.enabled,
            version: 1,
            next_fire_at_ms: next.map(|v| v as i64),
            last_fire_at_ms: None,
            created_at_ms: now as i64,
            updated_at_ms: now as i64,
        };
        Ok((schedule, timing))
    }

    /// The job template: a mortar-jobs job, checked by the jobs block's own rules now rather
    /// than at every fire. Cron owns the unique key and the run time.
    fn check_job(
        &self,
        job: &serde_json::Value,
        bad: &mut Vec<FieldError>,
        rejected: &mut Vec<FieldError>,
    ) -> Option<String> {
        let parsed: NewJob = match serde_json::from_value(job.clone()) {
            Ok(j) => j,
            Err(e) => {
                bad.push(FieldError::new("job", e.to_string()));
                return None;
            }
        };
        for (set, field) in [
            (parsed.unique_key.is_some(), "unique_key"),
            (parsed.unique_while.is_some(), "unique_while"),
            (parsed.unique_for_ms.is_some(), "unique_for_ms"),
            (parsed.run_at.is_some(), "run_at"),
        ] {
            if set {
                rejected.push(FieldError::new(
                    format!("job.{field}"),
                    "set by cron for each fire; leave it out",
                ));
            }
        }
        if let Err(errors) = self.jobs.check(&parsed) {
            rejected.extend(
                errors
                    .into_iter()
                    .map(|f| FieldError::new(format!("job.{}", f.field), f.message)),
            );
        }
        serde_json::to_string(&parsed).ok()
    }

    pub async fn create(&self, spec: &ScheduleSpec) -> Result<Schedule, CronError> {
        let now = self.clock.now_ms();
        let (s, _) = self.check(spec, now)?;
        if !self.store.insert(&s).await.map_err(self.db())? {
            return Err(CronError::Conflict(format!(
                "a schedule named `{}` exists",
                s.name
            )));
        }
        self.wake.notify_waiters();
        Ok(s)
    }

    /// Replaces a schedule's definition; it takes effect from the next fire (fire times
    /// already claimed stay claimed). The name cannot change.
    pub async fn replace(&self, id: &str, spec: &ScheduleSpec) -> Result<Schedule, CronError> {
        let now = self.clock.now_ms();
        let current = self.get(id).await?;
        if spec.name != current.name {
            return Err(CronError::Rejected(vec![FieldError::new(
                "name",
                format!("a schedule cannot be renamed (it is `{}`)", current.name),
            )]));
        }
        let (mut s, timing) = self.check(spec, now)?;
        // Next fire after the later of now and the last fire, so nothing fires twice.
        let after = current.last_fire_at_ms.map_or(now, |l| (l as u64).max(now));
        s.next_fire_at_ms = timing.next_after(after).map(|v| v as i64);
        s.id = current.id.clone();
        s.version = current.version;
        s.created_at_ms = current.created_at_ms;
        s.last_fire_at_ms = current.last_fire_at_ms;
        if !self.store.replace(&s).await.map_err(self.db())? {
            return Err(CronError::Conflict(format!(
                "schedule `{}` changed meanwhile; read it and try again",
                current.name
            )));
        }
        self.wake.notify_waiters();
        self.get(&s.id).await
    }

    pub async fn get(&self, id_or_name: &str) -> Result<Schedule, CronError> {
        self.store
            .get(id_or_name)
            .await
            .map_err(self.db())?
            .ok_or_else(|| CronError::NotFound(id_or_name.to_owned()))
    }

    pub async fn list(&self, after: &str, limit: u32) -> Result<Vec<Schedule>, CronError> {
        self.store.list(after, limit).await.map_err(self.db())
    }

    pub async fn delete(&self, id_or_name: &str) -> Result<Schedule, CronError> {
        let s = self.get(id_or_name).await?;
        self.store.delete(&s.id).await.map_err(self.db())?;
        Ok(s)
    }

    /// Pauses (no fires) or resumes a schedule. Resuming continues from the next fire after
    /// now: fires missed while paused are not caught up (backfill them if wanted).
    pub async fn set_enabled(
        &self,
        id_or_name: &str,
        enabled: bool,
    ) -> Result<Schedule, CronError> {
        for _ in 0..3 {
            let mut s = self.get(id_or_name).await?;
            if s.enabled == enabled {
                return Ok(s);
            }
            let now = self.clock.now_ms();
            s.enabled = enabled;
            s.updated_at_ms = now as i64;
            if enabled {
                let timing = timing_of(&s).ok_or_else(|| {
                    CronError::Conflict("the stored schedule no longer parses".into())
                })?;
                let after = s.last_fire_at_ms.map_or(now, |l| (l as u64).max(now));
                s.next_fire_at_ms = timing.next_after(after).map(|v| v as i64);
            }
            if self.store.replace(&s).await.map_err(self.db())? {
                self.wake.notify_waiters();
                return self.get(&s.id).await;
            }
        }
        Err(CronError::Conflict(format!(
            "schedule `{id_or_name}` keeps changing; try again"
        )))
    }

    /// Fires a schedule now, whatever its timing, pause state and overlap policy.
    pub async fn trigger(&self, id_or_name: &str) -> Result<Run, CronError> {
        let s = self.get(id_or_name).await?;
        let now = self.clock.now_ms();
        // Fire times are claimed once; a trigger in the same millisecond as another fire of
        // this schedule takes the next free millisecond.
        for at in now..now + 100 {
            let mut runs = self
                .store
                .claim(&s.id, &[(at, "manual")], &self.node, now)
                .await
                .map_err(self.db())?;
            if let Some(run) = runs.pop() {
                self.enqueue_runs(vec![(s.clone(), run.clone())]).await?;
                return self.run(&s.id, at).await;
            }
        }
        Err(CronError::Conflict(
            "too many fires at once; try again".into(),
        ))
    }

    /// Fires every fire time of the schedule in `(from, to]` that was never claimed (those
    /// that were are left alone, so a backfill over a stretch that did run fires nothing twice).
    pub async fn backfill(
        &self,
        id_or_name: &str,
        from: &str,
        to: &str,
    ) -> Result<Backfilled, CronError> {
        let s = self.get(id_or_name).await?;
        let now = self.clock.now_ms();
        let mut bad = Vec::new();
        let parse = |field: &str, v: &str, bad: &mut Vec<FieldError>| {
            match chrono::DateTime::parse_from_rfc3339(v) {
                Ok(t) if t.timestamp_millis() >= 0 => Some(t.timestamp_millis() as u64),
                _ => {
                    bad.push(FieldError::new(
                        field,
                        "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
                    ));
                    None
                }
            }
        };
        let from_ms = parse("from", from, &mut bad);
        let to_ms = parse("to", to, &mut bad);
        let (Some(from_ms), Some(to_ms)) = (from_ms, to_ms) else {
            return Err(CronError::Invalid(bad));
        };
        if to_ms <= from_ms {
            return Err(CronError::Rejected(vec![FieldError::new(
                "to",
                "must be after from",
            )]));
        }
        if to_ms > now {
            return Err(CronError::Rejected(vec![FieldError::new(
                "to",
                "must not be in the future",
            )]));
        }
        let timing = timing_of(&s)
            .ok_or_else(|| CronError::Conflict("the stored schedule no longer parses".into()))?;
        let max = self.cfg.max_backfill as usize;
        let times = timing.fires_between(from_ms, to_ms, max + 1);
        if times.len() > max {
            return Err(CronError::Rejected(vec![FieldError::new(
                "from",
                format!(
                    "more than cron.max_backfill ({max}) fire times in the range; backfill a shorter one"
                ),
            )]));
        }
        let fires: Vec<(u64, &'static str)> = times.iter().map(|t| (*t, "backfill")).collect();
        let runs = self
            .store
            .claim(&s.id, &fires, &self.node, now)
            .await
            .map_err(self.db())?;
        let already = fires.len() - runs.len();
        self.enqueue_runs(runs.iter().map(|r| (s.clone(), r.clone())).collect())
            .await?;
        let mut done = Vec::with_capacity(runs.len());
        for r in &runs {
            done.push(self.run(&s.id, r.fire_at_ms as u64).await?);
        }
        Ok(Backfilled {
            runs: done,
            already,
        })
    }

    async fn run(&self, schedule_id: &str, fire_at: u64) -> Result<Run, CronError> {
        self.store
            .runs(schedule_id, fire_at as i64 + 1, 1)
            .await
            .map_err(self.db())?
            .into_iter()
            .find(|r| r.fire_at_ms == fire_at as i64)
            .ok_or_else(|| CronError::NotFound(schedule_id.to_owned()))
    }

    /// A schedule's runs, newest first, with their jobs' outcomes.
    pub async fn runs(
        &self,
        id_or_name: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RunInfo>, CronError> {
        let s = self.get(id_or_name).await?;
        let runs = self
            .store
            .runs(&s.id, before.unwrap_or(i64::MAX), limit)
            .await
            .map_err(self.db())?;
        let mut out = Vec::with_capacity(runs.len());
        for run in runs {
            let job = match &run.job_id {
                Some(id) => match self.jobs.get(id).await {
                    Ok((j, _)) => Some(j),
                    Err(mortar_jobs::error::JobsError::NotFound(_)) => None,
                    Err(e) => return Err(jobs_err(e)),
                },
                None => None,
            };
            out.push(RunInfo {
                job_state: job.as_ref().map(|j| j.state.clone()),
                started_at_ms: job.as_ref().and_then(|j| j.started_at_ms),
                finished_at_ms: job.as_ref().and_then(|j| j.finished_at_ms),
                run,
            });
        }
        Ok(out)
    }

    /// The next `count` fire times of an expression in a zone after `from` (default now).
    pub fn preview(
        &self,
        expr: &str,
        timezone: &str,
        from: Option<&str>,
        count: u32,
    ) -> Result<Vec<u64>, CronError> {
        let mut bad = Vec::new();
        let expr = CronExpr::parse(expr)
            .map_err(|e| bad.push(FieldError::new("expr", e.to_string())))
            .ok();
        let zone = engine::parse_zone(timezone)
            .map_err(|e| bad.push(FieldError::new("timezone", e)))
            .ok();
        let from = match from {
            None => Some(self.clock.now_ms()),
            Some(text) => match chrono::DateTime::parse_from_rfc3339(text) {
                Ok(t) if t.timestamp_millis() >= 0 => Some(t.timestamp_millis() as u64),
                _ => {
                    bad.push(FieldError::new(
                        "from",
                        "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
                    ));
                    None
                }
            },
        };
        if !(1..=1000).contains(&count) {
            bad.push(FieldError::new("count", "must be 1 to 1000"));
        }
        match (expr, zone, from) {
            (Some(expr), Some(zone), Some(from)) if bad.is_empty() => {
                Ok(Timing::new(expr, zone).fires_between(from, u64::MAX, count as usize))
            }
            _ => Err(CronError::Invalid(bad)),
        }
    }

    /// The next fire of a stored schedule, for views (the stored value, or none when paused).
    pub fn next_fire(s: &Schedule) -> Option<u64> {
        s.enabled
            .then_some(s.next_fire_at_ms)
            .flatten()
            .map(|v| v as u64)
    }
}

fn kind_label(kind: &str) -> &'static str {
    match kind {
        "scheduled" => "scheduled",
        "catchup" => "catchup",
        "manual" => "manual",
        _ => "backfill",
    }
}

/// A tick's decision for one schedule: the engine's plan, each fire labelled on time or late.
fn decide(s: &Schedule, now: u64, threshold: u64, limits: PlanLimits) -> Decision {
    let (Some(timing), Some(next)) = (timing_of(s), s.next_fire_at_ms) else {
        return Decision {
            fires: Vec::new(),
            next_fire_at_ms: None,
        };
    };
    let misfire = Misfire::parse(&s.misfire).unwrap_or(Misfire::FireOnce);
    let plan = engine::plan(
        &timing,
        next as u64,
        now,
        misfire,
        s.catchup_window_ms as u64,
        limits,
    );
    if plan.missed > 0 {
        metrics::counter!(MISFIRES, "policy" => misfire.as_str()).increment(plan.missed);
        tracing::info!(schedule = %s.name, missed = plan.missed, policy = misfire.as_str(), "cron: fire times missed");
    }
    Decision {
        fires: plan
            .fires
            .into_iter()
            .map(|f| {
                (
                    f,
                    if now - f > threshold {
                        "catchup"
                    } else {
                        "scheduled"
                    },
                )
            })
            .collect(),
        next_fire_at_ms: plan.next,
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        FIRES,
        "fires enqueued, by kind (scheduled, catchup, manual, backfill)"
    );
    metrics::describe_histogram!(
        FIRE_LAG,
        metrics::Unit::Seconds,
        "from a scheduled fire time to its job being enqueued"
    );
    metrics::describe_counter!(
        MISFIRES,
        "fire times missed while no node could fire them and dropped, by misfire policy"
    );
    metrics::describe_counter!(
        OVERLAPS_SKIPPED,
        "fires skipped because the previous fire's job was unfinished, by overlap policy"
    );
    metrics::describe_counter!(
        ENQUEUE_FAILED,
        "fires whose job the jobs block rejected (the schedule's template is invalid)"
    );
}
