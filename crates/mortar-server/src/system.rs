//! System routes: health, readiness, metrics, the OpenAPI document, status and profiling.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use mortar_core::Problem;
use mortar_core::clock::rfc3339;
use mortar_core::extract::{ApiJson, ApiQuery, Binary};
use mortar_core::storage::{Backend, BackendHealth};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::Node;

pub fn router(node: Arc<Node>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .routes(routes!(status))
        .routes(routes!(profile))
        .with_state(node)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: &'static str,
}

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = Health)))]
async fn healthz() -> ApiJson<Health> {
    ApiJson(Health { status: "ok" })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready`
    pub status: &'static str,
    pub backends: Vec<BackendHealth>,
}

/// Readiness: every configured backend answers. 503 names the ones that do not.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = Ready), (status = 503, body = Problem)))]
async fn readyz(State(node): State<Arc<Node>>) -> Result<ApiJson<Ready>, Problem> {
    let backends = node.storage.health().await;
    let failing: Vec<String> = backends
        .iter()
        .filter(|b| !b.ok)
        .map(|b| {
            format!(
                "{}: {}",
                b.name,
                b.error.as_deref().unwrap_or("unreachable")
            )
        })
        .collect();
    if failing.is_empty() {
        return Ok(ApiJson(Ready {
            status: "ready",
            backends,
        }));
    }
    let names: Vec<&str> = backends
        .iter()
        .filter(|b| !b.ok)
        .map(|b| b.name.as_str())
        .collect();
    Err(Problem::unavailable(
        &names.join(","),
        format!("not ready: {}", failing.join("; ")),
    )
    .with_extension(
        "backends",
        serde_json::to_value(&backends).unwrap_or_default(),
    ))
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        mortar_core::metrics::render(),
    )
        .into_response()
}

/// This OpenAPI 3.1 document.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, content_type = "application/json", body = Object)))]
async fn openapi(State(node): State<Arc<Node>>) -> Response {
    let body = node.openapi.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub version: &'static str,
    /// `embedded` or `cluster`.
    pub mode: &'static str,
    pub backends: Vec<BackendStatus>,
    pub started_at: String,
    pub uptime_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BackendStatus {
    #[serde(flatten)]
    pub backend: Backend,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The node's mode, backends (and whether each answers), version and uptime.
#[utoipa::path(get, path = "/v1/status", tag = "system", responses((status = 200, body = Status)))]
async fn status(State(node): State<Arc<Node>>) -> ApiJson<Status> {
    let health = node.storage.health().await;
    let backends = node
        .storage
        .backends()
        .iter()
        .map(|b| {
            let h = health.iter().find(|h| h.name == b.name);
            BackendStatus {
                backend: b.clone(),
                ok: h.is_some_and(|h| h.ok),
                error: h.and_then(|h| h.error.clone()),
            }
        })
        .collect();
    ApiJson(Status {
        version: mortar_core::VERSION,
        mode: node.storage.mode.as_str(),
        backends,
        started_at: rfc3339(node.started_at_ms),
        uptime_ms: node.started.elapsed().as_millis() as u64,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProfileParams {
    /// How long to sample, 1 to 300 seconds (default 30).
    #[param(minimum = 1, maximum = 300)]
    pub seconds: Option<u64>,
    /// Samples per second, 1 to 1000 (default 99).
    #[param(minimum = 1, maximum = 1000)]
    pub frequency: Option<i32>,
}

/// A CPU profile in pprof protobuf format (`go tool pprof` reads it). Admin only; one at a time.
#[utoipa::path(get, path = "/debug/pprof/profile", tag = "system", params(ProfileParams),
    responses((status = 200, content_type = "application/octet-stream", body = Binary, description = "the profile"),
        (status = 409, body = Problem, description = "another profile is being taken"),
        (status = 422, body = Problem, description = "`seconds` or `frequency` out of range")))]
async fn profile(ApiQuery(params): ApiQuery<ProfileParams>) -> Result<Response, Problem> {
    let seconds = params.seconds.unwrap_or(30);
    let frequency = params.frequency.unwrap_or(99);
    let mut errors = Vec::new();
    if !(1..=300).contains(&seconds) {
        errors.push(mortar_core::FieldError::new("seconds", "must be 1 to 300"));
    }
    if !(1..=1000).contains(&frequency) {
        errors.push(mortar_core::FieldError::new(
            "frequency",
            "must be 1 to 1000",
        ));
    }
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    let bytes =
        tokio::task::spawn_blocking(move || sample(Duration::from_secs(seconds), frequency))
            .await
            .map_err(|_| Problem::internal())??;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"profile.pb\"",
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Samples this process for `duration` on a blocking thread and encodes the profile.
fn sample(duration: Duration, frequency: i32) -> Result<Vec<u8>, Problem> {
    use pprof::protos::Message;
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(frequency)
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| {
            Problem::new(
                StatusCode::CONFLICT,
                "profiler-busy",
                "profiler busy",
                format!("cannot start the profiler: {e}"),
            )
        })?;
    std::thread::sleep(duration);
    let report = guard.report().build().map_err(|e| {
        tracing::error!(error = %e, "profile report failed");
        Problem::internal()
    })?;
    let profile = report.pprof().map_err(|e| {
        tracing::error!(error = %e, "profile encoding failed");
        Problem::internal()
    })?;
    let mut out = Vec::new();
    profile.encode(&mut out).map_err(|_| Problem::internal())?;
    Ok(out)
}
