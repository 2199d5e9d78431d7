//! `/v1/jobs/…`: enqueue (one or a batch), lease (long-poll), heartbeat, complete, fail,
//! inspect, list, retry, cancel.

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use mortar_core::Problem;
use mortar_core::clock::rfc3339;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::JobsError;
use crate::service::{JobsService, NewJob};
use crate::store::{AttemptError, Job};

pub fn router(svc: Arc<JobsService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(enqueue, list))
        .routes(routes!(enqueue_batch))
        .routes(routes!(lease))
        .routes(routes!(get_job, cancel))
        .routes(routes!(heartbeat))
        .routes(routes!(complete))
        .routes(routes!(fail))
        .routes(routes!(retry))
        .with_state(svc)
}

impl From<JobsError> for Problem {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::Invalid(errors) => Problem::invalid_body(errors),
            JobsError::NotFound(id) => Problem::not_found(format!("no job `{id}`")),
            JobsError::Conflict(why) => Problem::conflict(why),
            JobsError::Unavailable(what) => {
                Problem::unavailable(&what, format!("{what} did not answer; retry shortly"))
            }
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub queue: String,
    pub kind: String,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    pub priority: i32,
    pub state: crate::engine::State,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: String,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Present while leased: pass it to heartbeat/complete/fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
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

fn view(j: Job, errors: Vec<AttemptError>) -> JobView {
    let state = j.state();
    JobView {
        payload: serde_json::from_str(&j.payload).unwrap_or(serde_json::Value::Null),
        state,
        run_at: rfc3339(j.run_at_ms as u64),
        created_at: rfc3339(j.created_at_ms as u64),
        finished_at: j.finished_at_ms.map(|t| rfc3339(t as u64)),
        lease_expires_at: j
            .lease_until_ms
            .filter(|_| state == crate::engine::State::Running)
            .map(|t| rfc3339(t as u64)),
        lease_id: j
            .lease_id
            .filter(|_| state == crate::engine::State::Running),
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

/// Enqueue a job. Durable before the answer.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = NewJob,
    responses((status = 201, body = JobView), (status = 400, body = Problem)))]
async fn enqueue(
    State(svc): State<Arc<JobsService>>,
    ApiJson(job): ApiJson<NewJob>,
) -> Result<(StatusCode, ApiJson<JobView>), Problem> {
    let mut jobs = svc.enqueue(std::slice::from_ref(&job)).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(view(jobs.remove(0), Vec::new())),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 10000 jobs, enqueued atomically (all or none).
    pub jobs: Vec<NewJob>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub items: Vec<JobView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Enqueue many jobs in one transaction.
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchBody,
    responses((status = 201, body = JobList), (status = 400, body = Problem)))]
async fn enqueue_batch(
    State(svc): State<Arc<JobsService>>,
    ApiJson(b): ApiJson<BatchBody>,
) -> Result<(StatusCode, ApiJson<JobList>), Problem> {
    let jobs = svc.enqueue(&b.jobs).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(JobList {
            items: jobs.into_iter().map(|j| view(j, Vec::new())).collect(),
            next_cursor: None,
        }),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    pub queues: Vec<String>,
    /// Most jobs to take (1 to 1000, default 1).
    #[serde(default = "one")]
    pub max: u32,
    /// Wait this long for jobs when none are due (0 to 60000).
    #[serde(default)]
    pub wait_ms: u64,
    /// Who is working (shown on running jobs).
    pub worker: String,
}

fn one() -> u32 {
    1
}

/// Take due jobs (highest priority first, then oldest), each leased for its `timeout_ms`.
/// An expired lease returns its job for another attempt; the old lease can no longer complete it.
#[utoipa::path(post, path = "/v1/jobs/lease", tag = "jobs", request_body = LeaseBody,
    responses((status = 200, body = JobList), (status = 400, body = Problem)))]
async fn lease(
    State(svc): State<Arc<JobsService>>,
    ApiJson(b): ApiJson<LeaseBody>,
) -> Result<ApiJson<JobList>, Problem> {
    let jobs = svc.lease(&b.queues, b.max, b.wait_ms, &b.worker).await?;
    Ok(ApiJson(JobList {
        items: jobs.into_iter().map(|j| view(j, Vec::new())).collect(),
        next_cursor: None,
    }))
}

/// A job with every failed attempt's error.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", responses((status = 200, body = JobView), (status = 404, body = Problem)))]
async fn get_job(
    State(svc): State<Arc<JobsService>>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<JobView>, Problem> {
    let (j, errors) = svc.get(&id).await?;
    Ok(ApiJson(view(j, errors)))
}

/// Cancel (discard) a job that has not started or is waiting to retry.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs",
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn cancel(
    State(svc): State<Arc<JobsService>>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<JobView>, Problem> {
    Ok(ApiJson(view(svc.cancel(&id).await?, Vec::new())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// scheduled, available, running, retryable, completed, dead (the DLQ) or cancelled.
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub queue: String,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Jobs by creation order, filtered by state and queue.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListParams), responses((status = 200, body = JobList)))]
async fn list(
    State(svc): State<Arc<JobsService>>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<ApiJson<JobList>, Problem> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::validation(vec![mortar_core::FieldError::new(
            "limit",
            "must be 1 to 1000",
        )]));
    }
    let jobs = svc
        .list(&p.state, &p.queue, p.cursor.as_deref().unwrap_or(""), limit)
        .await?;
    let next_cursor = (jobs.len() == limit as usize)
        .then(|| jobs.last().map(|j| j.id.clone()))
        .flatten();
    Ok(ApiJson(JobList {
        items: jobs.into_iter().map(|j| view(j, Vec::new())).collect(),
        next_cursor,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_id: String,
    /// New lease length (default: the job's timeout_ms).
    pub extend_ms: Option<u64>,
}

/// Extend the lease of a running job. 409 when the lease is no longer yours.
#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "jobs", request_body = HeartbeatBody,
    responses((status = 200, body = JobView), (status = 409, body = Problem)))]
async fn heartbeat(
    State(svc): State<Arc<JobsService>>,
    ApiPath(id): ApiPath<String>,
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
    #[serde(default)]
    #[schema(value_type = Object)]
    pub result: Option<serde_json::Value>,
}

/// Mark a job done. 409 when the lease ran out (another attempt may be running).
#[utoipa::path(post, path = "/v1/jobs/{id}/complete", tag = "jobs", request_body = CompleteBody,
    responses((status = 200, body = JobView), (status = 409, body = Problem)))]
async fn complete(
    State(svc): State<Arc<JobsService>>,
    ApiPath(id): ApiPath<String>,
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

/// Report a failed attempt: retried with backoff, or dead after max_attempts / when not retryable.
#[utoipa::path(post, path = "/v1/jobs/{id}/fail", tag = "jobs", request_body = FailBody,
    responses((status = 200, body = JobView), (status = 409, body = Problem)))]
async fn fail(
    State(svc): State<Arc<JobsService>>,
    ApiPath(id): ApiPath<String>,
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

/// Run a dead, cancelled or retryable job again now (attempts start over).
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn retry(
    State(svc): State<Arc<JobsService>>,
    ApiPath(id): ApiPath<String>,
) -> Result<ApiJson<JobView>, Problem> {
    Ok(ApiJson(view(svc.retry(&id).await?, Vec::new())))
}
