//! `/v1/cron/…`: schedules (create, list, show, replace, delete, pause, resume, trigger,
//! backfill), run history, and previews of an expression's fire times.

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use mortar_core::api::Page;
use mortar_core::clock::rfc3339;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery};
use mortar_core::{FieldError, Problem};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::CronError;
use crate::service::{CronService, RunInfo, ScheduleSpec};
use crate::store::{Run, Schedule};

pub fn router(svc: Arc<CronService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_schedule, replace, delete))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(trigger))
        .routes(routes!(backfill))
        .routes(routes!(runs))
        .routes(routes!(preview))
        .routes(routes!(crate::events::watch_cron))
        .with_state(svc)
}

impl From<CronError> for Problem {
    fn from(e: CronError) -> Self {
        match e {
            CronError::Invalid(errors) => Problem::invalid_body(errors),
            CronError::Rejected(errors) => Problem::validation(errors),
            CronError::NotFound(id) => Problem::not_found(format!("no schedule `{id}`")),
            CronError::Conflict(why) => Problem::conflict(why),
            CronError::Unavailable(what) => {
                Problem::unavailable(&what, format!("{what} did not answer; retry shortly"))
            }
        }
    }
}

/// `{id}` in a schedule's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SchedulePath {
    /// The schedule's id or name.
    pub id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    pub id: String,
    pub name: String,
    pub expr: String,
    pub timezone: String,
    #[schema(value_type = Object)]
    pub job: serde_json::Value,
    pub overlap: String,
    pub misfire: String,
    pub catchup_window_ms: i64,
    pub jitter_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_at: Option<String>,
    pub enabled: bool,
    /// The next fire time (absent while paused or once the schedule has ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_fire_at: Option<String>,
    /// The latest fire time claimed by the scheduler (scheduled and catch-up fires: the time
    /// the next fire is counted from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fire_at: Option<String>,
    /// The latest run of any kind, manual and backfill included (on reads; absent before the
    /// first run and in the answers of writes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    pub created_at: String,
    pub updated_at: String,
}

fn time(ms: Option<i64>) -> Option<String> {
    ms.map(|t| rfc3339(t as u64))
}

/// A schedule's latest run.
#[derive(Debug, Serialize, ToSchema)]
pub struct LastRun {
    /// The fire time it ran for.
    pub fire_at: String,
    /// `scheduled`, `catchup`, `manual` or `backfill`.
    pub kind: String,
    /// `claimed`, `enqueued`, `skipped` or `buffered`.
    pub status: String,
    pub claimed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// `s` with its latest run, found among `runs` (those of several schedules).
fn view_with(s: Schedule, runs: &[Run]) -> ScheduleView {
    let last = runs
        .iter()
        .filter(|r| r.schedule_id == s.id)
        .max_by_key(|r| (r.claimed_at_ms, r.fire_at_ms))
        .map(|r| LastRun {
            fire_at: rfc3339(r.fire_at_ms as u64),
            kind: r.kind.clone(),
            status: r.status.clone(),
            claimed_at: rfc3339(r.claimed_at_ms as u64),
            job_id: r.job_id.clone(),
        });
    ScheduleView {
        last_run: last,
        ..view(s)
    }
}

fn view(s: Schedule) -> ScheduleView {
    ScheduleView {
        last_run: None,
        job: serde_json::from_str(&s.job).unwrap_or(serde_json::Value::Null),
        start_at: time(s.start_at_ms),
        end_at: time(s.end_at_ms),
        next_fire_at: CronService::next_fire(&s).map(rfc3339),
        last_fire_at: time(s.last_fire_at_ms),
        created_at: rfc3339(s.created_at_ms as u64),
        updated_at: rfc3339(s.updated_at_ms as u64),
        id: s.id,
        name: s.name,
        expr: s.expr,
        timezone: s.timezone,
        overlap: s.overlap,
        misfire: s.misfire,
        catchup_window_ms: s.catchup_window_ms,
        jitter_ms: s.jitter_ms,
        enabled: s.enabled,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub fire_at: String,
    /// `scheduled`, `catchup` (a missed fire fired late), `manual` (trigger) or `backfill`.
    pub kind: String,
    /// `claimed` (enqueue pending), `enqueued`, `skipped` (overlap), `buffered` (waiting for the
    /// previous job) or `failed` (the jobs block rejected the job).
    pub status: String,
    pub claimed_at: String,
    /// The node that claimed the fire.
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<String>,
    /// From fire time to enqueue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<i64>,
    /// The job's state in mortar-jobs (`available`, `running`, `completed`, `dead`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// From the job's start to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
}

fn run_view(r: RunInfo) -> RunView {
    let run = r.run;
    RunView {
        fire_at: rfc3339(run.fire_at_ms as u64),
        claimed_at: rfc3339(run.claimed_at_ms as u64),
        enqueued_at: time(run.enqueued_at_ms),
        lag_ms: run.enqueued_at_ms.map(|e| (e - run.fire_at_ms).max(0)),
        started_at: time(r.started_at_ms),
        finished_at: time(r.finished_at_ms),
        duration_ms: r
            .started_at_ms
            .zip(r.finished_at_ms)
            .map(|(s, f)| (f - s).max(0)),
        job_state: r.job_state,
        kind: run.kind,
        status: run.status,
        node: run.node,
        job_id: run.job_id,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub items: Vec<ScheduleView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub items: Vec<RunView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Create a schedule. Fires are claimed once in the database by whichever node sees them
/// first, and each enqueues a job with the unique key `cron:{schedule_id}:{fire_at_ms}`.
#[utoipa::path(post, path = "/v1/cron/schedules", tag = "cron", request_body = ScheduleSpec,
    responses((status = 201, body = ScheduleView), (status = 400, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create(
    State(svc): State<Arc<CronService>>,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> Result<(StatusCode, ApiJson<ScheduleView>), Problem> {
    Ok((StatusCode::CREATED, ApiJson(view(svc.create(&spec).await?))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn limit(l: Option<u32>) -> Result<u32, Problem> {
    mortar_core::api::page_limit(l, 100, 1000)
}

/// Schedules by name, each with its next and last fire time.
#[utoipa::path(get, path = "/v1/cron/schedules", tag = "cron", params(ListParams),
    responses((status = 200, body = ScheduleList), (status = 422, body = Problem, description = "`limit` out of range")))]
async fn list(
    State(svc): State<Arc<CronService>>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<ApiJson<ScheduleList>, Problem> {
    let limit = limit(p.limit)?;
    let items = svc
        .list(p.cursor.as_deref().unwrap_or(""), limit + 1)
        .await?;
    let page = Page::from_overfetch(items, limit, |s| s.name.clone());
    let runs = svc.last_runs(&page.items).await?;
    let page = page.map(|s| view_with(s, &runs));
    Ok(ApiJson(ScheduleList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// A schedule, by id or name.
#[utoipa::path(get, path = "/v1/cron/schedules/{id}", tag = "cron", params(SchedulePath),
    responses((status = 200, body = ScheduleView), (status = 404, body = Problem)))]
async fn get_schedule(
    State(svc): State<Arc<CronService>>,
    ApiPath(SchedulePath { id }): ApiPath<SchedulePath>,
) -> Result<ApiJson<ScheduleView>, Problem> {
    let s = svc.get(&id).await?;
    let runs = svc.last_runs(std::slice::from_ref(&s)).await?;
    Ok(ApiJson(view_with(s, &runs)))
}

/// Replace a schedule's definition (same name). Takes effect from the next fire; fire times
/// already claimed are not fired again.
#[utoipa::path(put, path = "/v1/cron/schedules/{id}", tag = "cron", params(SchedulePath), request_body = ScheduleSpec,
    responses((status = 200, body = ScheduleView), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn replace(
    State(svc): State<Arc<CronService>>,
    ApiPath(SchedulePath { id }): ApiPath<SchedulePath>,
    ApiJson(spec): ApiJson<ScheduleSpec>,
) -> Result<ApiJson<ScheduleView>, Problem> {
    Ok(ApiJson(view(svc.replace(&id, &spec).await?)))
}

/// Delete a schedule and its run history (jobs already enqueued stay).
#[utoipa::path(delete, path = "/v1/cron/schedules/{id}", tag = "cron", params(SchedulePath),
    responses((status = 200, body = ScheduleView), (status = 404, body = Problem)))]
async fn delete(
    State(svc): State<Arc<CronService>>,
    ApiPath(SchedulePath { id }): ApiPath<SchedulePath>,
) -> Result<ApiJson<ScheduleView>, Problem> {
    Ok(ApiJson(view(svc.delete(&id).await?)))
}

/// Pause a schedule: no fires until resumed.
#[utoipa::path(post, path = "/v1/cron/schedules/{id}/pause", tag = "cron", params(SchedulePath),
    responses((status = 200, body = ScheduleView), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the schedule kept changing meanwhile; try again")))]
async fn pause(
    State(svc): State<Arc<CronService>>,
    ApiPath(SchedulePath { id }): ApiPath<SchedulePath>,
) -> Result<ApiJson<ScheduleView>, Problem> {
    Ok(ApiJson(view(svc.set_enabled(&id, false).await?)))
}

/// Resume a paused schedule from its next fire time after now (paused stretches are not caught
/// up; backfill them if wanted).
#[utoipa::path(post, path = "/v1/cron/schedules/{id}/resume", tag = "cron", params(SchedulePath),
    responses((status = 200, body = ScheduleView), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the schedule kept changing meanwhile, or no longer parses")))]
async fn resume(
    State(svc): State<Arc<CronService>>,
    ApiPath(SchedulePath { id }): ApiPath<SchedulePath>,
) -> Result<ApiJson<ScheduleView>, Problem> {
    Ok(ApiJson(view(svc.set_enabled(&id, true).await?)))
}

/// Fire now (a `manual` run), whatever the timing, pause state or overlap policy.
#[utoipa::path(post, path = "/v1/cron/schedules/{id}/trigger", tag = "cron", params(SchedulePath),
    responses((status = 201, body = RunView, description = "fired"), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "too many fires at once, or the job's unique key is held"),
        (status = 422, body = Problem, description = "the jobs block rejected the schedule's job")))]
async fn trigger(
    State(svc): State<Arc<CronService>>,
    ApiPath(SchedulePath { id }): ApiPath<SchedulePath>,
) -> Result<(StatusCode, ApiJson<RunView>), Problem> {
    let run = svc.trigger(&id).await?;
    Ok((
        StatusCode::CREATED,
        ApiJson(run_view(RunInfo {
            run,
            job_state: None,
            started_at_ms: None,
            finished_at_ms: None,
        })),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillBody {
    /// Exclusive start (RFC 3339).
    pub from: String,
    /// Inclusive end (RFC 3339), not in the future.
    pub to: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillView {
    /// Fire times fired now.
    pub fired: usize,
    /// Fire times in the range that had already been claimed (not fired again).
    pub already_claimed: usize,
    pub runs: Vec<RunView>,
}

/// Fire every fire time in `(from, to]` that was never claimed (`backfill` runs).
#[utoipa::path(post, path = "/v1/cron/schedules/{id}/backfill", tag = "cron", params(SchedulePath), request_body = BackfillBody,
    responses((status = 200, body = BackfillView), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn backfill(
    State(svc): State<Arc<CronService>>,
    ApiPath(SchedulePath { id }): ApiPath<SchedulePath>,
    ApiJson(b): ApiJson<BackfillBody>,
) -> Result<ApiJson<BackfillView>, Problem> {
    let done = svc.backfill(&id, &b.from, &b.to).await?;
    Ok(ApiJson(BackfillView {
        fired: done.runs.len(),
        already_claimed: done.already,
        runs: done
            .runs
            .into_iter()
            .map(|run| {
                run_view(RunInfo {
                    run,
                    job_state: None,
                    started_at_ms: None,
                    finished_at_ms: None,
                })
            })
            .collect(),
    }))
}

/// A schedule's runs, newest first: fire time, claim, node, job, and the job's outcome and
/// duration from mortar-jobs. Kept for `cron.history_retention_ms`.
#[utoipa::path(get, path = "/v1/cron/schedules/{id}/runs", tag = "cron", params(SchedulePath, RunsParams),
    responses((status = 200, body = RunList), (status = 404, body = Problem),
        (status = 422, body = Problem, description = "`limit` out of range or `cursor` not a `next_cursor`")))]
async fn runs(
    State(svc): State<Arc<CronService>>,
    ApiPath(SchedulePath { id }): ApiPath<SchedulePath>,
    ApiQuery(p): ApiQuery<RunsParams>,
) -> Result<ApiJson<RunList>, Problem> {
    let limit = limit(p.limit)?;
    let before = match p.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            Problem::validation(vec![FieldError::new(
                "cursor",
                "a next_cursor from a previous page",
            )])
        })?),
    };
    let items = svc.runs(&id, before, limit + 1).await?;
    let page = Page::from_overfetch(items, limit, |r| r.run.fire_at_ms.to_string()).map(run_view);
    Ok(ApiJson(RunList {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PreviewParams {
    /// The cron expression.
    pub expr: String,
    /// IANA time zone (default UTC).
    pub timezone: Option<String>,
    /// How many fire times (1 to 1000, default 10).
    #[param(minimum = 1, maximum = 1000)]
    pub count: Option<u32>,
    /// Fire times after this instant (RFC 3339; default now).
    pub from: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RunsParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page (a fire time in Unix milliseconds).
    #[param(pattern = "^(-?[0-9]{1,18})?$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    /// RFC 3339 UTC.
    pub fire_times: Vec<String>,
}

/// The next fire times of an expression in a time zone, under the DST policy. An invalid
/// expression is a 400 naming the cron field and column.
#[utoipa::path(get, path = "/v1/cron/preview", tag = "cron", params(PreviewParams),
    responses((status = 200, body = Preview),
        (status = 400, body = Problem, description = "an invalid expression (naming the cron field and column), time zone, `from` or `count`")))]
async fn preview(
    State(svc): State<Arc<CronService>>,
    ApiQuery(p): ApiQuery<PreviewParams>,
) -> Result<ApiJson<Preview>, Problem> {
    let times = svc.preview(
        &p.expr,
        p.timezone.as_deref().unwrap_or("UTC"),
        p.from.as_deref(),
        p.count.unwrap_or(10),
    )?;
    Ok(ApiJson(Preview {
        fire_times: times.into_iter().map(rfc3339).collect(),
    }))
}
