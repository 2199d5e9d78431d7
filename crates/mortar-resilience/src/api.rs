//! `/v1/resilience/…`: breakers (list, show, create/update and delete API breakers, force
//! open/close, disable, reset; calls over HTTP in `api/calls.rs`) and bulkheads (permits in use,
//! queue).

mod calls;

use std::sync::Arc;

use axum::extract::State as AxumState;
use http::StatusCode;
use mortar_core::Problem;
use mortar_core::clock::rfc3339;
use mortar_core::extract::{ApiJson, ApiPath};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use self::calls::{AcquireResponse, CallOutcome, RecordRequest, RecordResponse};
use crate::breaker::{BreakerConfig, State};
use crate::bulkhead::BulkheadConfig;
use crate::error::{PermitError, ResilienceError};
use crate::service::{ResilienceService, Source, Status, Steer};

pub fn router(svc: Arc<ResilienceService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_breakers))
        .routes(routes!(get_breaker, put_breaker, delete_breaker))
        .routes(routes!(force_open))
        .routes(routes!(force_close))
        .routes(routes!(disable))
        .routes(routes!(reset))
        .routes(routes!(calls::acquire))
        .routes(routes!(calls::record))
        .routes(routes!(list_bulkheads))
        .with_state(svc)
}

impl From<ResilienceError> for Problem {
    fn from(e: ResilienceError) -> Self {
        match e {
            ResilienceError::Invalid(errors) => Problem::invalid_body(errors),
            ResilienceError::NotFound(name) => Problem::not_found(format!(
                "no circuit breaker named `{name}`; create it with PUT /v1/resilience/breakers/{name}"
            )),
            e @ ResilienceError::NotDefined(_) => Problem::not_found(e.to_string()),
            e @ ResilienceError::ConfigBreaker(_) => Problem::conflict(e.to_string()),
            ResilienceError::Rejected {
                name,
                state,
                retry_after_ms,
            } => calls::circuit_open(&name, state, retry_after_ms),
            ResilienceError::Permit(p) => permit_problem(&p),
            e @ ResilienceError::TooManyPermits(_) => Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-permits",
                "too many permits in flight",
                e.to_string(),
            )
            .with_retry_after(1),
            ResilienceError::Unavailable(what) => Problem::unavailable(
                what,
                format!("{what} did not answer in time; retry shortly"),
            ),
        }
    }
}

fn permit_problem(p: &PermitError) -> Problem {
    let detail = p.to_string();
    match p {
        PermitError::Malformed(_) | PermitError::OtherBreaker(_) | PermitError::NotShared(_) => {
            Problem::invalid_body(vec![mortar_core::FieldError::new("permit", detail)])
        }
        PermitError::OtherNode => Problem::new(
            StatusCode::CONFLICT,
            "permit-unknown",
            "permit unknown to this node",
            detail,
        ),
        PermitError::Used => Problem::new(
            StatusCode::CONFLICT,
            "permit-used",
            "permit already recorded",
            detail,
        ),
        PermitError::Expired { .. } => {
            Problem::new(StatusCode::GONE, "permit-expired", "permit expired", detail)
        }
    }
}

/// A breaker's state, as the API shows it (named apart from the jobs block's `State`, which
/// would otherwise take its place in the OpenAPI document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl From<State> for BreakerState {
    fn from(s: State) -> Self {
        match s {
            State::Closed => Self::Closed,
            State::Open => Self::Open,
            State::HalfOpen => Self::HalfOpen,
            State::ForcedOpen => Self::ForcedOpen,
            State::Disabled => Self::Disabled,
        }
    }
}

/// Where a breaker is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerSource {
    /// `[resilience.breakers.<name>]` in mortar.toml: read-only through the API.
    Config,
    /// Created with `PUT /v1/resilience/breakers/{name}`: stored, on every node.
    Api,
    /// Asked for by a block of this node (e.g. `jobs.push.<queue>`), default settings.
    Default,
}

impl From<Source> for BreakerSource {
    fn from(s: Source) -> Self {
        match s {
            Source::Config => Self::Config,
            Source::Api => Self::Api,
            Source::Default => Self::Default,
        }
    }
}

/// `{name}` in a breaker's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BreakerPath {
    /// The breaker's name: 1 to 128 of letters, digits, `_`, `.`, `-`.
    #[param(pattern = r"^[A-Za-z0-9_.-]{1,128}$")]
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerView {
    pub name: String,
    pub state: BreakerState,
    pub source: BreakerSource,
    /// Calls in the sliding window.
    pub calls: u64,
    pub failures: u64,
    pub slow_calls: u64,
    /// Percent of calls in the window that failed.
    pub failure_rate: f64,
    /// Percent of calls in the window that were slow.
    pub slow_call_rate: f64,
    /// Half-open probes admitted and not yet recorded.
    pub probes_in_flight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<TransitionView>,
    pub config: BreakerConfig,
    /// Present when a shared breaker's Redis did not answer: why, and that this node's own
    /// breaker is shown (and decides) meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionView {
    pub from: BreakerState,
    pub to: BreakerState,
    pub at: String,
}

impl From<Status> for BreakerView {
    fn from(s: Status) -> Self {
        Self {
            name: s.name,
            state: s.state.into(),
            source: s.source.into(),
            calls: s.totals.calls,
            failures: s.totals.failures,
            slow_calls: s.totals.slow,
            failure_rate: s.totals.failure_rate(),
            slow_call_rate: s.totals.slow_rate(),
            probes_in_flight: s.probes_in_flight,
            last_transition: s.last_transition.map(|(from, to, at)| TransitionView {
                from: from.into(),
                to: to.into(),
                at: rfc3339(at),
            }),
            config: s.config,
            degraded: s.degraded,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerList {
    pub items: Vec<BreakerView>,
    pub next_cursor: Option<String>,
}

type Svc = AxumState<Arc<ResilienceService>>;

/// Every breaker, by name (configured ones even before their first call).
#[utoipa::path(get, path = "/v1/resilience/breakers", tag = "resilience", responses((status = 200, body = BreakerList)))]
async fn list_breakers(AxumState(svc): Svc) -> ApiJson<BreakerList> {
    let items = svc
        .statuses()
        .await
        .into_iter()
        .map(BreakerView::from)
        .collect();
    ApiJson(BreakerList {
        items,
        next_cursor: None,
    })
}

/// One breaker.
#[utoipa::path(get, path = "/v1/resilience/breakers/{name}", tag = "resilience", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem)))]
async fn get_breaker(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    Ok(ApiJson(svc.status(&name).await?.into()))
}

/// Create or update a breaker (the fields of a `[resilience.breakers.<name>]` table; missing
/// ones take their defaults). 201 when created, 200 when updated. The definition is stored and
/// reaches every node of a cluster within `resilience.refresh_ms`. An update keeps the state:
/// an open breaker stays open, admitted calls still count, and the window keeps its counts
/// unless its kind or size changed; the new thresholds judge from the next recorded call.
#[utoipa::path(put, path = "/v1/resilience/breakers/{name}", tag = "resilience", params(BreakerPath),
    request_body = BreakerConfig,
    responses((status = 201, body = BreakerView, description = "created"),
        (status = 200, body = BreakerView, description = "updated"),
        (status = 400, body = Problem, description = "a field out of range (each one named), or `shared` without cluster mode and Redis"),
        (status = 409, body = Problem, description = "the breaker is defined in mortar.toml: read-only here"),
        (status = 503, body = Problem, description = "the durable store did not answer")))]
async fn put_breaker(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
    ApiJson(cfg): ApiJson<BreakerConfig>,
) -> Result<(StatusCode, ApiJson<BreakerView>), Problem> {
    let (_, created) = svc.put(&name, cfg).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, ApiJson(svc.status(&name).await?.into())))
}

/// Delete a breaker created through the API, on every node (a breaker a block of a node uses
/// stays there, back to default settings). Breakers of mortar.toml cannot be deleted here.
#[utoipa::path(delete, path = "/v1/resilience/breakers/{name}", tag = "resilience", params(BreakerPath),
    responses((status = 204, description = "deleted"),
        (status = 404, body = Problem, description = "no breaker of that name was created through the API"),
        (status = 409, body = Problem, description = "the breaker is defined in mortar.toml: read-only here"),
        (status = 503, body = Problem, description = "the durable store did not answer")))]
async fn delete_breaker(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<StatusCode, Problem> {
    svc.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn steer(
    svc: &ResilienceService,
    name: &str,
    action: Steer,
) -> Result<ApiJson<BreakerView>, Problem> {
    Ok(ApiJson(svc.steer(name, action).await?.into()))
}

/// Open the breaker until reset or force_close (it never probes meanwhile). A node-local
/// breaker changes on the node that receives this; a shared one on every node.
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/force_open", tag = "resilience", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem),
        (status = 503, body = Problem, description = "a shared breaker whose Redis did not answer")))]
async fn force_open(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    steer(&svc, &name, Steer::ForceOpen).await
}

/// Close the breaker with an empty window (ends forced_open and disabled).
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/force_close", tag = "resilience", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem),
        (status = 503, body = Problem, description = "a shared breaker whose Redis did not answer")))]
async fn force_close(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    steer(&svc, &name, Steer::Reset).await
}

/// Let every call through and record nothing, until reset.
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/disable", tag = "resilience", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem),
        (status = 503, body = Problem, description = "a shared breaker whose Redis did not answer")))]
async fn disable(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    steer(&svc, &name, Steer::Disable).await
}

/// Back to closed with an empty window.
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/reset", tag = "resilience", operation_id = "reset_breaker", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem),
        (status = 503, body = Problem, description = "a shared breaker whose Redis did not answer")))]
async fn reset(
    AxumState(svc): Svc,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    steer(&svc, &name, Steer::Reset).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkheadView {
    pub name: String,
    pub in_use: u32,
    pub queued: usize,
    pub config: BulkheadConfig,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkheadList {
    pub items: Vec<BulkheadView>,
    pub next_cursor: Option<String>,
}

/// Every bulkhead: permits in use and callers waiting.
#[utoipa::path(get, path = "/v1/resilience/bulkheads", tag = "resilience", responses((status = 200, body = BulkheadList)))]
async fn list_bulkheads(AxumState(svc): Svc) -> ApiJson<BulkheadList> {
    let items = svc
        .bulkheads()
        .iter()
        .map(|b| BulkheadView {
            name: b.name().to_owned(),
            in_use: b.in_use(),
            queued: b.queued(),
            config: b.config().clone(),
        })
        .collect();
    ApiJson(BulkheadList {
        items,
        next_cursor: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_states_keep_their_names() {
        for s in [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::Disabled,
        ] {
            assert_eq!(
                serde_json::to_value(BreakerState::from(s)).unwrap(),
                s.as_str()
            );
        }
    }
}
