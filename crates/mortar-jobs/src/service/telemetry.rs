//! The service's metrics: their names, their descriptions, and the per-(queue, kind) grouping
//! that looks each one up once per batch.

pub const ENQUEUED: &str = "mortar_jobs_enqueued_total";
pub const STARTED: &str = "mortar_jobs_started_total";
pub const COMPLETED: &str = "mortar_jobs_completed_total";
pub const FAILED: &str = "mortar_jobs_failed_total";
pub const DEAD: &str = "mortar_jobs_dead_total";
pub const TIMED_OUT: &str = "mortar_jobs_timed_out_total";
pub const WAIT: &str = "mortar_jobs_wait_seconds";
pub const RUN: &str = "mortar_jobs_run_seconds";
pub const DEPTH: &str = "mortar_jobs_depth";

pub(super) fn describe_metrics() {
    metrics::describe_counter!(ENQUEUED, "jobs enqueued, by queue and kind");
    metrics::describe_counter!(
        STARTED,
        "jobs leased to a worker (each attempt), by queue and kind"
    );
    metrics::describe_counter!(COMPLETED, "jobs completed, by queue and kind");
    metrics::describe_counter!(FAILED, "failed attempts, by queue and kind");
    metrics::describe_counter!(
        TIMED_OUT,
        "attempts that ran past their timeout_ms (also counted as failed), by queue and kind"
    );
    metrics::describe_counter!(
        DEAD,
        "jobs that failed for good (the dead-letter queue), by queue and kind"
    );
    metrics::describe_histogram!(
        WAIT,
        metrics::Unit::Seconds,
        "from due (enqueue or run_at) to start, by queue and kind"
    );
    metrics::describe_histogram!(
        RUN,
        metrics::Unit::Seconds,
        "from start to completion, by queue and kind"
    );
    metrics::describe_gauge!(
        DEPTH,
        "jobs by queue and state (refreshed every jobs.prune_every_ms)"
    );
}

/// Calls `f` once per run of consecutive items with the same (queue, kind): metrics are
/// looked up once per run (a batch is usually one run), not once per job.
pub(super) fn per_kind<T>(
    items: &[T],
    key: impl Fn(&T) -> (&String, &String),
    mut f: impl FnMut(&str, &str, &[T]),
) {
    let mut start = 0;
    for i in 1..=items.len() {
        if i == items.len() || key(&items[i]) != key(&items[start]) {
            let (q, k) = key(&items[start]);
            f(q, k, &items[start..i]);
            start = i;
        }
    }
}
