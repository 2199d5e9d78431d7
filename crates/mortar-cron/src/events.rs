//! Cron fires on the node's event bus ([`mortar_core::watch`]): what `GET /v1/cron/events`
//! streams and what other blocks (the console) subscribe to. A fire is published by the node
//! that enqueued its job (each fire once, cluster-wide); nothing is built while nobody
//! watches, on any node.

use mortar_core::watch::{Event, Hub};
use serde::{Deserialize, Serialize};

use crate::store::Run;

/// A schedule fired: its job was enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CronFired {
    pub schedule_id: String,
    /// The fire time (Unix milliseconds).
    pub fire_at_ms: i64,
    /// `scheduled`, `catchup` (a misfire fired late), `manual` (trigger) or `backfill`.
    pub kind: String,
    /// The job it enqueued.
    pub job_id: String,
    /// When the job was enqueued (Unix milliseconds): minus `fire_at_ms`, the fire's lag.
    pub enqueued_at_ms: i64,
}

impl Event for CronFired {
    const TOPIC: &'static str = "cron";

    fn event(&self) -> &'static str {
        "cron.fired"
    }

    fn subject(&self) -> &str {
        &self.schedule_id
    }
}

/// Publishes the enqueued runs.
pub(crate) fn publish(hub: &Hub, runs: &[Run]) {
    if !hub.wants(CronFired::TOPIC) {
        return;
    }
    for r in runs {
        if let (Some(job_id), Some(at)) = (&r.job_id, r.enqueued_at_ms) {
            hub.emit(&CronFired {
                schedule_id: r.schedule_id.clone(),
                fire_at_ms: r.fire_at_ms,
                kind: r.kind.clone(),
                job_id: job_id.clone(),
                enqueued_at_ms: at,
            });
        }
    }
}

/// `GET /v1/cron/events`: the filters beside [`mortar_core::stream::WatchParams`].
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilter {
    /// Only this schedule's fires (its id).
    pub schedule: Option<String>,
}

/// Fires as they happen: SSE (`text/event-stream`; `event: cron.fired`, `id:` the cursor to
/// resume from with `Last-Event-ID`), a long-poll with `wait_ms`, or a WebSocket when the
/// request upgrades. An event named `reset` says fires may have been missed: read
/// `GET /v1/cron/schedules/{id}/runs`.
#[utoipa::path(get, path = "/v1/cron/events", tag = "cron", operation_id = "watch_cron",
    params(mortar_core::stream::WatchParams, EventFilter),
    responses(
        (status = 200, description = "SSE stream of fires (`data:` is a CronFired), or with `wait_ms` the fires that came",
            content(
                (String = "text/event-stream"),
                (mortar_core::stream::Polled = "application/json"),
            )),
        (status = 101, description = "switched to a WebSocket: one JSON `Delivered` per fire"),
        (status = 400, body = mortar_core::Problem, description = "a malformed cursor or `Last-Event-ID`"),
        (status = 422, body = mortar_core::Problem, description = "`wait_ms` or `limit` out of range"),
    ))]
pub(crate) async fn watch(
    axum::extract::State(svc): axum::extract::State<std::sync::Arc<crate::CronService>>,
    headers: axum::http::HeaderMap,
    mortar_core::extract::ApiQuery(p): mortar_core::extract::ApiQuery<
        mortar_core::stream::WatchParams,
    >,
    mortar_core::extract::ApiQuery(f): mortar_core::extract::ApiQuery<EventFilter>,
    upgrade: mortar_core::stream::Upgrade,
) -> Result<axum::response::Response, mortar_core::Problem> {
    let keep =
        move |c: &mortar_core::watch::Change| f.schedule.as_ref().is_none_or(|s| *s == c.subject);
    mortar_core::stream::respond(
        svc.hub(),
        CronFired::TOPIC,
        false,
        &headers,
        &p,
        upgrade,
        keep,
    )
    .await
}
