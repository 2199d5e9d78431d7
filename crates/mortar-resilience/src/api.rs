//! `/v1/resilience/…`: breakers (state, counts, rates, last transition; force open/close,
//! disable, reset) and bulkheads (permits in use, queue).

use std::sync::Arc;

use axum::extract::State as AxumState;
use mortar_core::Problem;
use mortar_core::clock::rfc3339;
use mortar_core::extract::{ApiJson, ApiPath};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::breaker::{Breaker, BreakerConfig, State};
use crate::bulkhead::BulkheadConfig;
use crate::service::ResilienceService;

pub fn router(svc: Arc<ResilienceService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_breakers))
        .routes(routes!(get_breaker))
        .routes(routes!(force_open))
        .routes(routes!(force_close))
        .routes(routes!(disable))
        .routes(routes!(reset))
        .routes(routes!(list_bulkheads))
        .with_state(svc)
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

/// `{name}` in a breaker's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BreakerPath {
    /// The breaker's name.
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerView {
    pub name: String,
    pub state: BreakerState,
    /// Calls in the sliding window.
    pub calls: u64,
    pub failures: u64,
    pub slow_calls: u64,
    /// Percent of calls in the window that failed.
    pub failure_rate: f64,
    /// Percent of calls in the window that were slow.
    pub slow_call_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<TransitionView>,
    pub config: BreakerConfig,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionView {
    pub from: BreakerState,
    pub to: BreakerState,
    pub at: String,
}

impl From<&Breaker> for BreakerView {
    fn from(b: &Breaker) -> Self {
        let s = b.snapshot();
        Self {
            name: s.name,
            state: s.state.into(),
            calls: s.totals.calls,
            failures: s.totals.failures,
            slow_calls: s.totals.slow,
            failure_rate: s.totals.failure_rate(),
            slow_call_rate: s.totals.slow_rate(),
            last_transition: s.last_transition.map(|t| TransitionView {
                from: t.from.into(),
                to: t.to.into(),
                at: rfc3339(b.wall_ms(t.at_ms)),
            }),
            config: s.config,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BreakerList {
    pub items: Vec<BreakerView>,
    pub next_cursor: Option<String>,
}

/// Every breaker, by name (configured ones even before their first call).
#[utoipa::path(get, path = "/v1/resilience/breakers", tag = "resilience", responses((status = 200, body = BreakerList)))]
async fn list_breakers(AxumState(svc): AxumState<Arc<ResilienceService>>) -> ApiJson<BreakerList> {
    ApiJson(BreakerList {
        items: svc
            .breakers()
            .iter()
            .map(|b| BreakerView::from(&**b))
            .collect(),
        next_cursor: None,
    })
}

/// Applies `action` to the named breaker and shows the result.
fn steer(
    svc: &ResilienceService,
    name: &str,
    action: fn(&Breaker),
) -> Result<ApiJson<BreakerView>, Problem> {
    let b = find(svc, name)?;
    action(&b);
    Ok(ApiJson(BreakerView::from(&*b)))
}

fn find(svc: &ResilienceService, name: &str) -> Result<Arc<Breaker>, Problem> {
    svc.find_breaker(name)
        .ok_or_else(|| Problem::not_found(format!("no circuit breaker named `{name}`")))
}

/// One breaker.
#[utoipa::path(get, path = "/v1/resilience/breakers/{name}", tag = "resilience", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem)))]
async fn get_breaker(
    AxumState(svc): AxumState<Arc<ResilienceService>>,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    Ok(ApiJson(BreakerView::from(&*find(&svc, &name)?)))
}

/// Open the breaker until reset or force_close (it never probes meanwhile).
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/force_open", tag = "resilience", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem)))]
async fn force_open(
    AxumState(svc): AxumState<Arc<ResilienceService>>,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    steer(&svc, &name, Breaker::force_open)
}

/// Close the breaker with an empty window (ends forced_open and disabled).
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/force_close", tag = "resilience", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem)))]
async fn force_close(
    AxumState(svc): AxumState<Arc<ResilienceService>>,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    steer(&svc, &name, Breaker::reset)
}

/// Let every call through and record nothing, until reset.
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/disable", tag = "resilience", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem)))]
async fn disable(
    AxumState(svc): AxumState<Arc<ResilienceService>>,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    steer(&svc, &name, Breaker::disable)
}

/// Back to closed with an empty window.
#[utoipa::path(post, path = "/v1/resilience/breakers/{name}/reset", tag = "resilience", operation_id = "reset_breaker", params(BreakerPath),
    responses((status = 200, body = BreakerView), (status = 404, body = Problem)))]
async fn reset(
    AxumState(svc): AxumState<Arc<ResilienceService>>,
    ApiPath(BreakerPath { name }): ApiPath<BreakerPath>,
) -> Result<ApiJson<BreakerView>, Problem> {
    steer(&svc, &name, Breaker::reset)
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
async fn list_bulkheads(
    AxumState(svc): AxumState<Arc<ResilienceService>>,
) -> ApiJson<BulkheadList> {
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
