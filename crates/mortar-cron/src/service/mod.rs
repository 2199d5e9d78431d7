//! `CronService`: validation, the scheduler loop every node runs, the fire path (claim →
//! enqueue → settle), overlap and misfire policies, the sweeper, and the operations.
//!
//! The fire path: a tick claims due fire times in the database (see `store`), then enqueues
//! one job per claimed run into mortar-jobs with the unique key `cron:{schedule_id}:{fire_at}`,
//! then records the job on the run. A node that dies between claim and enqueue leaves runs in
//! `claimed`; any node's sweeper enqueues them after `cron.sweep_after_ms`, and the unique key
//! makes a second enqueue of the same run return the first job instead of a new one.
//!
//! Here: the service's handle, start-up and stop, its metrics and the helpers every part
//! shares. By concern: `config` (`[cron]`, `ScheduleSpec`, the answers' types), `fire` (the
//! scheduler loop, ticks, enqueue, sweeper), `validate` (a schedule and its job template) and
//! `operations` (CRUD, pause/resume, trigger, backfill, runs, preview).

mod config;
mod fire;
mod operations;
mod validate;

use std::sync::Arc;

use mortar_core::FieldError;
use mortar_core::clock::Clock;
use mortar_core::storage::Storage;
use mortar_jobs::JobsService;
use tokio::sync::Notify;

use crate::engine::{self, CronExpr, Timing};
use crate::error::CronError;
use crate::store::{CronStore, Schedule};

pub use self::config::{Backfilled, CronConfig, RunInfo, ScheduleSpec, migrations};

pub const FIRES: &str = "mortar_cron_fires_total";
pub const FIRE_LAG: &str = "mortar_cron_fire_lag_seconds";
pub const MISFIRES: &str = "mortar_cron_misfires_total";
pub const OVERLAPS_SKIPPED: &str = "mortar_cron_overlaps_skipped_total";
pub const ENQUEUE_FAILED: &str = "mortar_cron_enqueue_failed_total";

pub struct CronService {
    store: CronStore,
    jobs: Arc<JobsService>,
    cfg: CronConfig,
    clock: Arc<dyn Clock>,
    node: String,
    wake: Notify,
    housekeeping: std::sync::Mutex<Housekeeping>,
    stopping: std::sync::atomic::AtomicBool,
    /// The node's event bus: fires ([`crate::events`]).
    hub: Arc<mortar_core::watch::Hub>,
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

pub(super) fn jobs_err(e: mortar_jobs::error::JobsError) -> CronError {
    use mortar_jobs::error::JobsError as J;
    match e {
        J::Invalid(errors) => CronError::Rejected(
            errors
                .into_iter()
                .map(|f| FieldError::new(format!("job.{}", f.field), f.message))
                .collect(),
        ),
        J::NotFound(what) => CronError::NotFound(what),
        J::Conflict(why) | J::TimedOut(why) | J::Cancelled(why) => CronError::Conflict(why),
        J::Unavailable(what) => CronError::Unavailable(what),
    }
}

/// A schedule's timing from its stored row (validated when it was stored).
pub(super) fn timing_of(s: &Schedule) -> Option<Timing> {
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
    pub(super) fn db(&self) -> impl Fn(sqlx::Error) -> CronError + use<> {
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
            hub: storage.hub.clone(),
        })
    }

    /// The node's event bus, where fires are published.
    pub fn hub(&self) -> &Arc<mortar_core::watch::Hub> {
        &self.hub
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

    /// Stops the scheduler loop after its current tick (graceful shutdown; a tick cut short by a
    /// crash instead is recovered by the other nodes' sweepers).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_waiters();
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
