//! `/v1/locks/…`: acquire (with long-poll waiting), renew, release, inspect, list.

use std::sync::Arc;

use axum::extract::State;
use http::StatusCode;
use mortar_core::Problem;
use mortar_core::clock::rfc3339;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::engine::Holder;
use crate::error::LockError;
use crate::service::{AcquireRequest, LockService};
use crate::store::LockInfo;

pub fn router(svc: Arc<LockService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(acquire))
        .routes(routes!(renew))
        .routes(routes!(release))
        .routes(routes!(inspect))
        .routes(routes!(list))
        .with_state(svc)
}

impl From<LockError> for Problem {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Invalid(errors) => Problem::invalid_body(errors),
            LockError::Busy(info) => {
                let holders: Vec<HolderView> = info.holders.iter().map(HolderView::from).collect();
                let first = info.holders.iter().min_by_key(|h| h.expires_at_ms);
                let detail = match first {
                    Some(h) => format!(
                        "lock `{}` is held by `{}` until {}",
                        info.name,
                        h.owner,
                        rfc3339(h.expires_at_ms)
                    ),
                    None => format!(
                        "lock `{}` is busy: {} waiter(s) are ahead in line",
                        info.name,
                        info.waiters.len()
                    ),
                };
                Problem::new(StatusCode::CONFLICT, "lock-held", "lock held", detail)
                    .with_extension("holders", serde_json::to_value(holders).unwrap_or_default())
                    .with_extension("waiters", info.waiters.len())
            }
            e @ LockError::PermitsMismatch { .. } => Problem::new(
                StatusCode::CONFLICT,
                "permits-mismatch",
                "permits mismatch",
                e.to_string(),
            ),
            e @ LockError::LeaseLost { .. } => {
                Problem::new(StatusCode::GONE, "lease-lost", "lease lost", e.to_string())
            }
            LockError::Unavailable(what) => {
                Problem::unavailable(&what, format!("{what} did not answer; retry shortly"))
            }
            LockError::ShuttingDown => mortar_core::shutdown::problem(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Lease length; renew before it runs out.
    pub ttl_ms: u64,
    /// Who holds it (shown to others; default `anonymous`).
    #[serde(default)]
    pub owner: Option<String>,
    /// How long to wait in line if held (0: answer 409 at once).
    #[serde(default)]
    pub wait_ms: u64,
    /// 1 for a mutex; N for a semaphore with N holders (fixed while in use).
    #[serde(default = "one")]
    pub permits: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseView {
    pub name: String,
    pub lease_id: String,
    /// Strictly increases on every grant of this name: pass it to the resource you protect.
    pub fencing_token: u64,
    pub owner: String,
    pub expires_at: String,
    pub acquired_at: String,
}

impl LeaseView {
    fn new(name: &str, h: &Holder) -> Self {
        Self {
            name: name.to_owned(),
            lease_id: h.lease_id.clone(),
            fencing_token: h.token,
            owner: h.owner.clone(),
            expires_at: rfc3339(h.expires_at_ms),
            acquired_at: rfc3339(h.acquired_at_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HolderView {
    pub owner: String,
    pub fencing_token: u64,
    pub expires_at: String,
}

impl From<&Holder> for HolderView {
    fn from(h: &Holder) -> Self {
        Self {
            owner: h.owner.clone(),
            fencing_token: h.token,
            expires_at: rfc3339(h.expires_at_ms),
        }
    }
}

/// Take the lock (or one permit of a semaphore); optionally wait in line.
#[utoipa::path(post, path = "/v1/locks/{name}/acquire", tag = "locks", request_body = AcquireBody,
    responses((status = 200, body = LeaseView), (status = 409, body = Problem, description = "held (with holders) or permits mismatch"),
        (status = 400, body = Problem)))]
async fn acquire(
    State(svc): State<Arc<LockService>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<AcquireBody>,
) -> Result<ApiJson<LeaseView>, Problem> {
    let req = AcquireRequest {
        ttl_ms: body.ttl_ms,
        owner: body.owner.unwrap_or_else(|| "anonymous".into()),
        wait_ms: body.wait_ms,
        permits: body.permits,
    };
    let h = svc.acquire(&name, &req).await?;
    Ok(ApiJson(LeaseView::new(&name, &h)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    pub lease_id: String,
    pub ttl_ms: u64,
}

/// Extend a lease. 410 when it has already expired (the lock may have a new holder).
#[utoipa::path(post, path = "/v1/locks/{name}/renew", tag = "locks", request_body = RenewBody,
    responses((status = 200, body = LeaseView), (status = 410, body = Problem)))]
async fn renew(
    State(svc): State<Arc<LockService>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<RenewBody>,
) -> Result<ApiJson<LeaseView>, Problem> {
    let h = svc.renew(&name, &body.lease_id, body.ttl_ms).await?;
    Ok(ApiJson(LeaseView::new(&name, &h)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    pub lease_id: String,
}

/// Give the lock up; the next waiter gets it at once.
#[utoipa::path(post, path = "/v1/locks/{name}/release", tag = "locks", request_body = ReleaseBody,
    responses((status = 204), (status = 410, body = Problem)))]
async fn release(
    State(svc): State<Arc<LockService>>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<ReleaseBody>,
) -> Result<StatusCode, Problem> {
    svc.release(&name, &body.lease_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LockView {
    pub name: String,
    pub permits: u32,
    pub holders: Vec<HolderView>,
    pub waiters: Vec<WaiterView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WaiterView {
    pub owner: String,
    /// When this waiter gives up.
    pub until: String,
}

impl From<&LockInfo> for LockView {
    fn from(i: &LockInfo) -> Self {
        Self {
            name: i.name.clone(),
            permits: i.permits,
            holders: i.holders.iter().map(HolderView::from).collect(),
            waiters: i
                .waiters
                .iter()
                .map(|w| WaiterView {
                    owner: w.owner.clone(),
                    until: rfc3339(w.until_ms),
                })
                .collect(),
        }
    }
}

/// Holders (with expiries and tokens) and waiters of a lock. 404 when nobody holds or waits.
#[utoipa::path(get, path = "/v1/locks/{name}", tag = "locks",
    responses((status = 200, body = LockView), (status = 404, body = Problem)))]
async fn inspect(
    State(svc): State<Arc<LockService>>,
    ApiPath(name): ApiPath<String>,
) -> Result<ApiJson<LockView>, Problem> {
    let info = svc
        .inspect(&name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("nobody holds or waits for lock `{name}`")))?;
    Ok(ApiJson(LockView::from(&info)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only names starting with this.
    #[serde(default)]
    pub prefix: String,
    /// 1 to 1000 (default 100).
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LockList {
    pub items: Vec<LockView>,
    pub next_cursor: Option<String>,
}

/// Locks in use, by name.
#[utoipa::path(get, path = "/v1/locks", tag = "locks", params(ListParams), responses((status = 200, body = LockList)))]
async fn list(
    State(svc): State<Arc<LockService>>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<ApiJson<LockList>, Problem> {
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::validation(vec![mortar_core::FieldError::new(
            "limit",
            "must be 1 to 1000",
        )]));
    }
    let locks = svc
        .list(&p.prefix, p.cursor.as_deref().unwrap_or(""), limit)
        .await?;
    let next_cursor = (locks.len() == limit)
        .then(|| locks.last().map(|l| l.name.clone()))
        .flatten();
    Ok(ApiJson(LockList {
        items: locks.iter().map(LockView::from).collect(),
        next_cursor,
    }))
}
