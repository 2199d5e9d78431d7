//! The Prometheus recorder behind `/metrics`, plus the HTTP and process metrics.
//!
//! Metric names follow `mortar_<block>_<what>_<unit>`; every metric is described (HELP) so the
//! output passes `promtool check metrics`.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, OnceLock, RwLock};
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
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Counter,
    duration: Histogram,
}

impl HttpMetrics {
    pub fn record(&self, elapsed: Duration) {
        self.requests.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

type HandleKey = (Arc<str>, http::Method, u16);

/// Handles by label set, so the hot path hashes three small values instead of building and
/// registering a metrics key (and its label strings) on every request.
type HandleMap = RwLock<HashMap<u64, Vec<(HandleKey, HttpMetrics)>>>;
static HTTP_HANDLES: OnceLock<(RandomState, HandleMap)> = OnceLock::new();

/// The metrics handles for a request's labels.
pub fn http_request(
    route: &Arc<str>,
    method: &http::Method,
    status: http::StatusCode,
) -> HttpMetrics {
    let (hasher, map) = HTTP_HANDLES.get_or_init(Default::default);
    let h = hasher.hash_one((&**route, method.as_str(), status.as_u16()));
    let matches = |k: &HandleKey| *k.0 == **route && k.1 == *method && k.2 == status.as_u16();
    if let Some(m) = map
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&h)
        .and_then(|v| v.iter().find(|(k, _)| matches(k)))
    {
        return m.1.clone();
    }
    let labels = [
        ("route", route.to_string()),
        ("method", method.as_str().to_owned()),
        ("status", status.as_str().to_owned()),
    ];
    let m = HttpMetrics {
        requests: metrics::counter!(HTTP_REQUESTS, &labels),
        duration: metrics::histogram!(HTTP_DURATION, &labels),
    };
    let mut w = map
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let bucket = w.entry(h).or_default();
    if !bucket.iter().any(|(k, _)| matches(k)) {
        bucket.push(((route.clone(), method.clone(), status.as_u16()), m.clone()));
    }
    m
}
