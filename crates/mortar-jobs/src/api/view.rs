//! The wire shapes of jobs: `JobView` (a job with its errors), lists and minimal references.

use mortar_core::clock::rfc3339;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::service::Enqueued;
use crate::state::UniqueWhile;
use crate::store::{AttemptError, Job};

/// A queue or kind name: 1 to 128 of letters, digits, `_`, `.`, `-`, `:`.
#[derive(ToSchema)]
#[schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$")]
pub struct Name(pub String);

#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// The payload as enqueued: any JSON (`null` when none was sent).
    pub payload: serde_json::Value,
    pub priority: i32,
    pub state: crate::state::State,
    /// true when this job already existed (same unique key or Idempotency-Key) and nothing
    /// was created.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The current (or last) attempt, 1 for the first; it keeps counting across retries.
    pub attempt: i32,
    /// Attempts per budget: a retry (from the DLQ, or of a cancelled or retryable job) starts a
    /// fresh budget.
    pub max_attempts: i32,
    /// Attempts made before the last retry: this budget's attempts are the `max_attempts`
    /// after it (absent when 0).
    #[serde(skip_serializing_if = "is_zero")]
    pub attempts_before_retry: i32,
    pub run_at: String,
    pub created_at: String,
    /// When the current (or last) attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The most one attempt may run, from when it is leased.
    pub timeout_ms: i64,
    /// While running: when this attempt times out (`started_at` + `timeout_ms`); heartbeats
    /// never extend the lease past it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at: Option<String>,
    /// While running: its cancellation was asked for, and its worker learns at its next
    /// heartbeat (absent when not).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// When its cancellation was asked for, while it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_while: Option<UniqueWhile>,
    /// Who holds (or last held) the lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Present while leased: pass it to heartbeat/complete/fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    /// What the worker completed it with: any JSON (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorView {
    pub attempt: i32,
    pub error: String,
    pub at: String,
}

pub(super) fn created(e: Enqueued) -> JobView {
    let mut v = view(e.job, Vec::new());
    v.duplicate = e.duplicate;
    v
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &i32) -> bool {
    *n == 0
}

pub(super) fn view(j: Job, errors: Vec<AttemptError>) -> JobView {
    let state = j.state();
    let running = state == crate::state::State::Running;
    JobView {
        attempts_before_retry: j.attempt_base,
        deadline_at: j.deadline_ms().filter(|_| running).map(rfc3339),
        cancel_requested: running && j.cancel_requested_at_ms.is_some(),
        cancel_requested_at: j.cancel_requested_at_ms.map(|t| rfc3339(t as u64)),
        duplicate: false,
        started_at: j.started_at_ms.map(|t| rfc3339(t as u64)),
        timeout_ms: j.timeout_ms,
        tags: serde_json::from_str(&j.tags).unwrap_or_default(),
        unique_while: j
            .unique_while
            .as_deref()
            .and_then(|w| serde_json::from_value(serde_json::Value::String(w.to_owned())).ok()),
        unique_key: j.unique_key,
        worker: j.worker,
        payload: serde_json::from_str(&j.payload).unwrap_or(serde_json::Value::Null),
        state,
        run_at: rfc3339(j.run_at_ms as u64),
        created_at: rfc3339(j.created_at_ms as u64),
        finished_at: j.finished_at_ms.map(|t| rfc3339(t as u64)),
        lease_expires_at: j
            .lease_until_ms
            .filter(|_| state == crate::state::State::Running)
            .map(|t| rfc3339(t as u64)),
        lease_id: j.lease_id.filter(|_| state == crate::state::State::Running),
        result: j.result.and_then(|r| serde_json::from_str(&r).ok()),
        errors: errors
            .into_iter()
            .map(|e| ErrorView {
                attempt: e.attempt,
                error: e.error,
                at: rfc3339(e.at_ms as u64),
            })
            .collect(),
        id: j.id,
        queue: j.queue,
        kind: j.kind,
        priority: j.priority,
        attempt: j.attempt,
        max_attempts: j.max_attempts,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub items: Vec<JobView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A job as a minimal batch reply names it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobRef {
    pub id: String,
    pub state: crate::state::State,
    /// true when this job already existed and nothing was created.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobRefList {
    pub items: Vec<JobRef>,
}
