//! The Prometheus recorder behind `/metrics`, plus the HTTP and process metrics.
//!
//! Metric names follow `mortar_<block>_<what>_<unit>`; every metric is described (HELP) so the
//! output passes `promtool check metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets in seconds: 50 µs … 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

pub const HTTP_REQUESTS: &str = "mortar_http_requests_total";
pub const HTTP_DURATION: &str = "mortar_http_request_duration_seconds";
pub const HTTP_CONNECTIONS: &str = "mortar_http_connections";
pub const HTTP_IN_FLIGHT: &str = "mortar_http_requests_in_flight";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

/// Installs the global recorder once (later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests in one process): then ours
            // still renders what is recorded through it.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            let collector = metrics_process::Collector::default();
            collector.describe();
            let _ = PROCESS.set(collector);
            handle
        })
        .clone()
}

/// Renders the Prometheus text exposition, refreshing process metrics first.
pub fn render() -> String {
    let handle = install();
    if let Some(c) = PROCESS.get() {
        c.collect();
    }
    handle.render()
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests served, by route template, method and status"
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "HTTP request latency from first byte in to response head out"
    );
    metrics::describe_gauge!(HTTP_CONNECTIONS, "open HTTP connections");
    metrics::describe_gauge!(HTTP_IN_FLIGHT, "HTTP requests being served right now");
}
