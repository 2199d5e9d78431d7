//! `JobsService`: validation, enqueue, long-poll leasing, completion and failure rules.

use std::sync::Arc;
use std::time::Duration;

use mortar_core::FieldError;
use mortar_core::clock::Clock;
use mortar_core::storage::Storage;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::engine::{AfterFailure, after_failure};
use crate::error::JobsError;
use crate::store::{AttemptError, Job, JobStore};

pub const ENQUEUED: &str = "mortar_jobs_enqueued_total";
pub const STARTED: &str = "mortar_jobs_started_total";
pub const COMPLETED: &str = "mortar_jobs_completed_total";
pub const FAILED: &str = "mortar_jobs_failed_total";
pub const DEAD: &str = "mortar_jobs_dead_total";

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
    /// How often an idle long-poll re-checks for jobs enqueued through other nodes.
    pub poll_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            poll_ms: 50,
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
            "how often a waiting lease re-checks for jobs enqueued on other nodes (same-node enqueues wake it at once)",
        ),
    ];
}

/// A job to enqueue.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
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
    /// Attempts in all (1 to 1000, default 20).
    #[serde(default = "default_attempts")]
    pub max_attempts: i32,
    #[serde(default)]
    pub backoff: Backoff,
    /// The lease length: a worker must complete or heartbeat within it (default 30 s).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
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

fn default_priority() -> i32 {
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
    wake: Notify,
}

impl std::fmt::Debug for JobsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsService").finish_non_exhaustive()
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'))
}

#[allow(clippy::needless_pass_by_value)] // used as `.map_err(db)`
fn db(e: sqlx::Error) -> JobsError {
    tracing::error!(error = %e, "jobs: database error");
    JobsError::Unavailable("database".into())
}

impl JobsService {
    pub fn start(storage: &Storage, cfg: &JobsConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        describe_metrics();
        Arc::new(Self {
            store: JobStore::new(storage.durable.clone()),
            cfg: cfg.clone(),
            clock,
            wake: Notify::new(),
        })
    }

    fn validate(&self, j: &NewJob, at: &str) -> Result<String, Vec<FieldError>> {
        let f = |name: &str| {
            if at.is_empty() {
                name.to_owned()
            } else {
                format!("{at}.{name}")
            }
        };
        let mut errors = Vec::new();
        if !valid_name(&j.queue) {
            errors.push(FieldError::new(
                f("queue"),
                "1 to 128 of letters, digits, `_`, `.`, `-`, `:`",
            ));
        }
        if !valid_name(&j.kind) {
            errors.push(FieldError::new(
                f("kind"),
                "1 to 128 of letters, digits, `_`, `.`, `-`, `:`",
            ));
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
        if j.delay_ms > 366 * 86_400_000 {
            errors.push(FieldError::new(f("delay_ms"), "at most one year"));
        }
        let payload = j.payload.to_string();
        if payload.len() > self.cfg.max_payload_bytes {
            errors.push(FieldError::new(
                f("payload"),
                format!(
                    "{} bytes is over jobs.max_payload_bytes ({})",
                    payload.len(),
                    self.cfg.max_payload_bytes
                ),
            ));
        }
        if errors.is_empty() {
            Ok(payload)
        } else {
            Err(errors)
        }
    }

    fn row(j: &NewJob, payload: String, now: u64) -> Job {
        let run_at = now + j.delay_ms;
        Job {
            id: mortar_core::ids::new_id(),
            queue: j.queue.clone(),
            kind: j.kind.clone(),
            payload,
            priority: j.priority,
            run_at_ms: run_at as i64,
            state: if j.delay_ms > 0 {
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
            unique_key: None,
            created_at_ms: now as i64,
            finished_at_ms: None,
        }
    }

    /// Enqueues jobs atomically (all or none); durable when this returns.
    pub async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Job>, JobsError> {
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
            match self.validate(j, &at) {
                Ok(payload) => rows.push(Self::row(j, payload, now)),
                Err(e) => errors.extend(e),
            }
        }
        if !errors.is_empty() {
            return Err(JobsError::Invalid(errors));
        }
        self.store.insert(&rows).await.map_err(db)?;
        for r in &rows {
            metrics::counter!(ENQUEUED, "queue" => r.queue.clone()).increment(1);
        }
        self.wake.notify_waiters();
        Ok(rows)
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
            let jobs = self
                .store
                .lease(queues, max, worker, self.clock.now_ms())
                .await
                .map_err(db)?;
            if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
                for j in &jobs {
                    metrics::counter!(STARTED, "queue" => j.queue.clone()).increment(1);
                }
                return Ok(jobs);
            }
            let nap =
                Duration::from_millis(self.cfg.poll_ms).min(deadline - tokio::time::Instant::now());
            let _ = tokio::time::timeout(nap, woken).await;
        }
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
            .map_err(db)?
            .ok_or_else(|| not_held(id))
    }

    pub async fn complete(
        &self,
        id: &str,
        lease_id: &str,
        result: Option<&serde_json::Value>,
    ) -> Result<Job, JobsError> {
        let result = result.map(ToString::to_string);
        let job = self
            .store
            .complete(id, lease_id, result, self.clock.now_ms())
            .await
            .map_err(db)?
            .ok_or_else(|| not_held(id))?;
        metrics::counter!(COMPLETED, "queue" => job.queue.clone()).increment(1);
        Ok(job)
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
            .map_err(db)?
            .ok_or_else(|| not_held(id))?;
        metrics::counter!(FAILED, "queue" => updated.queue.clone()).increment(1);
        if next.is_none() {
            metrics::counter!(DEAD, "queue" => updated.queue.clone()).increment(1);
        }
        Ok(updated)
    }

    pub async fn get(&self, id: &str) -> Result<(Job, Vec<AttemptError>), JobsError> {
        let job = self
            .store
            .get(id)
            .await
            .map_err(db)?
            .ok_or_else(|| JobsError::NotFound(id.to_owned()))?;
        let errors = self.store.errors(id).await.map_err(db)?;
        Ok((job, errors))
    }

    pub async fn list(
        &self,
        state: &str,
        queue: &str,
        cursor: &str,
        limit: u32,
    ) -> Result<Vec<Job>, JobsError> {
        if !state.is_empty() && crate::engine::State::parse(state).is_none() {
            return Err(JobsError::Invalid(vec![FieldError::new(
                "state",
                "one of scheduled, available, running, retryable, completed, dead, cancelled",
            )]));
        }
        self.store
            .list(state, queue, cursor, limit)
            .await
            .map_err(db)
    }

    pub async fn retry(&self, id: &str) -> Result<Job, JobsError> {
        let job = self
            .store
            .retry(id, self.clock.now_ms())
            .await
            .map_err(db)?;
        match job {
            Some(j) => {
                self.wake.notify_waiters();
                Ok(j)
            }
            None => Err(self
                .conflict(id, "only dead, cancelled or retryable jobs can be retried")
                .await),
        }
    }

    pub async fn cancel(&self, id: &str) -> Result<Job, JobsError> {
        match self
            .store
            .cancel(id, self.clock.now_ms())
            .await
            .map_err(db)?
        {
            Some(j) => Ok(j),
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
            Err(e) => db(e),
        }
    }
}

fn not_held(id: &str) -> JobsError {
    JobsError::Conflict(format!(
        "job `{id}` is not leased with that lease_id (its lease ran out or it was never yours)"
    ))
}

fn describe_metrics() {
    metrics::describe_counter!(ENQUEUED, "jobs enqueued, by queue");
    metrics::describe_counter!(STARTED, "jobs leased to a worker (each attempt), by queue");
    metrics::describe_counter!(COMPLETED, "jobs completed, by queue");
    metrics::describe_counter!(FAILED, "failed attempts, by queue");
    metrics::describe_counter!(
        DEAD,
        "jobs that failed for good (the dead-letter queue), by queue"
    );
}
