//! A worker's calls: lease (long-poll), and on a leased job heartbeat, complete (one or a
//! batch), fail and release; and retry.

use std::sync::Arc;

use axum::extract::State;
use mortar_core::Problem;
use mortar_core::extract::{ApiJson, ApiPath};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::view::{JobList, JobView, Name, view};
use super::{GONE, JobPath, NOT_HELD};
use crate::service::JobsService;
use crate::store::Completion;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// 1 to 100 queues to take jobs from.
    #[schema(value_type = Vec<Name>, min_items = 1, max_items = 100)]
    pub queues: Vec<String>,
    /// Most jobs to take (1 to 1000, default 1).
    #[serde(default = "one")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: u32,
    /// Wait this long for jobs when none are due (0 to 60000).
    #[serde(default)]
    #[schema(maximum = 60000)]
    pub wait_ms: u64,
    /// Who is working (shown on running jobs): 1 to 256 bytes.
    #[schema(min_length = 1, max_length = 256)]
    pub worker: String,
}

fn one() -> u32 {
    1
}

/// Take due jobs (highest priority first, then oldest). Each is leased for `jobs.lease_ms`
/// (30 s), or its `timeout_ms` if shorter: heartbeats renew the lease, never past the attempt's
/// deadline (`timeout_ms` from now, shown as `deadline_at`). A lease that runs out returns its
/// job for another attempt (at once, or after the backoff when the attempt timed out); the old
/// lease can no longer complete it.
#[utoipa::path(post, path = "/v1/jobs/lease", tag = "jobs", request_body = LeaseBody,
    responses((status = 200, body = JobList), (status = 400, body = Problem)))]
pub(super) async fn lease(
    State(svc): State<Arc<JobsService>>,
    ApiJson(b): ApiJson<LeaseBody>,
) -> Result<ApiJson<JobList>, Problem> {
    let jobs = svc.lease(&b.queues, b.max, b.wait_ms, &b.worker).await?;
    Ok(ApiJson(JobList {
        items: jobs.into_iter().map(|j| view(j, Vec::new())).collect(),
        next_cursor: None,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_id: String,
    /// The lease's new length from now, 1 to 86400000 (default: `jobs.lease_ms`); never past
    /// the attempt's deadline.
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub extend_ms: Option<u64>,
}

/// Extend the lease of a running job, never past its attempt's deadline (`timeout_ms` from when
/// it was leased). 409 when the lease is no longer yours; 410 when the attempt is over: it timed
/// out (type `timed-out`) or the job was cancelled while it ran (type `cancelled`: how a worker
/// learns of a cancellation).
#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "jobs", params(JobPath), request_body = HeartbeatBody,
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem, description = NOT_HELD),
        (status = 410, body = Problem, description = GONE)))]
pub(super) async fn heartbeat(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
    ApiJson(b): ApiJson<HeartbeatBody>,
) -> Result<ApiJson<JobView>, Problem> {
    Ok(ApiJson(view(
        svc.heartbeat(&id, &b.lease_id, b.extend_ms).await?,
        Vec::new(),
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    pub lease_id: String,
    /// Any JSON, kept with the job.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

/// Mark a job done — also when its cancellation was asked for meanwhile (the completion came
/// first). 409 when the lease ran out (another attempt may be running); 410 when the attempt
/// timed out or the job was cancelled while it ran.
#[utoipa::path(post, path = "/v1/jobs/{id}/complete", tag = "jobs", params(JobPath), request_body = CompleteBody,
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem, description = NOT_HELD),
        (status = 410, body = Problem, description = GONE)))]
pub(super) async fn complete(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
    ApiJson(b): ApiJson<CompleteBody>,
) -> Result<ApiJson<JobView>, Problem> {
    Ok(ApiJson(view(
        svc.complete(&id, &b.lease_id, b.result.as_ref()).await?,
        Vec::new(),
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    pub lease_id: String,
    /// What went wrong: at most 64 KiB.
    #[schema(max_length = 65536)]
    pub error: String,
    /// false: dead at once (no more attempts).
    #[serde(default = "yes")]
    pub retryable: bool,
    /// Retry after this long instead of the backoff schedule.
    pub retry_in_ms: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Report a failed attempt: retried with backoff, or dead after max_attempts / when not
/// retryable; cancelled when its cancellation was asked for. 410 when the attempt already timed
/// out or the job was cancelled while it ran.
#[utoipa::path(post, path = "/v1/jobs/{id}/fail", tag = "jobs", params(JobPath), request_body = FailBody,
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem, description = NOT_HELD),
        (status = 410, body = Problem, description = GONE)))]
pub(super) async fn fail(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
    ApiJson(b): ApiJson<FailBody>,
) -> Result<ApiJson<JobView>, Problem> {
    if b.error.len() > 64 * 1024 {
        return Err(Problem::invalid_body(vec![mortar_core::FieldError::new(
            "error",
            "at most 64 KiB",
        )]));
    }
    Ok(ApiJson(view(
        svc.fail(&id, &b.lease_id, &b.error, b.retryable, b.retry_in_ms)
            .await?,
        Vec::new(),
    )))
}

/// Run a dead, cancelled or retryable job again now, with a fresh budget of `max_attempts`
/// attempts; attempt numbers keep counting (`attempts_before_retry` says where the budget
/// starts), so each attempt's error keeps a number of its own.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(JobPath),
    responses((status = 200, body = JobView), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the job is not dead, cancelled or retryable")))]
pub(super) async fn retry(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
) -> Result<ApiJson<JobView>, Problem> {
    Ok(ApiJson(view(svc.retry(&id).await?, Vec::new())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub lease_id: String,
}

/// Give a leased job back at once, this attempt not counted (a worker shutting down); a job
/// whose cancellation was asked for is cancelled instead.
#[utoipa::path(post, path = "/v1/jobs/{id}/release", tag = "jobs", operation_id = "release_job", params(JobPath), request_body = ReleaseBody,
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem, description = NOT_HELD),
        (status = 410, body = Problem, description = GONE)))]
pub(super) async fn release(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
    ApiJson(b): ApiJson<ReleaseBody>,
) -> Result<ApiJson<JobView>, Problem> {
    Ok(ApiJson(view(
        svc.release(&id, &b.lease_id).await?,
        Vec::new(),
    )))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteItem {
    pub id: String,
    pub lease_id: String,
    /// Any JSON, kept with the job.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatchBody {
    /// 1 to 10000 completions, in one statement.
    #[schema(min_items = 1, max_items = 10000)]
    pub items: Vec<CompleteItem>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompleteBatchAnswer {
    pub completed: usize,
    /// Jobs not completed: their lease ran out, was never theirs, or they don't exist.
    pub rejected: Vec<Rejected>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Rejected {
    pub id: String,
    pub detail: String,
}

/// Complete many jobs at once (what a fast worker does).
#[utoipa::path(post, path = "/v1/jobs/complete", tag = "jobs", request_body = CompleteBatchBody,
    responses((status = 200, body = CompleteBatchAnswer), (status = 400, body = Problem)))]
pub(super) async fn complete_batch(
    State(svc): State<Arc<JobsService>>,
    ApiJson(b): ApiJson<CompleteBatchBody>,
) -> Result<ApiJson<CompleteBatchAnswer>, Problem> {
    let items = b
        .items
        .into_iter()
        .map(|i| Completion {
            id: i.id,
            lease_id: i.lease_id,
            result: i.result.map(|r| r.to_string()),
        })
        .collect();
    let done = svc.complete_batch(items).await?;
    Ok(ApiJson(CompleteBatchAnswer {
        completed: done.completed,
        rejected: done
            .rejected
            .into_iter()
            .map(|id| Rejected {
                detail: format!("job `{id}` is not leased with that lease_id"),
                id,
            })
            .collect(),
    }))
}
