//! Calls through a breaker from services in any language: `POST …/{name}/acquire` for a permit
//! (or a 503 with `Retry-After` while the breaker does not admit calls), then
//! `POST …/{name}/record` with the permit and the call's outcome.

use axum::extract::State as AxumState;
use http::StatusCode;
use mortar_core::Problem;
use mortar_core::extract::{ApiJson, ApiPath};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{BreakerPath, BreakerState, Svc};
use crate::breaker::State;
use crate::service::Outcome;

/// A call may proceed: make it, then record its outcome with `permit`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AcquireResponse {
    /// Opaque; hand it to `/record` exactly once.
    pub permit: String,
    pub breaker: String,
    /// The breaker's state when it admitted the call (`closed`, `half_open` for a probe, or
    /// `disabled`).
    pub state: BreakerState,
    /// The call is one of the `half_open_calls` probes that decide whether the breaker closes.
    pub probe: bool,
    /// The permit expires, counting as nothing, unless recorded within this many ms
    /// (`slow_call_ms` + 60 000).
    pub expires_in_ms: u64,
    /// Decided by the cluster's shared breaker (Redis) rather than this node's own.
    pub shared: bool,
    /// A shared breaker whose Redis did not answer: this node's own breaker decided.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
}

/// How the call went.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    Success,
    Failure,
    /// The call was not made after all: frees a half-open probe slot, counts nothing.
    Cancelled,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordRequest {
    /// The permit `/acquire` returned.
    #[schema(min_length = 1, max_length = 200)]
    pub permit: String,
    pub outcome: CallOutcome,
    /// How long the call took; at least `slow_call_ms` counts as slow. Default: the time since
    /// the permit was issued.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 172_800_000)]
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordResponse {
    pub breaker: String,
    /// The breaker's state after this outcome.
    pub state: BreakerState,
    /// Counted in the window or the probes (`false`: cancelled, disabled, or the breaker
    /// changed state since the permit was issued).
    pub counted: bool,
    pub shared: bool,
}

/// The 503 of a breaker that does not admit the call: a problem naming the breaker and its
/// state, with `Retry-After` (seconds until an open breaker may probe; 1 otherwise).
pub fn circuit_open(name: &str, state: State, retry_after_ms: u64) -> Problem {
    let detail = match state {
        State::Open => format!(
            "circuit breaker `{name}` is open: the dependency is failing; it lets probes through in {retry_after_ms} ms"
        ),
        State::HalfOpen => format!(
            "circuit breaker `{name}` is half_open and all its probes are in flight; retry shortly"
        ),
        _ => format!(
            "circuit breaker `{name}` is {}: an operator stopped calls (reset it to resume)",
            state.as_str()
        ),
    };
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "circuit-open",
        "circuit open",
        detail,
    )
    .with_extension("breaker", name)
    .with_extension("state", state.as_str())
    .with_extension("retry_after_ms", retry_after_ms)
    .with_retry_after(retry_after_ms.div_ceil(1000).max(1))
}

/// Ask to make a call through the breaker. 200 with a permit when it may proceed; 503
/// (`circuit-open`, with `Retry-After`) while the breaker is open, forced open, or half-open
/// with all `half_open_calls` probes in flight. Node-local breakers decide on the node that
/// receives this (record on the same node); shared ones decide in Redis for the cluster.
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/acquire", tag = "resilience", operation_id = "acquire_breaker_permit", params(BreakerPath),
    responses((status = 200, body = AcquireResponse, description = "the call may proceed"),
        (status = 404, body = Problem),
        (status = 429, body = Problem, description = "the breaker has 100 000 unrecorded permits in flight (Retry-After)"),
        (status = 503, body = Problem, description = "circuit open: the call must not be made now (Retry-After)")))]
pub(super) async fn acquire(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<AcquireResponse>, Problem> {
    let a = svc.acquire(&name).await?;
    Ok(ApiJson(AcquireResponse {
        permit: a.permit,
        breaker: name,
        state: a.state.into(),
        probe: a.probe,
        expires_in_ms: a.expires_in_ms,
        shared: a.shared,
        degraded: a.degraded,
    }))
}

/// Record the outcome of a call `/acquire` admitted. A permit records once; one not recorded
/// within `slow_call_ms` + 60 s expires and counts as nothing (its probe slot is freed).
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/record", tag = "resilience", operation_id = "record_breaker_outcome", params(BreakerPath),
    request_body = RecordRequest,
    responses((status = 200, body = RecordResponse),
        (status = 400, body = Problem, description = "not a permit, or another breaker's"),
        (status = 404, body = Problem),
        (status = 409, body = Problem, description = "the permit was already recorded, or was issued by another node (node-local breakers)"),
        (status = 410, body = Problem, description = "the permit expired"),
        (status = 503, body = Problem, description = "a shared breaker whose Redis did not answer")))]
pub(super) async fn record(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
    ApiJson(req): ApiJson<RecordRequest>,
) -> Result<ApiJson<RecordResponse>, Problem> {
    let outcome = match req.outcome {
        CallOutcome::Success => Outcome::Success,
        CallOutcome::Failure => Outcome::Failure,
        CallOutcome::Cancelled => Outcome::Cancelled,
    };
    if req.duration_ms.is_some_and(|d| d > 172_800_000) {
        return Err(Problem::invalid_body(vec![mortar_core::FieldError::new(
            "duration_ms",
            "must be at most 172800000 (two days)",
        )]));
    }
    let r = svc
        .record(&name, &req.permit, outcome, req.duration_ms)
        .await?;
    Ok(ApiJson(RecordResponse {
        breaker: name,
        state: r.state.into(),
        counted: r.counted,
        shared: r.shared,
    }))
}
