//! The service's configuration and value types: `[jobs]` (`JobsConfig`), the migrations, a job
//! to enqueue (`NewJob`, `Backoff`) and its answer (`Enqueued`), queue settings
//! (`QueueSettings`, `QueueRate`, `QueueInfo`, and their stored rows) and `BatchCompleted`.

use serde::{Deserialize, Serialize};

use crate::state::UniqueWhile;
use crate::store::{Job, QueueCounts, QueueRow};

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
    /// How long a lease lasts before its worker must heartbeat (or complete): how soon a job
    /// whose worker died runs again. Never past the attempt's deadline (`timeout_ms`).
    pub lease_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            poll_ms: 100,
            retention_ms: 24 * 3_600_000,
            dead_retention_ms: 7 * 24 * 3_600_000,
            prune_every_ms: 60_000,
            lease_ms: 30_000,
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
        mortar_core::config::KeyDoc::new(
            "jobs.lease_ms",
            "how long a worker's lease lasts before it must heartbeat: how soon the job of a worker that died runs again (never past the attempt's timeout_ms)",
        ),
    ];

    /// Rules the types cannot express.
    pub fn validate(&self) -> Result<(), mortar_core::config::ConfigError> {
        if !(100..=86_400_000).contains(&self.lease_ms) {
            return Err(mortar_core::config::ConfigError(format!(
                "jobs.lease_ms: {} is out of range: give 100 to 86400000 (milliseconds)",
                self.lease_ms
            )));
        }
        Ok(())
    }
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
    /// The most one attempt may run, from when it is leased, however often its worker
    /// heartbeats (1 to 86400000, default 30000: 30 s). Past it the attempt fails as timed out
    /// and is retried with the backoff (dead when the attempts run out). Give long jobs a
    /// longer one; the lease a worker renews by heartbeats is `jobs.lease_ms`, never past it.
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
    pub(super) fn row(&self, queue: &str, now: u64) -> QueueRow {
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

    pub(super) fn of(r: &QueueRow) -> Self {
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
