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

mortar_core::watch_route! {
    /// Cron fires as they happen (each published once, by the node that enqueued its job), filtered by schedule id.
    fn watch_cron, path = "/v1/cron/events", tag = "cron", service = crate::CronService,
    topic = CronFired::TOPIC, filter = EventFilter, field = schedule,
    item = "fires: SSE events named `cron.fired` whose `data:` is a CronFired, or with `wait_ms` the fires that came",
}
