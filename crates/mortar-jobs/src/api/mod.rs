//! `/v1/jobs/…`: enqueue (one or a batch; unique keys, `Idempotency-Key`), lease (long-poll),
//! heartbeat, complete (one or a batch), fail, release, inspect, list, retry, cancel, bulk
//! retry/discard (the DLQ), and `/v1/jobs/queues/…` (counts, pause/resume, limits, push target).

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use mortar_core::Problem;
use mortar_core::api::Page;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod attempt;
mod queues;
mod view;

use self::view::{created, view};
use crate::error::JobsError;
use crate::service::{Enqueued, JobsService, NewJob};
use crate::state::UniqueWhile;
use crate::store::Filter;

pub use self::attempt::{
    CompleteBatchAnswer, CompleteBatchBody, CompleteBody, CompleteItem, FailBody, HeartbeatBody,
    LeaseBody, Rejected, ReleaseBody,
};
pub use self::queues::{Count, FilterBody, QueueList, QueueView};
pub use self::view::{ErrorView, JobList, JobRef, JobRefList, JobView, Name};

pub fn router(svc: Arc<JobsService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(enqueue, list))
        .routes(routes!(enqueue_batch))
        .routes(routes!(attempt::lease))
        .routes(routes!(get_job, cancel))
        .routes(routes!(cancel_post))
        .routes(routes!(attempt::heartbeat))
        .routes(routes!(attempt::complete))
        .routes(routes!(attempt::fail))
        .routes(routes!(attempt::retry))
        .routes(routes!(attempt::release))
        .routes(routes!(attempt::complete_batch))
        .routes(routes!(queues::bulk_retry))
        .routes(routes!(queues::bulk_discard))
        .routes(routes!(queues::queues))
        .routes(routes!(queues::get_queue, queues::put_queue))
        .routes(routes!(queues::pause_queue))
        .routes(routes!(queues::resume_queue))
        .routes(routes!(crate::events::watch_jobs))
        .with_state(svc)
}

impl From<JobsError> for Problem {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::Invalid(errors) => Problem::invalid_body(errors),
            JobsError::NotFound(id) => Problem::not_found(format!("no job `{id}`")),
            JobsError::Conflict(why) => Problem::conflict(why),
            JobsError::TimedOut(why) => {
                Problem::new(StatusCode::GONE, "timed-out", "attempt timed out", why)
            }
            JobsError::Cancelled(why) => {
                Problem::new(StatusCode::GONE, "cancelled", "job cancelled", why)
            }
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

/// What a 409 from heartbeat, complete, fail or release means.
const NOT_HELD: &str = "the job is not leased with that lease_id: its lease ran out (another attempt \
    may be running) or it was never yours";

/// What a 410 from heartbeat, complete, fail or release means.
const GONE: &str = "this attempt is over: problem type `timed-out` (it ran past its timeout_ms, \
    counted from when it was leased, and failed as timed out) or `cancelled` (the job was cancelled \
    while it ran); stop working on it";

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

/// Cancel a job. One that has not started or waits to retry is cancelled at once (200). One
/// that runs is asked to stop (202, the job still `running` with `cancel_requested: true`):
/// its worker learns at its next heartbeat (a 410 `cancelled`) and the attempt ends
/// `cancelled`, not retried — unless the worker's completion comes first (then it is
/// `completed`). Same as `POST /v1/jobs/{id}/cancel`.
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(JobPath),
    responses((status = 200, body = JobView, description = "cancelled"),
        (status = 202, body = JobView, description = "running: its worker is asked to stop at its next heartbeat"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the job is finished (completed, dead or cancelled)")))]
async fn cancel(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
) -> Result<(StatusCode, ApiJson<JobView>), Problem> {
    cancelled(&svc, &id).await
}

/// Cancel a job: the same as `DELETE /v1/jobs/{id}` — at once (200) when it has not started or
/// waits to retry; when it runs, its worker is asked to stop at its next heartbeat (202).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", operation_id = "cancel_job_post", params(JobPath),
    responses((status = 200, body = JobView, description = "cancelled"),
        (status = 202, body = JobView, description = "running: its worker is asked to stop at its next heartbeat"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the job is finished (completed, dead or cancelled)")))]
async fn cancel_post(
    State(svc): State<Arc<JobsService>>,
    ApiPath(JobPath { id }): ApiPath<JobPath>,
) -> Result<(StatusCode, ApiJson<JobView>), Problem> {
    cancelled(&svc, &id).await
}

async fn cancelled(svc: &JobsService, id: &str) -> Result<(StatusCode, ApiJson<JobView>), Problem> {
    let job = svc.cancel(id).await?;
    let status = if job.state() == crate::state::State::Running {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, ApiJson(view(job, Vec::new()))))
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
