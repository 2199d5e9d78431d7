//! Bulk retry and discard by filter (the DLQ), and `/v1/jobs/queues/…`: counts, settings,
//! pause and resume.

use std::sync::Arc;

use axum::extract::State;
use mortar_core::Problem;
use mortar_core::extract::{ApiJson, ApiPath};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::QueuePath;
use crate::service::{JobsService, QueueInfo, QueueSettings};
use crate::store::Filter;

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
pub(super) async fn bulk_retry(
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
pub(super) async fn bulk_discard(
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
pub(super) async fn queues(
    State(svc): State<Arc<JobsService>>,
) -> Result<ApiJson<QueueList>, Problem> {
    let items = svc.queues().await?;
    Ok(ApiJson(QueueList {
        items: items.into_iter().map(|q| queue_view(&svc, q)).collect(),
    }))
}

/// One queue (a queue never used shows its defaults).
#[utoipa::path(get, path = "/v1/jobs/queues/{queue}", tag = "jobs", params(QueuePath),
    responses((status = 200, body = QueueView)))]
pub(super) async fn get_queue(
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
pub(super) async fn put_queue(
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
pub(super) async fn pause_queue(
    State(svc): State<Arc<JobsService>>,
    ApiPath(QueuePath { queue }): ApiPath<QueuePath>,
) -> Result<ApiJson<QueueView>, Problem> {
    let q = svc.set_paused(&queue, true).await?;
    Ok(ApiJson(queue_view(&svc, q)))
}

/// Lease this queue's jobs again.
#[utoipa::path(post, path = "/v1/jobs/queues/{queue}/resume", tag = "jobs", params(QueuePath),
    responses((status = 200, body = QueueView)))]
pub(super) async fn resume_queue(
    State(svc): State<Arc<JobsService>>,
    ApiPath(QueuePath { queue }): ApiPath<QueuePath>,
) -> Result<ApiJson<QueueView>, Problem> {
    let q = svc.set_paused(&queue, false).await?;
    Ok(ApiJson(queue_view(&svc, q)))
}
