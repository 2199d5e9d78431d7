//! The Prometheus recorder behind `/metrics`, plus the HTTP and process metrics.
//!
//! Metric names follow `mortar_<block>_<what>_<unit>`; every metric is described (HELP) so the
//! output passes `promtool check metrics`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

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

/// The in-flight requests gauge (handle cached: no registry lookup per request).
pub fn in_flight() -> &'static Gauge {
    static GAUGE: OnceLock<Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| metrics::gauge!(HTTP_IN_FLIGHT))
}

/// The request counter and latency histogram of one (route template, method, status).
struct HttpMetrics {
    requests: Counter,
    duration: Histogram,
}

type HandleKey = (Box<str>, http::Method, u16);

thread_local! {
    /// Handles by label set, per thread: the hot path hashes three small values and touches
    /// no lock and no shared reference count (the HTTP event loops are one per CPU).
    static HTTP_HANDLES: std::cell::RefCell<HashMap<u64, Vec<(HandleKey, HttpMetrics)>>> =
        std::cell::RefCell::default();
}

/// Counts a served request and records its latency under its route template, method and status.
pub fn record_http(
    route: &str,
    method: &http::Method,
    status: http::StatusCode,
    elapsed: Duration,
) {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    let h =
        HASHER
            .get_or_init(RandomState::new)
            .hash_one((route, method.as_str(), status.as_u16()));
    let matches = |k: &HandleKey| &*k.0 == route && k.1 == *method && k.2 == status.as_u16();
    HTTP_HANDLES.with_borrow_mut(|map| {
        let bucket = map.entry(h).or_default();
        let m = match bucket.iter().position(|(k, _)| matches(k)) {
            Some(i) => &bucket[i].1,
            None => {
                let labels = [
                    ("route", route.to_owned()),
                    ("method", method.as_str().to_owned()),
                    ("status", status.as_str().to_owned()),
                ];
                let m = HttpMetrics {
                    requests: metrics::counter!(HTTP_REQUESTS, &labels),
                    duration: metrics::histogram!(HTTP_DURATION, &labels),
                };
                bucket.push(((route.into(), method.clone(), status.as_u16()), m));
                &bucket.last().expect("just pushed").1
            }
        };
        m.requests.increment(1);
        m.duration.record(elapsed.as_secs_f64());
    });
}
