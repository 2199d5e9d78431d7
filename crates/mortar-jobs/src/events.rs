//! Job state changes on the node's event bus ([`mortar_core::watch`]): what
//! `GET /v1/jobs/events` streams and what other blocks (the console) subscribe to.
//!
//! Every change a node's service makes is published: enqueued (`job.available` /
//! `job.scheduled`), started (`job.running`), completed, failed (`job.retryable` / `job.dead`),
//! an attempt whose lease ran out (timed out, or its worker gone: `job.retryable`,
//! `job.available` or `job.dead`), released, retried, cancelled — and, for a running job, the
//! cancellation asked of its worker (`job.cancel_requested`, the job still running) before it
//! ends `job.cancelled`. Jobs
//! inserted by SQL (`mortar_jobs_enqueue`, [`crate::service::enqueue_in_tx`]) appear when they
//! start. Nothing is built while nobody watches, on any node.

use mortar_core::watch::{Event, Hub};
use serde::{Deserialize, Serialize};

/// One job's new state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvent {
    pub id: String,
    pub queue: String,
    pub kind: String,
    /// The state the job is now in.
    pub state: String,
    /// The attempt it is on (1 for the first), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// When the change happened (Unix milliseconds).
    pub at_ms: u64,
    /// The job runs, and its cancellation was asked for (`job.cancel_requested`): its worker
    /// learns at its next heartbeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
}

impl Event for JobEvent {
    const TOPIC: &'static str = "jobs";

    fn event(&self) -> &'static str {
        if self.cancel_requested {
            return "job.cancel_requested";
        }
        match self.state.as_str() {
            "scheduled" => "job.scheduled",
            "available" => "job.available",
            "running" => "job.running",
            "retryable" => "job.retryable",
            "completed" => "job.completed",
            "dead" => "job.dead",
            "cancelled" => "job.cancelled",
            _ => "job.changed",
        }
    }

    fn subject(&self) -> &str {
        &self.queue
    }
}

/// Publishes one event per job (`(id, queue, kind, state, attempt)`), building nothing when
/// nobody watches.
pub(crate) fn publish<'a>(
    hub: &Hub,
    at_ms: u64,
    jobs: impl IntoIterator<Item = (&'a str, &'a str, &'a str, &'a str, Option<i32>)>,
) {
    if !hub.wants(JobEvent::TOPIC) {
        return;
    }
    for (id, queue, kind, state, attempt) in jobs {
        hub.emit(&JobEvent {
            id: id.to_owned(),
            queue: queue.to_owned(),
            kind: kind.to_owned(),
            state: state.to_owned(),
            attempt,
            at_ms,
            cancel_requested: false,
        });
    }
}

/// Publishes that cancelling a running job was asked for.
pub(crate) fn publish_cancel_requested(hub: &Hub, at_ms: u64, job: &crate::store::Job) {
    if !hub.wants(JobEvent::TOPIC) {
        return;
    }
    hub.emit(&JobEvent {
        id: job.id.clone(),
        queue: job.queue.clone(),
        kind: job.kind.clone(),
        state: job.state.clone(),
        attempt: Some(job.attempt),
        at_ms,
        cancel_requested: true,
    });
}

/// The state an enqueue publishes for a job now in `state`: a job handed to a waiting lease
/// went in running, and is published as started by that lease.
pub(crate) fn enqueued_state(state: &str) -> &str {
    match state {
        "running" => "available",
        s => s,
    }
}

/// `GET /v1/jobs/events`: the filters beside [`mortar_core::stream::WatchParams`].
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventFilter {
    /// Only this queue's jobs.
    pub queue: Option<String>,
}

mortar_core::watch_route! {
    /// Job state changes as they happen, filtered by queue.
    fn watch_jobs, path = "/v1/jobs/events", tag = "jobs", service = crate::JobsService,
    topic = JobEvent::TOPIC, filter = EventFilter, field = queue,
    item = "job changes: SSE events named `job.<state>` (and `job.cancel_requested`) whose `data:` is a JobEvent, or with `wait_ms` the changes that came",
}
