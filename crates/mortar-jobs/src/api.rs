//! `/v1/jobs/…`: enqueue (one or a batch; unique keys, `Idempotency-Key`), lease (long-poll),
//! heartbeat, complete (one or a batch), fail, release, inspect, list, retry, cancel, bulk
//! retry/discard (the DLQ), and `/v1/jobs/queues/…` (counts, pause/resume, limits, push target).

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use mortar_core::Problem;
use mortar_core::api::Page;
use mortar_core::clock::rfc3339;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::JobsError;
use crate::service::{Enqueued, JobsService, NewJob, QueueInfo, QueueSettings};
use crate::state::UniqueWhile;
use crate::store::{AttemptError, Completion, Filter, Job};

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
        .routes(routes!(release))
        .routes(routes!(complete_batch))
        .routes(routes!(bulk_retry))
        .routes(routes!(bulk_discard))
        .routes(routes!(queues))
        .routes(routes!(get_queue, put_queue))
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(crate::events::watch_jobs))
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

/// `{id}` in a job's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// The job's id.
    pub id: String,
}

/// `{queue}` in a queue's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct QueuePath {
    /// The queue's name: 1 to 128 of letters, digits, `_`, `.`, `-`, `:`.
    #[param(pattern = r"^[A-Za-z0-9_.:-]{1,128}$")]
    pub queue: String,
}

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
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: String,
    pub created_at: String,
    /// When the current (or last) attempt started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub timeout_ms: i64,
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

fn created(e: Enqueued) -> JobView {
    let mut v = view(e.job, Vec::new());
    v.duplicate = e.duplicate;
    v
}

fn view(j: Job, errors: Vec<AttemptError>) -> JobView {
    let state = j.state();
    JobView {
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

/// What a 409 from heartbeat, complete, fail or release means.
const NOT_HELD: &str = "the job is not leased with that lease_id: its lease ran out (another attempt \
    may be running) or it was never yours";

/// How long an `Idempotency-Key` answers with the job it first created.
pub const IDEMPOTENCY_WINDOW_MS: u64 = 24 * 3_600_000;

/// Applies an `Idempotency-Key` header: the job becomes unique on that key for 24 hours (a
/// batch: on `key:index` per job), so a retried request returns what the first one created.
fn idempotent(headers: &http::HeaderMap, jobs: &mut [NewJob]) -> Result<(), Problem> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(());
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .ok_or_else(|| {
            Problem::bad_request(
                "the Idempotency-Key header must be 1 to 200 visible ASCII characters",
            )
        })?;
    let batch = jobs.len() > 1;
    for (i, j) in jobs.iter_mut().enumerate() {
        if j.unique_key.is_some() || j.unique_while.is_some() {
            return Err(Problem::bad_request(
                "give either the Idempotency-Key header or unique_key/unique_while, not both",
            ));
        }
        j.unique_key = Some(if batch {
            format!("{key}:{i}")
        } else {
            key.to_owned()
        });
        j.unique_while = Some(UniqueWhile::ForMs);
        j.unique_for_ms = Some(IDEMPOTENCY_WINDOW_MS);
    }
    Ok(())
}

/// 201 when something was created, 200 when every job already existed.
fn status_of(jobs: &[Enqueued]) -> StatusCode {
    if jobs.iter().all(|e| e.duplicate) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
}

/// Enqueue a job. Durable before the answer. A job whose `unique_key` (or `Idempotency-Key`
/// header, kept 24 h) matches an existing one returns that job: 200 with `"duplicate": true`.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = NewJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "a retried request with the same key returns the job the first one created (24 h)")),
    responses((status = 201, body = JobView), (status = 200, description = "duplicate: the existing job", body = JobView),
        (status = 400, body = Problem)))]
async fn enqueue(
    State(svc): State<Arc<JobsService>>,
    headers: http::HeaderMap,
    ApiJson(job): ApiJson<NewJob>,
) -> Result<(StatusCode, ApiJson<JobView>), Problem> {
    let mut jobs = [job];
    idempotent(&headers, &mut jobs)?;
    let mut out = svc.enqueue(&jobs).await?;
    let status = status_of(&out);
    Ok((status, ApiJson(created(out.remove(0)))))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1 to 10000 jobs, enqueued atomically (all or none).
    #[schema(min_items = 1, max_items = 10000)]
    pub jobs: Vec<NewJob>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub items: Vec<JobView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Enqueue many jobs in one transaction (all or none). With `Idempotency-Key: K`, job i is
/// unique on `K:i`, so re-sending the batch returns the jobs it created. With
/// `Prefer: return=minimal` the reply lists only each job's id, state and duplicate flag
/// (with `Preference-Applied: return=minimal`).
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "job i is unique on key:i for 24 h"),
        ("Prefer" = Option<String>, Header, description = "`return=minimal`: answer each job's id, state and duplicate flag only")),
    responses(
        (status = 201, body = BatchReply, description = "created (some jobs may have existed)",
            headers(("preference-applied" = String, description = "`return=minimal` when the reply is minimal"))),
        (status = 200, body = BatchReply, description = "every job already existed",
            headers(("preference-applied" = String, description = "`return=minimal` when the reply is minimal"))),
        (status = 400, body = Problem)))]
async fn enqueue_batch(
    State(svc): State<Arc<JobsService>>,
    headers: http::HeaderMap,
    ApiJson(mut b): ApiJson<BatchBody>,
) -> Result<axum::response::Response, Problem> {
    use axum::response::IntoResponse as _;
    idempotent(&headers, &mut b.jobs)?;
    let jobs = svc.enqueue(&b.jobs).await?;
    let status = status_of(&jobs);
    let minimal = prefers_minimal(&headers);
    let reply = if minimal {
        BatchReply::Minimal(JobRefList {
            items: jobs
                .into_iter()
                .map(|e| JobRef {
                    state: e.job.state(),
                    id: e.job.id,
                    duplicate: e.duplicate,
                })
                .collect(),
        })
    } else {
        BatchReply::Jobs(JobList {
            items: jobs.into_iter().map(created).collect(),
            next_cursor: None,
        })
    };
    let mut res = (status, ApiJson(reply)).into_response();
    if minimal {
        res.headers_mut().insert(
            "preference-applied",
            http::HeaderValue::from_static("return=minimal"),
        );
    }
    Ok(res)
}

/// A batch enqueue's answer: every job, or (`Prefer: return=minimal`) each job's id, state and
/// duplicate flag.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchReply {
    Jobs(JobList),
    Minimal(JobRefList),
}

/// `Prefer: return=minimal` (RFC 7240) among the request's preferences.
fn prefers_minimal(headers: &http::HeaderMap) -> bool {
    headers.get_all("prefer").iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("return=minimal"))
        })
    })
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
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(JobPath),
    responses((status = 200, body = JobView), (status = 404, body = Problem)))]
async fn get_job(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
) -> Result<ApiJson<JobView>, Problem> {
    let (j, errors) = svc.get(&id).await?;
    Ok(ApiJson(view(j, errors)))
}

/// Cancel (discard) a job that has not started or is waiting to retry.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(JobPath),
    responses((status = 200, body = JobView), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the job is running or finished")))]
async fn cancel(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
) -> Result<ApiJson<JobView>, Problem> {
    Ok(ApiJson(view(svc.cancel(&id).await?, Vec::new())))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only jobs in this state (`dead` is the DLQ).
    pub state: Option<crate::state::State>,
    /// Only jobs of this queue.
    #[serde(default)]
    pub queue: String,
    /// Only jobs of this kind.
    #[serde(default)]
    pub kind: String,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Jobs by creation order, filtered by state, queue and kind (`state=dead` is the DLQ).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(ListParams),
    responses((status = 200, body = JobList), (status = 422, body = Problem, description = "`limit` out of range")))]
async fn list(
    State(svc): State<Arc<JobsService>>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<ApiJson<JobList>, Problem> {
    let limit = mortar_core::api::page_limit(p.limit, 100, 1000)?;
    let filter = Filter {
        queue: p.queue,
        kind: p.kind,
        state: p.state.map(|s| s.as_str().to_owned()).unwrap_or_default(),
    };
    let jobs = svc
        .list(&filter, p.cursor.as_deref().unwrap_or(""), limit + 1)
        .await?;
    let page = Page::from_overfetch(jobs, limit, |j| j.id.clone()).map(|j| view(j, Vec::new()));
    Ok(ApiJson(JobList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    pub lease_id: String,
    /// New lease length, 1 to 86400000 (default: the job's timeout_ms).
    #[schema(minimum = 1, maximum = 86_400_000)]
    pub extend_ms: Option<u64>,
}

/// Extend the lease of a running job. 409 when the lease is no longer yours.
#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "jobs", params(JobPath), request_body = HeartbeatBody,
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem, description = NOT_HELD)))]
async fn heartbeat(
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

/// Mark a job done. 409 when the lease ran out (another attempt may be running).
#[utoipa::path(post, path = "/v1/jobs/{id}/complete", tag = "jobs", params(JobPath), request_body = CompleteBody,
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem, description = NOT_HELD)))]
async fn complete(
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

/// Report a failed attempt: retried with backoff, or dead after max_attempts / when not retryable.
#[utoipa::path(post, path = "/v1/jobs/{id}/fail", tag = "jobs", params(JobPath), request_body = FailBody,
    responses((status = 200, body = JobView), (status = 404, body = Problem), (status = 409, body = Problem, description = NOT_HELD)))]
async fn fail(
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

/// Run a dead, cancelled or retryable job again now (attempts start over).
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(JobPath),
    responses((status = 200, body = JobView), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the job is not dead, cancelled or retryable")))]
async fn retry(
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

/// Give a leased job back at once, this attempt not counted (a worker shutting down).
#[utoipa::path(post, path = "/v1/jobs/{id}/release", tag = "jobs", operation_id = "release_job", params(JobPath), request_body = ReleaseBody,
    responses((status = 200, body = JobView), (status = 409, body = Problem, description = NOT_HELD)))]
async fn release(
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
async fn complete_batch(
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

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterBody {
    /// Only jobs of this queue.
    #[serde(default)]
    pub queue: String,
    /// Only jobs of this kind.
    #[serde(default)]
    pub kind: String,
    /// Default: dead (the DLQ).
    #[serde(default)]
    pub state: Option<crate::state::State>,
}

impl FilterBody {
    fn filter(self) -> Filter {
        Filter {
            queue: self.queue,
            kind: self.kind,
            state: self
                .state
                .unwrap_or(crate::state::State::Dead)
                .as_str()
                .to_owned(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Count {
    pub count: u64,
}

/// Retry every job matching the filter (dead by default; also cancelled or retryable).
#[utoipa::path(post, path = "/v1/jobs/bulk/retry", tag = "jobs", request_body = FilterBody,
    responses((status = 200, body = Count), (status = 400, body = Problem)))]
async fn bulk_retry(
    State(svc): State<Arc<JobsService>>,
    ApiJson(b): ApiJson<FilterBody>,
) -> Result<ApiJson<Count>, Problem> {
    let n = svc.retry_where(&b.filter()).await?;
    Ok(ApiJson(Count { count: n as u64 }))
}

/// Delete every finished job matching the filter (dead by default; also cancelled or
/// completed), with its errors.
#[utoipa::path(post, path = "/v1/jobs/bulk/discard", tag = "jobs", request_body = FilterBody,
    responses((status = 200, body = Count), (status = 400, body = Problem)))]
async fn bulk_discard(
    State(svc): State<Arc<JobsService>>,
    ApiJson(b): ApiJson<FilterBody>,
) -> Result<ApiJson<Count>, Problem> {
    Ok(ApiJson(Count {
        count: svc.discard_where(&b.filter()).await?,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    pub queue: String,
    pub paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<crate::service::QueueRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
    pub has_secret: bool,
    /// Effective retention of completed and cancelled jobs.
    pub retention_ms: u64,
    /// Jobs by state.
    #[schema(value_type = Object)]
    pub depth: serde_json::Map<String, serde_json::Value>,
    /// How long the oldest due job has waited (none due: absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_available_age_ms: Option<u64>,
    pub completed_last_minute: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub items: Vec<QueueView>,
}

fn queue_view(svc: &JobsService, q: QueueInfo) -> QueueView {
    let now = svc.now_ms();
    QueueView {
        paused: q.settings.paused,
        concurrency: q.settings.concurrency,
        rate: q.settings.rate,
        target_url: q.settings.target_url,
        has_secret: q.has_secret,
        retention_ms: q.settings.retention_ms.unwrap_or(svc.config().retention_ms),
        depth: crate::state::State::ALL
            .into_iter()
            .map(|s| {
                let n = q
                    .counts
                    .by_state
                    .iter()
                    .find(|(st, _)| st == s.as_str())
                    .map_or(0, |(_, n)| *n);
                (s.as_str().to_owned(), n.into())
            })
            .collect(),
        oldest_available_age_ms: q.counts.oldest_due_ms.map(|t| now.saturating_sub(t as u64)),
        completed_last_minute: q.counts.completed_last_minute,
        queue: q.queue,
    }
}

/// Every queue with settings or jobs: depth by state, oldest due job's age, throughput.
#[utoipa::path(get, path = "/v1/jobs/queues", tag = "jobs", responses((status = 200, body = QueueList)))]
async fn queues(State(svc): State<Arc<JobsService>>) -> Result<ApiJson<QueueList>, Problem> {
    let items = svc.queues().await?;
    Ok(ApiJson(QueueList {
        items: items.into_iter().map(|q| queue_view(&svc, q)).collect(),
    }))
}

/// One queue (a queue never used shows its defaults).
#[utoipa::path(get, path = "/v1/jobs/queues/{queue}", tag = "jobs", params(QueuePath),
    responses((status = 200, body = QueueView)))]
async fn get_queue(
    State(svc): State<Arc<JobsService>>,
    ApiPath(QueuePath { queue }): ApiPath<QueuePath>,
) -> Result<ApiJson<QueueView>, Problem> {
    let q = svc.queue(&queue).await?;
    Ok(ApiJson(queue_view(&svc, q)))
}

/// Set a queue's settings (all of them: omitted ones go back to their defaults): pause,
/// global concurrency and rate limits, push target, retention.
#[utoipa::path(put, path = "/v1/jobs/queues/{queue}", tag = "jobs", params(QueuePath), request_body = QueueSettings,
    responses((status = 200, body = QueueView)))]
async fn put_queue(
    State(svc): State<Arc<JobsService>>,
    ApiPath(QueuePath { queue }): ApiPath<QueuePath>,
    ApiJson(s): ApiJson<QueueSettings>,
) -> Result<ApiJson<QueueView>, Problem> {
    let q = svc.put_queue(&queue, &s).await?;
    Ok(ApiJson(queue_view(&svc, q)))
}

/// Stop leasing (and pushing) this queue's jobs; enqueues are still accepted.
#[utoipa::path(post, path = "/v1/jobs/queues/{queue}/pause", tag = "jobs", params(QueuePath),
    responses((status = 200, body = QueueView)))]
async fn pause_queue(
    State(svc): State<Arc<JobsService>>,
    ApiPath(QueuePath { queue }): ApiPath<QueuePath>,
) -> Result<ApiJson<QueueView>, Problem> {
    let q = svc.set_paused(&queue, true).await?;
    Ok(ApiJson(queue_view(&svc, q)))
}

/// Lease this queue's jobs again.
#[utoipa::path(post, path = "/v1/jobs/queues/{queue}/resume", tag = "jobs", params(QueuePath),
    responses((status = 200, body = QueueView)))]
async fn resume_queue(
    State(svc): State<Arc<JobsService>>,
    ApiPath(QueuePath { queue }): ApiPath<QueuePath>,
) -> Result<ApiJson<QueueView>, Problem> {
    let q = svc.set_paused(&queue, false).await?;
    Ok(ApiJson(queue_view(&svc, q)))
}
