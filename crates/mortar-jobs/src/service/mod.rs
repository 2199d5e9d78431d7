//! `JobsService`: validation, enqueue, long-poll leasing, completion and failure rules.
//!
//! Here: the service's handle, its start-up and what every part shares. By concern: `config`
//! (`[jobs]`, a job to enqueue, queue settings), `validate`, `enqueue`, `lease` (long-poll
//! leases and the waiting list), `lifecycle` (a leased attempt: heartbeat, complete, fail,
//! release, and how it ended when it ran out of time), `manage` (reads, retry, cancel),
//! `queues`, `housekeeping` (maintenance, pruning, NOTIFY loops) and `telemetry` (metrics).

mod config;
mod enqueue;
mod housekeeping;
mod lease;
mod lifecycle;
mod manage;
mod queues;
mod telemetry;
#[cfg(test)]
mod tests;
mod validate;

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use mortar_core::clock::Clock;
use mortar_core::storage::notify::Channel;
use mortar_core::storage::{Durable, Storage};
use tokio::sync::Notify;

use self::housekeeping::{announcer, due_loop, housekeeping, listen};
use self::lease::{Drained, Waiting};
use self::telemetry::describe_metrics;
use crate::error::JobsError;
use crate::store::{Job, JobStore, QueueRow};

pub use self::config::{
    Backoff, BatchCompleted, Enqueued, JobsConfig, NewJob, QueueInfo, QueueRate, QueueSettings,
    migrations,
};
pub use self::enqueue::{enqueue_in_tx, enqueue_in_tx_at};
pub use self::telemetry::{
    COMPLETED, DEAD, DEPTH, ENQUEUED, FAILED, RUN, STARTED, TIMED_OUT, WAIT,
};
pub(crate) use self::validate::prepare;

pub struct JobsService {
    store: JobStore,
    cfg: JobsConfig,
    clock: Arc<dyn Clock>,
    /// The node's shutdown: a waiting lease returns what it has (nothing) at once.
    stopping: mortar_core::shutdown::Stopping,
    /// The node's event bus: job state changes ([`crate::events`]).
    hub: Arc<mortar_core::watch::Hub>,
    /// Woken by every enqueue on this node and, on PostgreSQL, by NOTIFY from any node.
    wake: Notify,
    /// How many times `wake` has fired, or `maintain` has run: anything that may have made
    /// jobs leasable counts (see [`Drained`]).
    wakes: AtomicU64,
    /// The last lease that found fewer jobs than it asked for.
    drained: Mutex<Option<Drained>>,
    /// The earliest known time a scheduled/retryable job comes due or a lease runs out (0:
    /// unknown); see [`JobsService::maintain`].
    next_due: AtomicI64,
    /// When `maintain` last ran.
    checked_at: AtomicU64,
    /// Woken when `next_due` moves earlier (the due loop sleeps until it).
    due_sooner: Arc<Notify>,
    /// Held while `maintain` runs.
    maintaining: tokio::sync::Mutex<()>,
    /// Long-poll leases on this node waiting for jobs, oldest first. An enqueue takes those
    /// its new jobs can serve and leases for them in its own transaction.
    waiting: mortar_core::waiters::Waiters<(), Waiting>,
    /// PostgreSQL: asks the announcer task to NOTIFY the other nodes (capacity 1, so the
    /// announcements made while one is being sent make one more).
    announce_tx: Option<tokio::sync::mpsc::Sender<()>>,
    /// Woken by a queue settings change on this node (the push dispatcher's cue when no queue
    /// pushes yet).
    settings_changed: Notify,
}

impl std::fmt::Debug for JobsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsService").finish_non_exhaustive()
    }
}

/// A failed call on `durable` as the 503 naming it (used as `.map_err(db(&durable))`).
pub(crate) fn db(durable: &Durable) -> impl Fn(sqlx::Error) -> JobsError + use<> {
    let durable = durable.clone();
    move |e| JobsError::Unavailable(durable.failed("jobs", &e).into())
}

impl JobsService {
    pub fn start(storage: &Storage, cfg: &JobsConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        describe_metrics();
        let (announce_tx, announce_rx) = match storage.durable {
            mortar_core::storage::Durable::Postgres(_) => {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                (Some(tx), Some(rx))
            }
            mortar_core::storage::Durable::Sqlite(_) => (None, None),
        };
        let svc = Arc::new(Self {
            store: JobStore::new(storage.durable.clone()).with_lease_ms(cfg.lease_ms),
            cfg: cfg.clone(),
            clock,
            stopping: storage.stopping.clone(),
            hub: storage.hub.clone(),
            wake: Notify::new(),
            wakes: AtomicU64::new(0),
            drained: Mutex::new(None),
            settings_changed: Notify::new(),
            next_due: AtomicI64::new(0),
            checked_at: AtomicU64::new(0),
            due_sooner: Arc::new(Notify::new()),
            maintaining: tokio::sync::Mutex::new(()),
            waiting: mortar_core::waiters::Waiters::default(),
            announce_tx,
        });
        if let (Some(rx), mortar_core::storage::Durable::Postgres(pool)) =
            (announce_rx, &storage.durable)
        {
            let channel = Channel::new(pool.clone(), "mortar_jobs", "jobs");
            tokio::spawn(listen(Arc::downgrade(&svc), channel.clone()));
            tokio::spawn(announcer(rx, channel));
        }
        tokio::spawn(housekeeping(Arc::downgrade(&svc)));
        tokio::spawn(due_loop(Arc::downgrade(&svc)));
        svc
    }

    pub(super) fn db(&self) -> impl Fn(sqlx::Error) -> JobsError + use<> {
        db(self.store.durable())
    }

    /// The node's event bus, where job state changes are published.
    pub fn hub(&self) -> &Arc<mortar_core::watch::Hub> {
        &self.hub
    }

    /// Long-poll leases waiting on this node for jobs right now.
    pub fn waiting_leases(&self) -> usize {
        self.waiting.len()
    }

    pub fn config(&self) -> &JobsConfig {
        &self.cfg
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Resolves at the next enqueue, release, retry or settings change (enqueues on any node with
    /// PostgreSQL).
    pub(crate) fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Resolves at the next queue settings change on this node.
    pub(crate) fn settings_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.settings_changed.notified()
    }

    /// Queues with a push target that are not paused.
    pub(crate) async fn push_queues(&self) -> Result<Vec<QueueRow>, JobsError> {
        let rows = self.store.all_queue_rows().await.map_err(self.db())?;
        Ok(rows
            .into_iter()
            .filter(|r| r.target_url.is_some() && !r.paused)
            .collect())
    }

    /// Publishes jobs' new states on the node's bus (nothing is built when nobody watches).
    pub(super) fn publish<'a>(&self, now: u64, jobs: impl IntoIterator<Item = (&'a Job, &'a str)>) {
        crate::events::publish(
            &self.hub,
            now,
            jobs.into_iter().map(|(j, state)| {
                (
                    j.id.as_str(),
                    j.queue.as_str(),
                    j.kind.as_str(),
                    state,
                    Some(j.attempt),
                )
            }),
        );
    }
}
