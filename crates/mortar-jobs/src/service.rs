//! `JobsService`: validation, enqueue, long-poll leasing, completion and failure rules.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mortar_core::FieldError;
use mortar_core::api::NAME;
use mortar_core::clock::Clock;
use mortar_core::storage::notify::Channel;
use mortar_core::storage::{Durable, Storage};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use crate::engine::{AfterFailure, UniqueWhile, after_failure};
use crate::error::JobsError;
use crate::store::{
    AttemptError, Completion, Filter, Job, JobStore, LeaseAsk, QueueCounts, QueueRow,
};

pub const ENQUEUED: &str = "mortar_jobs_enqueued_total";
pub const STARTED: &str = "mortar_jobs_started_total";
pub const COMPLETED: &str = "mortar_jobs_completed_total";
pub const FAILED: &str = "mortar_jobs_failed_total";
pub const DEAD: &str = "mortar_jobs_dead_total";
pub const WAIT: &str = "mortar_jobs_wait_seconds";
pub const RUN: &str = "mortar_jobs_run_seconds";
pub const DEPTH: &str = "mortar_jobs_depth";

/// The block's migrations.
pub fn migrations() -> mortar_core::storage::Migrations {
    mortar_core::storage::Migrations {
        block: "jobs",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

/// `[jobs]` in `mortar.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    pub max_payload_bytes: usize,
    /// How often an idle long-poll re-checks for due jobs (scheduled ones coming due; other
    /// nodes' enqueues wake it at once through LISTEN/NOTIFY on PostgreSQL).
    pub poll_ms: u64,
    /// How long completed and cancelled jobs are kept (queues may set their own).
    pub retention_ms: u64,
    /// How long dead jobs (the DLQ) are kept.
    pub dead_retention_ms: u64,
    /// How often each node prunes old jobs and refreshes the queue-depth gauges.
    pub prune_every_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            poll_ms: 100,
            retention_ms: 24 * 3_600_000,
            dead_retention_ms: 7 * 24 * 3_600_000,
            prune_every_ms: 60_000,
        }
    }
}

impl JobsConfig {
    pub const DOCS: &[mortar_core::config::KeyDoc] = &[
        mortar_core::config::KeyDoc::new(
            "jobs.max_payload_bytes",
            "largest job payload (JSON, serialized)",
        ),
        mortar_core::config::KeyDoc::new(
            "jobs.poll_ms",
            "how often a waiting lease re-checks for due jobs: scheduled ones and retries coming due, freed concurrency slots (enqueues on any node wake it at once)",
        ),
        mortar_core::config::KeyDoc::new(
            "jobs.retention_ms",
            "how long completed and cancelled jobs are kept before pruning (a queue can set its own)",
        ),
        mortar_core::config::KeyDoc::new(
            "jobs.dead_retention_ms",
            "how long dead jobs (the dead-letter queue) are kept",
        ),
        mortar_core::config::KeyDoc::new(
            "jobs.prune_every_ms",
            "how often each node prunes old jobs and refreshes the queue-depth gauges",
        ),
    ];
}

/// A job to enqueue.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    /// Any JSON.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Lower runs first (0 to 100, default 10); then earlier `run_at`, then enqueue order.
    #[serde(default = "default_priority")]
    pub priority: i32,
    /// Run no earlier than this many milliseconds from now.
    #[serde(default)]
    pub delay_ms: u64,
    /// Run no earlier than this instant (RFC 3339); instead of `delay_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Attempts in all (1 to 1000, default 20).
    #[serde(default = "default_attempts")]
    pub max_attempts: i32,
    #[serde(default)]
    pub backoff: Backoff,
    /// The lease length: a worker must complete or heartbeat within it (default 30 s).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Another job of this queue with the same key is a duplicate while this one is
    /// `unique_while`: enqueueing it returns this job with `"duplicate": true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// `queued` (until it starts), `active` (until it finishes; the default) or `for_ms`
    /// (for `unique_for_ms` after enqueue, whatever happens to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_while: Option<UniqueWhile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_for_ms: Option<u64>,
    /// Up to 20 labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl NewJob {
    /// A job with every option at its default.
    pub fn new(
        queue: impl Into<String>,
        kind: impl Into<String>,
        payload: serde_json::Value,
    ) -> Self {
        Self {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            priority: default_priority(),
            delay_ms: 0,
            run_at: None,
            max_attempts: default_attempts(),
            backoff: Backoff::default(),
            timeout_ms: default_timeout(),
            unique_key: None,
            unique_while: None,
            unique_for_ms: None,
            tags: Vec::new(),
        }
    }
}

/// The answer to an enqueue: the job, and whether it already existed (unique key or
/// Idempotency-Key) instead of being created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub job: Job,
    pub duplicate: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 1000,
            max_ms: 3_600_000,
        }
    }
}

pub(crate) fn default_priority() -> i32 {
    10
}
fn default_attempts() -> i32 {
    20
}
fn default_timeout() -> u64 {
    30_000
}

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
    maintaining: AtomicBool,
    /// Long-poll leases on this node waiting for jobs, oldest first. An enqueue takes those
    /// its new jobs can serve and leases for them in its own transaction.
    waiting: Mutex<Vec<Waiting>>,
    waiting_ids: AtomicU64,
    /// PostgreSQL: asks the announcer task to NOTIFY the other nodes (capacity 1, so the
    /// announcements made while one is being sent make one more).
    announce_tx: Option<tokio::sync::mpsc::Sender<()>>,
    /// Woken by a queue settings change on this node (the push dispatcher's cue when no queue
    /// pushes yet).
    settings_changed: Notify,
}

/// A waiting lease and where its jobs go.
struct Waiting {
    id: u64,
    ask: LeaseAsk,
    reply: oneshot::Sender<Vec<Job>>,
}

/// A lease that found fewer jobs than it asked for: its queues had no more leasable jobs when
/// it looked, as far as `wakes` (read before it looked) tells.
struct Drained {
    queues: Vec<String>,
    wakes: u64,
    at_ms: u64,
}

/// Takes a waiting lease off the list when its long-poll ends or is dropped.
struct WaitingGuard<'a> {
    svc: &'a JobsService,
    id: u64,
}

impl WaitingGuard<'_> {
    /// Whether the lease was still waiting (false: an enqueue took it and answers it).
    fn withdraw(&self) -> bool {
        let mut waiting = self
            .svc
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match waiting.iter().position(|w| w.id == self.id) {
            Some(i) => {
                waiting.remove(i);
                true
            }
            None => false,
        }
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.withdraw();
    }
}

impl std::fmt::Debug for JobsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsService").finish_non_exhaustive()
    }
}

fn valid_name(s: &str) -> bool {
    NAME.is_valid(s)
}

const YEAR_MS: u64 = 366 * 86_400_000;

/// A failed call on `durable` as the 503 naming it (used as `.map_err(db(&durable))`).
pub(crate) fn db(durable: &Durable) -> impl Fn(sqlx::Error) -> JobsError + use<> {
    let durable = durable.clone();
    move |e| JobsError::Unavailable(durable.failed("jobs", &e).into())
}

/// Checks a job and turns it into a row (`at` prefixes field names in a batch).
pub(crate) fn prepare(
    j: &NewJob,
    at: &str,
    max_payload_bytes: usize,
    now: u64,
) -> Result<Job, Vec<FieldError>> {
    let f = |name: &str| {
        if at.is_empty() {
            name.to_owned()
        } else {
            format!("{at}.{name}")
        }
    };
    let mut errors = Vec::new();
    if !valid_name(&j.queue) {
        errors.push(FieldError::new(f("queue"), NAME.describe()));
    }
    if !valid_name(&j.kind) {
        errors.push(FieldError::new(f("kind"), NAME.describe()));
    }
    if !(0..=100).contains(&j.priority) {
        errors.push(FieldError::new(f("priority"), "must be 0 to 100"));
    }
    if !(1..=1000).contains(&j.max_attempts) {
        errors.push(FieldError::new(f("max_attempts"), "must be 1 to 1000"));
    }
    if j.backoff.base_ms == 0 || j.backoff.max_ms < j.backoff.base_ms {
        errors.push(FieldError::new(
            f("backoff"),
            "base_ms must be at least 1 and max_ms at least base_ms",
        ));
    }
    if j.timeout_ms == 0 || j.timeout_ms > 86_400_000 {
        errors.push(FieldError::new(f("timeout_ms"), "must be 1 to 86400000"));
    }
    if j.delay_ms > YEAR_MS {
        errors.push(FieldError::new(f("delay_ms"), "at most one year"));
    }
    let mut run_at = now + j.delay_ms;
    if let Some(text) = &j.run_at {
        if j.delay_ms > 0 {
            errors.push(FieldError::new(
                f("run_at"),
                "give run_at or delay_ms, not both",
            ));
        }
        match mortar_core::clock::parse_rfc3339(text) {
            Some(t) if t <= now + YEAR_MS => run_at = t.max(now),
            Some(_) => errors.push(FieldError::new(f("run_at"), "at most one year ahead")),
            None => errors.push(FieldError::new(
                f("run_at"),
                "an RFC 3339 timestamp such as 2026-11-21T10:00:00Z",
            )),
        }
    }
    if let Some(k) = &j.unique_key
        && (k.is_empty() || k.len() > 256)
    {
        errors.push(FieldError::new(f("unique_key"), "1 to 256 bytes"));
    }
    let unique_while = match (&j.unique_key, j.unique_while, j.unique_for_ms) {
        (None, None, None) => None,
        (None, _, _) => {
            errors.push(FieldError::new(
                f("unique_while"),
                "unique_while and unique_for_ms need a unique_key",
            ));
            None
        }
        (Some(_), Some(UniqueWhile::ForMs), Some(ms)) if (1..=YEAR_MS).contains(&ms) => {
            Some(UniqueWhile::ForMs)
        }
        (Some(_), Some(UniqueWhile::ForMs), _) => {
            errors.push(FieldError::new(
                f("unique_for_ms"),
                "unique_while = for_ms needs unique_for_ms, 1 to one year",
            ));
            None
        }
        (Some(_), w, None) => Some(w.unwrap_or_default()),
        (Some(_), _, Some(_)) => {
            errors.push(FieldError::new(
                f("unique_for_ms"),
                "only with unique_while = for_ms",
            ));
            None
        }
    };
    if j.tags.len() > 20 || !j.tags.iter().all(|t| valid_name(t)) {
        errors.push(FieldError::new(
            f("tags"),
            format!("up to 20 tags, each {}", NAME.describe()),
        ));
    }
    let payload = j.payload.to_string();
    if payload.len() > max_payload_bytes {
        errors.push(FieldError::new(
            f("payload"),
            format!(
                "{} bytes is over jobs.max_payload_bytes ({max_payload_bytes})",
                payload.len()
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Job {
        id: mortar_core::ids::new_id(),
        queue: j.queue.clone(),
        kind: j.kind.clone(),
        payload,
        priority: j.priority,
        run_at_ms: run_at as i64,
        state: if run_at > now {
            "scheduled"
        } else {
            "available"
        }
        .into(),
        attempt: 0,
        max_attempts: j.max_attempts,
        backoff_base_ms: j.backoff.base_ms as i64,
        backoff_max_ms: j.backoff.max_ms as i64,
        timeout_ms: j.timeout_ms as i64,
        lease_id: None,
        lease_until_ms: None,
        worker: None,
        result: None,
        unique_key: j.unique_key.clone(),
        created_at_ms: now as i64,
        finished_at_ms: None,
        started_at_ms: None,
        tags: serde_json::to_string(&j.tags).unwrap_or_else(|_| "[]".into()),
        unique_while: unique_while.map(|w| w.as_str().to_owned()),
        unique_hold: unique_while.and(j.unique_key.clone()),
        unique_until_ms: j
            .unique_for_ms
            .filter(|_| unique_while == Some(UniqueWhile::ForMs))
            .map(|ms| (now + ms) as i64),
    })
}

/// Enqueues `job` inside the caller's PostgreSQL transaction (the transactional outbox): it
/// exists only if that transaction commits, and workers on every node are woken when it does.
/// Validation is the same as `POST /v1/jobs` (payload limit: the default, 1 MiB).
pub async fn enqueue_in_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job: &NewJob,
) -> Result<Enqueued, JobsError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let row = prepare(job, "", JobsConfig::default().max_payload_bytes, now)
        .map_err(JobsError::Invalid)?;
    let conn: &mut sqlx::PgConnection = tx;
    let mut out = async {
        let out = crate::store::insert_pg(conn, vec![row], now as i64).await?;
        sqlx::query("SELECT pg_notify('mortar_jobs', '')")
            .execute(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>(out)
    }
    .await
    .map_err(|e| {
        tracing::error!(error = %e, block = "jobs", dependency = "postgres", "durable store call failed");
        JobsError::Unavailable("postgres".into())
    })?;
    let (job, duplicate) = out.remove(0);
    Ok(Enqueued { job, duplicate })
}

/// A queue's settings as given to `PUT /v1/jobs/queues/{queue}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    #[serde(default)]
    pub paused: bool,
    /// Most jobs of this queue running at once, across all workers and nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Most job starts per period, across all workers and nodes (a token bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<QueueRate>,
    /// Push delivery: Mortar POSTs each job here instead of waiting for a worker to lease it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    /// Signs push deliveries (`Mortar-Signature`). Write-only.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// How long completed and cancelled jobs are kept (default `jobs.retention_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueRate {
    pub limit: u32,
    pub period_ms: u64,
}

/// A queue: its settings and counts.
#[derive(Debug, Clone)]
pub struct QueueInfo {
    pub queue: String,
    pub settings: QueueSettings,
    pub has_secret: bool,
    pub counts: QueueCounts,
}

impl QueueSettings {
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self
            .concurrency
            .is_some_and(|c| !(1..=100_000).contains(&c))
        {
            errors.push(FieldError::new("concurrency", "must be 1 to 100000"));
        }
        if let Some(r) = self.rate
            && (!(1..=1_000_000).contains(&r.limit) || !(1..=86_400_000).contains(&r.period_ms))
        {
            errors.push(FieldError::new(
                "rate",
                "limit must be 1 to 1000000 and period_ms 1 to 86400000",
            ));
        }
        if self.target_url.as_ref().is_some_and(|u| {
            !(u.starts_with("http://") || u.starts_with("https://"))
                || u.parse::<http::Uri>().is_err()
        }) {
            errors.push(FieldError::new("target_url", "an http:// or https:// URL"));
        }
        if self
            .secret
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > 256)
        {
            errors.push(FieldError::new("secret", "1 to 256 bytes"));
        }
        if self.secret.is_some() && self.target_url.is_none() {
            errors.push(FieldError::new(
                "secret",
                "signs push deliveries: give a target_url too",
            ));
        }
        if self.retention_ms.is_some_and(|r| r > 366 * 86_400_000) {
            errors.push(FieldError::new("retention_ms", "at most one year"));
        }
        errors
    }

    fn row(&self, queue: &str, now: u64) -> QueueRow {
        QueueRow {
            queue: queue.to_owned(),
            paused: self.paused,
            concurrency: self.concurrency.map(|c| c as i32),
            rate_limit: self.rate.map(|r| r.limit as i32),
            rate_period_ms: self.rate.map(|r| r.period_ms as i64),
            target_url: self.target_url.clone(),
            secret: self.secret.clone(),
            retention_ms: self.retention_ms.map(|r| r as i64),
            updated_at_ms: now as i64,
            ..QueueRow::default()
        }
    }

    fn of(r: &QueueRow) -> Self {
        Self {
            paused: r.paused,
            concurrency: r.concurrency.map(|c| c as u32),
            rate: r.rate_limit.zip(r.rate_period_ms).map(|(l, p)| QueueRate {
                limit: l as u32,
                period_ms: p as u64,
            }),
            target_url: r.target_url.clone(),
            secret: r.secret.clone(),
            retention_ms: r.retention_ms.map(|r| r as u64),
        }
    }
}

/// Outcome of a batch completion.
#[derive(Debug, Clone, Default)]
pub struct BatchCompleted {
    pub completed: usize,
    /// Ids whose lease was no longer held (or that don't exist).
    pub rejected: Vec<String>,
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
            store: JobStore::new(storage.durable.clone()),
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
            maintaining: AtomicBool::new(false),
            waiting: Mutex::new(Vec::new()),
            waiting_ids: AtomicU64::new(0),
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
        svc
    }

    fn db(&self) -> impl Fn(sqlx::Error) -> JobsError + use<> {
        db(self.store.durable())
    }

    /// The node's event bus, where job state changes are published.
    pub fn hub(&self) -> &Arc<mortar_core::watch::Hub> {
        &self.hub
    }

    /// Long-poll leases waiting on this node for jobs right now.
    pub fn waiting_leases(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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

    /// Enqueues jobs atomically (all or none); durable when this returns. A job whose unique
    /// key is held comes back as the holder with `duplicate: true`.
    pub async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, JobsError> {
        if jobs.is_empty() || jobs.len() > 10_000 {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "jobs",
                "give 1 to 10000 jobs",
            )]));
        }
        let now = self.clock.now_ms();
        let mut rows = Vec::with_capacity(jobs.len());
        let mut errors = Vec::new();
        for (i, j) in jobs.iter().enumerate() {
            let at = if jobs.len() == 1 {
                String::new()
            } else {
                format!("jobs[{i}]")
            };
            match prepare(j, &at, self.cfg.max_payload_bytes, now) {
                Ok(row) => rows.push(row),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(JobsError::Invalid(errors));
        }
        let (asks, replies): (Vec<LeaseAsk>, Vec<_>) = self
            .take_waiting(&rows)
            .into_iter()
            .map(|w| (w.ask, w.reply))
            .unzip();
        let out = if replies.is_empty() {
            let out = self
                .store
                .insert(rows, now, asks)
                .await
                .map_err(self.db())?
                .0;
            if out.iter().any(|(j, dup)| !dup && j.state == "available") {
                self.announce();
            }
            out
        } else {
            // A task of its own, so that jobs leased for waiting leases are answered (or given
            // back) even if this request is dropped after the commit. On failure the replies
            // are dropped: those leases look again.
            let store = self.store.clone();
            let (out, unserved) = tokio::spawn(async move {
                let (out, leased) = store.insert(rows, now, asks).await?;
                let handed: HashSet<&str> =
                    leased.iter().flatten().map(|j| j.id.as_str()).collect();
                let unserved = out.iter().any(|(j, dup)| {
                    !dup && j.state == "available" && !handed.contains(j.id.as_str())
                });
                let released = deliver(&store, replies, leased, now).await;
                Ok::<_, sqlx::Error>((out, unserved || released))
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "jobs: enqueue task failed");
                JobsError::Unavailable(self.store.durable().name().into())
            })?
            .map_err(self.db())?;
            // Jobs handed to waiting leases need no wake-up: other leases, here or on other
            // nodes, have nothing to find. Any job left waiting does.
            if unserved {
                self.announce();
            }
            out
        };
        for (j, _) in &out {
            if j.state == "scheduled" {
                self.note_due(j.run_at_ms);
            }
        }
        // A job handed to a waiting lease went in running: it is published as started there.
        let created = out.iter().filter(|(_, dup)| !dup).map(|(j, _)| j);
        self.publish(now, created.map(|j| (j, crate::events::enqueued_state(&j.state))));
        per_kind(
            &out,
            |(j, _)| (&j.queue, &j.kind),
            |q, k, group| {
                let created = group.iter().filter(|(_, dup)| !dup).count() as u64;
                if created > 0 {
                    metrics::counter!(ENQUEUED, "queue" => q.to_owned(), "kind" => k.to_owned())
                        .increment(created);
                }
            },
        );
        Ok(out
            .into_iter()
            .map(|(job, duplicate)| Enqueued { job, duplicate })
            .collect())
    }

    /// Leases up to `max` jobs of `queues`, waiting up to `wait_ms` for some to be due.
    pub async fn lease(
        &self,
        queues: &[String],
        max: u32,
        wait_ms: u64,
        worker: &str,
    ) -> Result<Vec<Job>, JobsError> {
        let mut errors = Vec::new();
        if queues.is_empty() || queues.len() > 100 || !queues.iter().all(|q| valid_name(q)) {
            errors.push(FieldError::new("queues", "name 1 to 100 queues"));
        }
        if !(1..=1000).contains(&max) {
            errors.push(FieldError::new("max", "must be 1 to 1000"));
        }
        if wait_ms > 60_000 {
            errors.push(FieldError::new("wait_ms", "must be 0 to 60000"));
        }
        if worker.is_empty() || worker.len() > 256 {
            errors.push(FieldError::new("worker", "1 to 256 bytes"));
        }
        if !errors.is_empty() {
            return Err(JobsError::Invalid(errors));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let now = self.clock.now_ms();
            self.maintain(now).await?;
            let wakes = self.wakes.load(Ordering::SeqCst);
            let mut jobs = if self.known_drained(queues, wakes, now) {
                Vec::new()
            } else {
                let leased = self
                    .store
                    .lease(queues, max, worker, now)
                    .await
                    .map_err(self.db())?;
                let jobs = leased.jobs;
                if leased.unlimited && jobs.len() < max as usize {
                    *self.drained.lock().unwrap_or_else(PoisonError::into_inner) = Some(Drained {
                        queues: queues.to_vec(),
                        wakes,
                        at_ms: now,
                    });
                }
                jobs
            };
            if jobs.is_empty()
                && tokio::time::Instant::now() < deadline
                && !self.stopping.is_stopping()
            {
                // Wait for an enqueue on this node to hand jobs over, a wake-up (another
                // node's enqueue, a release), something coming due, or poll_ms for other
                // nodes' writes; then look again.
                let due_in = (self.next_due.load(Ordering::SeqCst) - now as i64).max(1) as u64;
                let nap = Duration::from_millis(self.cfg.poll_ms.min(due_in))
                    .min(deadline - tokio::time::Instant::now());
                let ask = LeaseAsk {
                    queues: queues.to_vec(),
                    max,
                    worker: worker.to_owned(),
                };
                jobs = self.wait_for_jobs(ask, nap, woken).await;
                if jobs.is_empty() && !self.stopping.is_stopping() {
                    continue;
                }
            }
            self.started(&jobs);
            return Ok(jobs);
        }
    }

    /// Whether a lease of `queues` can skip its query and wait at once: the last lease of the
    /// same queues, none of them limited, found fewer jobs than it asked for; nothing has woken
    /// the leases or run `maintain` since (`wakes` unchanged); nothing has come due; and it
    /// looked less than `poll_ms` ago (the bound for writes nothing announces, as for a
    /// waiting lease). Saves a query that would find nothing, and leaves the lease waiting
    /// where the next enqueue hands it its jobs.
    fn known_drained(&self, queues: &[String], wakes: u64, now: u64) -> bool {
        let drained = self.drained.lock().unwrap_or_else(PoisonError::into_inner);
        drained.as_ref().is_some_and(|d| {
            d.wakes == wakes
                && d.queues == queues
                && now < d.at_ms + self.cfg.poll_ms
                && (now as i64) < self.next_due.load(Ordering::SeqCst)
        })
    }

    /// Waits up to `nap` (or until `woken`) on the waiting list for an enqueue to hand jobs
    /// over. Empty: none came.
    async fn wait_for_jobs(
        &self,
        ask: LeaseAsk,
        nap: Duration,
        woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Vec<Job> {
        let (reply, mut handed) = oneshot::channel();
        let id = self.waiting_ids.fetch_add(1, Ordering::Relaxed);
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Waiting { id, ask, reply });
        let guard = WaitingGuard { svc: self, id };
        tokio::select! {
            biased;
            jobs = &mut handed => return jobs.unwrap_or_default(),
            _ = tokio::time::timeout(nap, woken) => {}
            () = self.stopping.wait() => {}
        }
        if guard.withdraw() {
            Vec::new()
        } else {
            // An enqueue took this lease and is committing: its answer comes shortly.
            handed.await.unwrap_or_default()
        }
    }

    /// The waiting leases that `rows` (about to be inserted) can serve, taken off the list,
    /// oldest first, until their room covers the jobs that are available at once.
    fn take_waiting(&self, rows: &[Job]) -> Vec<Waiting> {
        let mut ready: HashMap<&str, u64> = HashMap::new();
        for r in rows.iter().filter(|r| r.state == "available") {
            *ready.entry(r.queue.as_str()).or_default() += 1;
        }
        let mut taken = Vec::new();
        if ready.is_empty() {
            return taken;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut i = 0;
        while i < waiting.len() && ready.values().any(|&n| n > 0) {
            let mut room = u64::from(waiting[i].ask.max);
            let mut serves = false;
            for q in &waiting[i].ask.queues {
                if let Some(n) = ready.get_mut(q.as_str()).filter(|n| **n > 0) {
                    let take = room.min(*n);
                    *n -= take;
                    room -= take;
                    serves = true;
                }
            }
            if serves {
                taken.push(waiting.remove(i));
            } else {
                i += 1;
            }
        }
        taken
    }

    /// Publishes jobs' new states on the node's bus (nothing is built when nobody watches).
    fn publish<'a>(&self, now: u64, jobs: impl IntoIterator<Item = (&'a Job, &'a str)>) {
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

    /// Counts leased jobs as started.
    fn started(&self, jobs: &[Job]) {
        if let Some(until) = jobs.iter().filter_map(|j| j.lease_until_ms).min() {
            self.note_due(until);
        }
        let now = self.clock.now_ms();
        self.publish(now, jobs.iter().map(|j| (j, "running")));
        per_kind(
            jobs,
            |j| (&j.queue, &j.kind),
            |q, k, group| {
                metrics::counter!(STARTED, "queue" => q.to_owned(), "kind" => k.to_owned())
                    .increment(group.len() as u64);
                let wait =
                    metrics::histogram!(WAIT, "queue" => q.to_owned(), "kind" => k.to_owned());
                for j in group {
                    let due = j.run_at_ms.max(j.created_at_ms) as u64;
                    wait.record(now.saturating_sub(due) as f64 / 1000.0);
                }
            },
        );
    }

    /// Jobs may be leasable: wakes this node's waiting leases and, on PostgreSQL, the other
    /// nodes' (see [`announcer`]).
    fn announce(&self) {
        self.wake_leases();
        if let Some(tx) = &self.announce_tx {
            let _ = tx.try_send(()); // full: an announcement is already due
        }
    }

    /// Wakes this node's waiting leases (and ends any [`Drained`] shortcut).
    fn wake_leases(&self) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    fn note_due(&self, at_ms: i64) {
        self.next_due.fetch_min(at_ms, Ordering::SeqCst);
    }

    /// Promotes due scheduled/retryable jobs to `available` and rescues running jobs whose
    /// lease ran out — when one may be due (the earliest time this node knows of), and at least
    /// every `poll_ms` (for other nodes' writes). Leases then read `available` jobs only.
    pub async fn maintain(&self, now: u64) -> Result<(), JobsError> {
        let due = self.next_due.load(Ordering::SeqCst);
        let checked = self.checked_at.load(Ordering::SeqCst);
        if (now as i64) < due && now < checked + self.cfg.poll_ms && now >= checked {
            return Ok(());
        }
        if self.maintaining.swap(true, Ordering::SeqCst) {
            return Ok(()); // another lease on this node is at it
        }
        // Counted before and after: a lease that looks while this runs, or before, does not
        // mark its queues drained past it (see `known_drained`).
        self.wakes.fetch_add(1, Ordering::SeqCst);
        let result = async {
            self.checked_at.store(now, Ordering::SeqCst);
            let dead = self.store.rescue(now).await.map_err(self.db())?;
            crate::events::publish(
                &self.hub,
                now,
                dead.iter().map(|d| {
                    (
                        d.id.as_str(),
                        d.queue.as_str(),
                        d.kind.as_str(),
                        "dead",
                        None,
                    )
                }),
            );
            for d in dead {
                metrics::counter!(DEAD, "queue" => d.queue, "kind" => d.kind).increment(1);
            }
            self.store.promote(now).await.map_err(self.db())?;
            let next = self.store.next_due().await.map_err(self.db())?;
            self.next_due
                .store(next.unwrap_or(i64::MAX), Ordering::SeqCst);
            Ok(())
        }
        .await;
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.maintaining.store(false, Ordering::SeqCst);
        result
    }

    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        extend_ms: Option<u64>,
    ) -> Result<Job, JobsError> {
        let job = self.get(id).await?.0;
        let ms = extend_ms.unwrap_or(job.timeout_ms as u64);
        if ms == 0 || ms > 86_400_000 {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "extend_ms",
                "must be 1 to 86400000",
            )]));
        }
        self.store
            .heartbeat(id, lease_id, ms, self.clock.now_ms())
            .await
            .map_err(self.db())?
            .ok_or_else(|| not_held(id))
    }

    pub async fn complete(
        &self,
        id: &str,
        lease_id: &str,
        result: Option<&serde_json::Value>,
    ) -> Result<Job, JobsError> {
        let item = Completion {
            id: id.to_owned(),
            lease_id: lease_id.to_owned(),
            result: result.map(ToString::to_string),
        };
        let completed = self.complete_batch(vec![item]).await?.completed;
        // One read answers both ways: the completed job, or why it was not completed.
        match self.store.get(id).await.map_err(self.db())? {
            None => Err(JobsError::NotFound(id.to_owned())),
            Some(job) if completed == 1 => Ok(job),
            Some(_) => Err(not_held(id)),
        }
    }

    /// Completes many jobs in one statement; those whose lease no longer holds are listed.
    pub async fn complete_batch(
        &self,
        items: Vec<Completion>,
    ) -> Result<BatchCompleted, JobsError> {
        if items.is_empty() || items.len() > 10_000 {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "items",
                "give 1 to 10000 completions",
            )]));
        }
        let now = self.clock.now_ms();
        let done = self.store.complete(&items, now).await.map_err(self.db())?;
        crate::events::publish(
            &self.hub,
            now,
            done.iter().map(|c| {
                (
                    c.id.as_str(),
                    c.queue.as_str(),
                    c.kind.as_str(),
                    "completed",
                    None,
                )
            }),
        );
        per_kind(
            &done,
            |c| (&c.queue, &c.kind),
            |q, k, group| {
                metrics::counter!(COMPLETED, "queue" => q.to_owned(), "kind" => k.to_owned())
                    .increment(group.len() as u64);
                let run = metrics::histogram!(RUN, "queue" => q.to_owned(), "kind" => k.to_owned());
                for start in group.iter().filter_map(|c| c.started_at_ms) {
                    run.record(now.saturating_sub(start as u64) as f64 / 1000.0);
                }
            },
        );
        let rejected = if done.len() == items.len() {
            Vec::new()
        } else {
            let ok: std::collections::HashSet<&str> = done.iter().map(|c| c.id.as_str()).collect();
            items
                .into_iter()
                .filter(|i| !ok.contains(i.id.as_str()))
                .map(|i| i.id)
                .collect()
        };
        Ok(BatchCompleted {
            completed: done.len(),
            rejected,
        })
    }

    pub async fn fail(
        &self,
        id: &str,
        lease_id: &str,
        error: &str,
        retryable: bool,
        retry_in_ms: Option<u64>,
    ) -> Result<Job, JobsError> {
        let (job, _) = self.get(id).await?;
        if job.lease_id.as_deref() != Some(lease_id) || job.state() != crate::engine::State::Running
        {
            return Err(not_held(id));
        }
        let now = self.clock.now_ms();
        let next = match after_failure(
            now,
            job.attempt as u32,
            job.max_attempts as u32,
            retryable,
            retry_in_ms,
            (job.backoff_base_ms as u64, job.backoff_max_ms as u64),
            fastrand::f64(),
        ) {
            AfterFailure::RetryAt(at) => Some(at),
            AfterFailure::Dead => None,
        };
        let updated = self
            .store
            .fail(&job, lease_id, error, next, now)
            .await
            .map_err(self.db())?
            .ok_or_else(|| not_held(id))?;
        if let Some(at) = next {
            self.note_due(at as i64);
        }
        self.publish(now, [(&updated, updated.state.as_str())]);
        let (q, k) = (updated.queue.clone(), updated.kind.clone());
        metrics::counter!(FAILED, "queue" => q.clone(), "kind" => k.clone()).increment(1);
        if next.is_none() {
            metrics::counter!(DEAD, "queue" => q, "kind" => k).increment(1);
        }
        Ok(updated)
    }

    /// Gives a leased job back at once, this attempt not counted (a worker shutting down).
    pub async fn release(&self, id: &str, lease_id: &str) -> Result<Job, JobsError> {
        let now = self.clock.now_ms();
        let job = self
            .store
            .release(id, lease_id, now)
            .await
            .map_err(self.db())?
            .ok_or_else(|| not_held(id))?;
        self.publish(now, [(&job, job.state.as_str())]);
        self.announce();
        Ok(job)
    }

    pub async fn get(&self, id: &str) -> Result<(Job, Vec<AttemptError>), JobsError> {
        let job = self
            .store
            .get(id)
            .await
            .map_err(self.db())?
            .ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
        let errors = self.store.errors(id).await.map_err(self.db())?;
        Ok((job, errors))
    }

    fn check_filter(f: &Filter) -> Result<(), JobsError> {
        if !f.state.is_empty() && crate::engine::State::parse(&f.state).is_none() {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "state",
                "one of scheduled, available, running, retryable, completed, dead, cancelled",
            )]));
        }
        Ok(())
    }

    pub async fn list(&self, f: &Filter, cursor: &str, limit: u32) -> Result<Vec<Job>, JobsError> {
        Self::check_filter(f)?;
        self.store.list(f, cursor, limit).await.map_err(self.db())
    }

    pub async fn retry(&self, id: &str) -> Result<Job, JobsError> {
        let now = self.clock.now_ms();
        let mut jobs = self
            .store
            .retry(Some(id), &Filter::default(), now)
            .await
            .map_err(self.db())?;
        self.publish(now, jobs.iter().map(|j| (j, j.state.as_str())));
        match jobs.pop() {
            Some(j) => {
                self.announce();
                Ok(j)
            }
            None => Err(self
                .conflict(id, "only dead, cancelled or retryable jobs can be retried")
                .await),
        }
    }

    /// Retries every dead, cancelled or retryable job matching the filter; returns how many.
    pub async fn retry_where(&self, f: &Filter) -> Result<usize, JobsError> {
        Self::check_filter(f)?;
        let now = self.clock.now_ms();
        let jobs = self.store.retry(None, f, now).await.map_err(self.db())?;
        self.publish(now, jobs.iter().map(|j| (j, j.state.as_str())));
        let n = jobs.len();
        self.announce();
        Ok(n)
    }

    /// Deletes every finished (dead, cancelled, completed) job matching the filter.
    pub async fn discard_where(&self, f: &Filter) -> Result<u64, JobsError> {
        Self::check_filter(f)?;
        self.store.discard(f).await.map_err(self.db())
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, JobsError> {
        let now = self.clock.now_ms();
        match self.store.cancel(id, now).await.map_err(self.db())? {
            Some(j) => {
                self.publish(now, [(&j, j.state.as_str())]);
                Ok(j)
            }
            None => Err(self
                .conflict(
                    id,
                    "only scheduled, available or retryable jobs can be cancelled",
                )
                .await),
        }
    }

    async fn conflict(&self, id: &str, why: &str) -> JobsError {
        match self.store.get(id).await {
            Ok(Some(j)) => JobsError::Conflict(format!("job `{id}` is {}: {why}", j.state)),
            Ok(None) => JobsError::NotFound(id.to_owned()),
            Err(e) => self.db()(e),
        }
    }

    /// Every queue that has settings or jobs, with counts.
    pub async fn queues(&self) -> Result<Vec<QueueInfo>, JobsError> {
        let rows = self.store.all_queue_rows().await.map_err(self.db())?;
        let counts = self
            .store
            .counts(self.clock.now_ms())
            .await
            .map_err(self.db())?;
        let mut names: Vec<String> = rows
            .iter()
            .map(|r| r.queue.clone())
            .chain(counts.iter().map(|(q, _)| q.clone()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names
            .into_iter()
            .map(|q| {
                let row = rows.iter().find(|r| r.queue == q);
                QueueInfo {
                    settings: row.map(QueueSettings::of).unwrap_or_default(),
                    has_secret: row.is_some_and(|r| r.secret.is_some()),
                    counts: counts
                        .iter()
                        .find(|(c, _)| *c == q)
                        .map(|(_, c)| c.clone())
                        .unwrap_or_default(),
                    queue: q,
                }
            })
            .collect())
    }

    pub async fn queue(&self, queue: &str) -> Result<QueueInfo, JobsError> {
        check_queue(queue)?;
        Ok(self
            .queues()
            .await?
            .into_iter()
            .find(|q| q.queue == queue)
            .unwrap_or_else(|| QueueInfo {
                queue: queue.to_owned(),
                settings: QueueSettings::default(),
                has_secret: false,
                counts: QueueCounts::default(),
            }))
    }

    /// Replaces a queue's settings.
    pub async fn put_queue(&self, queue: &str, s: &QueueSettings) -> Result<QueueInfo, JobsError> {
        check_queue(queue)?;
        let errors = s.validate();
        if !errors.is_empty() {
            return Err(JobsError::Invalid(errors));
        }
        self.store
            .put_queue(&s.row(queue, self.clock.now_ms()))
            .await
            .map_err(self.db())?;
        self.settings_changed.notify_waiters();
        self.announce();
        self.queue(queue).await
    }

    /// Pauses (no leases) or resumes a queue, keeping its other settings.
    pub async fn set_paused(&self, queue: &str, paused: bool) -> Result<QueueInfo, JobsError> {
        check_queue(queue)?;
        let rows = self
            .store
            .queue_rows(&[queue.to_owned()])
            .await
            .map_err(self.db())?;
        let mut s = rows.first().map(QueueSettings::of).unwrap_or_default();
        s.paused = paused;
        self.store
            .put_queue(&s.row(queue, self.clock.now_ms()))
            .await
            .map_err(self.db())?;
        self.settings_changed.notify_waiters();
        self.announce();
        self.queue(queue).await
    }

    /// Deletes completed/cancelled jobs past retention and dead ones past `dead_retention_ms`.
    pub async fn prune(&self) -> Result<u64, JobsError> {
        let now = self.clock.now_ms();
        let rows = self.store.all_queue_rows().await.map_err(self.db())?;
        let own: Vec<String> = rows
            .iter()
            .filter(|r| r.retention_ms.is_some())
            .map(|r| r.queue.clone())
            .collect();
        let mut n = 0;
        let mut sweep =
            async |queue: &str, states: &[&str], keep_ms: u64| -> Result<(), JobsError> {
                loop {
                    let got = self
                        .store
                        .prune(queue, &own, states, now.saturating_sub(keep_ms), 5000)
                        .await
                        .map_err(self.db())?;
                    n += got;
                    if got < 5000 {
                        return Ok(());
                    }
                }
            };
        sweep("", &["completed", "cancelled"], self.cfg.retention_ms).await?;
        for r in rows.iter().filter(|r| r.retention_ms.is_some()) {
            sweep(
                &r.queue,
                &["completed", "cancelled"],
                r.retention_ms.unwrap_or(0) as u64,
            )
            .await?;
        }
        // Dead jobs keep the node-wide DLQ retention in every queue.
        sweep("", &["dead"], self.cfg.dead_retention_ms).await?;
        for q in &own {
            sweep(q, &["dead"], self.cfg.dead_retention_ms).await?;
        }
        Ok(n)
    }

    /// Refreshes the queue-depth gauges.
    async fn gauge_depths(&self) -> Result<(), JobsError> {
        for (queue, c) in self
            .store
            .counts(self.clock.now_ms())
            .await
            .map_err(self.db())?
        {
            for s in crate::engine::State::ALL {
                let n = c
                    .by_state
                    .iter()
                    .find(|(st, _)| st == s.as_str())
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!(DEPTH, "queue" => queue.clone(), "state" => s.as_str())
                    .set(n as f64);
            }
        }
        Ok(())
    }
}

fn check_queue(queue: &str) -> Result<(), JobsError> {
    if valid_name(queue) {
        Ok(())
    } else {
        Err(JobsError::Invalid(vec![FieldError::new(
            "queue",
            NAME.describe(),
        )]))
    }
}

/// Answers the waiting leases an enqueue served; a lease whose long-poll ended meanwhile gets
/// its jobs given back at once (true when any were).
async fn deliver(
    store: &JobStore,
    replies: Vec<oneshot::Sender<Vec<Job>>>,
    leased: Vec<Vec<Job>>,
    now: u64,
) -> bool {
    let mut released = false;
    for (reply, jobs) in replies.into_iter().zip(leased) {
        let Err(jobs) = reply.send(jobs) else {
            continue;
        };
        released |= !jobs.is_empty();
        for j in jobs {
            let lease_id = j.lease_id.unwrap_or_default();
            if let Err(e) = store.release(&j.id, &lease_id, now).await {
                tracing::warn!(job = %j.id, error = %e, "jobs: releasing a job nobody waits for failed; it runs when its lease runs out");
            }
        }
    }
    released
}

/// Calls `f` once per run of consecutive items with the same (queue, kind): metrics are
/// looked up once per run (a batch is usually one run), not once per job.
fn per_kind<T>(
    items: &[T],
    key: impl Fn(&T) -> (&String, &String),
    mut f: impl FnMut(&str, &str, &[T]),
) {
    let mut start = 0;
    for i in 1..=items.len() {
        if i == items.len() || key(&items[i]) != key(&items[start]) {
            let (q, k) = key(&items[start]);
            f(q, k, &items[start..i]);
            start = i;
        }
    }
}

/// Sends the announcements other nodes' [`listen`] hears: one NOTIFY at a time, outside the
/// enqueues' transactions and without waiting for a WAL flush, and none while no other node
/// listens (see [`Channel`]). (A NOTIFY inside an enqueue would serialize every enqueue's
/// commit, flush included, on PostgreSQL's notification-queue lock: under 1 000 enqueues/s
/// here.) Stops when the service is dropped.
async fn announcer(mut rx: tokio::sync::mpsc::Receiver<()>, channel: Channel) {
    while rx.recv().await.is_some() {
        if channel.others_listen() {
            channel
                .send(channel.node(), "other nodes find the jobs when they poll")
                .await;
        }
    }
}

/// Wakes this node's waiting leases whenever another node announces jobs, or a transactional
/// enqueue commits (PostgreSQL NOTIFY). Reconnects when the connection drops; polling covers
/// the gap.
async fn listen(svc: std::sync::Weak<JobsService>, channel: Channel) {
    channel
        .listen(
            || svc.strong_count() > 0,
            |payload| {
                if payload == Some(channel.node()) {
                    return true; // this node's own
                }
                svc.upgrade().map(|s| s.wake_leases()).is_some()
            },
        )
        .await;
}

/// Prunes and refreshes gauges every `prune_every_ms` (every node does; deletes are idempotent).
async fn housekeeping(svc: std::sync::Weak<JobsService>) {
    loop {
        let every = match svc.upgrade() {
            Some(s) => {
                if let Err(e) = s.prune().await {
                    tracing::warn!(error = %e, "jobs: pruning failed");
                }
                let _ = s.gauge_depths().await;
                s.cfg.prune_every_ms
            }
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(every.max(100))).await;
    }
}

fn not_held(id: &str) -> JobsError {
    JobsError::Conflict(format!(
        "job `{id}` is not leased with that lease_id (its lease ran out or it was never yours)"
    ))
}

fn describe_metrics() {
    metrics::describe_counter!(ENQUEUED, "jobs enqueued, by queue and kind");
    metrics::describe_counter!(
        STARTED,
        "jobs leased to a worker (each attempt), by queue and kind"
    );
    metrics::describe_counter!(COMPLETED, "jobs completed, by queue and kind");
    metrics::describe_counter!(FAILED, "failed attempts, by queue and kind");
    metrics::describe_counter!(
        DEAD,
        "jobs that failed for good (the dead-letter queue), by queue and kind"
    );
    metrics::describe_histogram!(
        WAIT,
        metrics::Unit::Seconds,
        "from due (enqueue or run_at) to start, by queue and kind"
    );
    metrics::describe_histogram!(
        RUN,
        metrics::Unit::Seconds,
        "from start to completion, by queue and kind"
    );
    metrics::describe_gauge!(
        DEPTH,
        "jobs by queue and state (refreshed every jobs.prune_every_ms)"
    );
}

impl JobsService {
    /// Checks a job by the rules `enqueue` applies, without enqueueing it (for blocks that
    /// store job templates to enqueue later, such as cron).
    pub fn check(&self, job: &NewJob) -> Result<(), Vec<FieldError>> {
        prepare(job, "", self.cfg.max_payload_bytes, self.clock.now_ms()).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_kind_visits_each_run_of_equal_queue_and_kind_once() {
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        let items = vec![
            s("q", "a"),
            s("q", "a"),
            s("q", "b"),
            s("r", "b"),
            s("q", "a"),
        ];
        let mut seen = Vec::new();
        per_kind(
            &items,
            |(q, k)| (q, k),
            |q, k, g| seen.push(format!("{q}/{k}x{}", g.len())),
        );
        assert_eq!(seen, ["q/ax2", "q/bx1", "r/bx1", "q/ax1"]);
        let none: Vec<(String, String)> = Vec::new();
        per_kind(
            &none,
            |(q, k)| (q, k),
            |_, _, _| panic!("called for no items"),
        );
    }

    #[tokio::test]
    async fn jobs_handed_to_a_lease_that_is_gone_go_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::connect(&mortar_core::storage::StorageConfig {
            data_dir: dir.path().into(),
            database_url: None,
            redis_url: None,
            redis_prefix: "m:".into(),
        })
        .await
        .unwrap();
        storage.migrate(&migrations()).await.unwrap();
        let clock = mortar_core::clock::ManualClock::at(1_800_000_000_000);
        let svc = JobsService::start(&storage, &JobsConfig::default(), Arc::new(clock));
        // A lease taken off the waiting list by an enqueue whose long-poll ended meanwhile.
        let (reply, handed) = oneshot::channel();
        drop(handed);
        svc.waiting.lock().unwrap().push(Waiting {
            id: 7,
            ask: LeaseAsk {
                queues: vec!["q".into()],
                max: 1,
                worker: "gone".into(),
            },
            reply,
        });
        let job: NewJob =
            serde_json::from_value(serde_json::json!({"queue": "q", "kind": "k"})).unwrap();
        let id = svc.enqueue(&[job]).await.unwrap().remove(0).job.id;
        assert_eq!(
            svc.waiting_leases(),
            0,
            "the enqueue took the waiting lease"
        );
        let (j, _) = svc.get(&id).await.unwrap();
        assert_eq!(
            (j.state.as_str(), j.attempt, j.lease_id),
            ("available", 0, None),
            "leased for the gone lease, then released without counting the attempt"
        );
    }
}

