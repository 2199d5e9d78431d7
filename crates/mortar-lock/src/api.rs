//! `/v1/locks/…`: acquire (with long-poll waiting), renew, release, inspect, list;
//! [`admin`]: force-release.

mod admin;

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use http::StatusCode;
use mortar_core::Problem;
use mortar_core::api::Page;
use mortar_core::auth::Principal;
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
    let mut router = OpenApiRouter::new()
        .routes(routes!(acquire))
        .routes(routes!(renew))
        .routes(routes!(release))
        .routes(routes!(inspect, admin::force_release))
        .routes(routes!(list));
    document_limits(router.get_openapi_mut(), svc.config());
    router.with_state(svc)
}

/// Puts the configured limits (`lock.max_ttl_ms`, `lock.max_wait_ms`, `lock.max_permits`) in
/// the request schemas, so the document states what this node enforces.
fn document_limits(doc: &mut utoipa::openapi::OpenApi, cfg: &crate::config::LockConfig) {
    use utoipa::Number;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::Schema;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (schema, field, max) in [
        ("AcquireBody", "ttl_ms", cfg.max_ttl_ms),
        ("AcquireBody", "wait_ms", cfg.max_wait_ms),
        ("AcquireBody", "permits", u64::from(cfg.max_permits)),
        ("RenewBody", "ttl_ms", cfg.max_ttl_ms),
    ] {
        if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(schema)
            && let Some(RefOr::T(Schema::Object(property))) = object.properties.get_mut(field)
        {
            property.maximum = Some(Number::UInt(max as usize));
        }
    }
}

/// `{name}` in a lock's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct LockPath {
    /// The lock's name: 1 to 256 of letters, digits, `_`, `.`, `-`, `:`, `/` (percent-encoded).
    #[param(pattern = r"^[A-Za-z0-9_.:/-]{1,256}$")]
    pub name: String,
}

impl From<LockError> for Problem {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Invalid(errors) => Problem::invalid_body(errors),
            LockError::Busy(info) => {
                let holders: Vec<HolderView> = info
                    .holders
                    .iter()
                    .map(|h| HolderView::new(h, false))
                    .collect();
                Problem::new(
                    StatusCode::CONFLICT,
                    "lock-held",
                    "lock held",
                    busy_detail(&info),
                )
                .with_extension("holders", serde_json::to_value(holders).unwrap_or_default())
                .with_extension("waiters", info.waiters.len())
            }
            e @ LockError::NotHeld { .. } => Problem::not_found(e.to_string()),
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

/// Why a lock is busy: a mutex names its holder; a full semaphore names every holder (with
/// when each lease runs out); otherwise the line ahead.
fn busy_detail(info: &LockInfo) -> String {
    let name = &info.name;
    let held = |h: &Holder| format!("`{}` (until {})", h.owner, rfc3339(h.expires_at_ms));
    let all = || info.holders.iter().map(held).collect::<Vec<_>>().join(", ");
    let (n, permits, waiting) = (
        info.holders.len(),
        info.permits as usize,
        info.waiters.len(),
    );
    match info.holders.first() {
        Some(h) if permits <= 1 && n == 1 => format!(
            "lock `{name}` is held by `{}` until {}",
            h.owner,
            rfc3339(h.expires_at_ms)
        ),
        Some(_) if n >= permits => format!("all {n} permits of `{name}` are held: {}", all()),
        Some(_) => format!(
            "{n} of {permits} permits of `{name}` are held ({}), and {waiting} waiter(s) are \
             ahead in line",
            all()
        ),
        None => format!("lock `{name}` is busy: {waiting} waiter(s) are ahead in line"),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Lease length (1 to `lock.max_ttl_ms`); renew before it runs out.
    #[schema(minimum = 1)]
    pub ttl_ms: u64,
    /// Who holds it (shown to others; default `anonymous`): 1 to 256 bytes.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub owner: Option<String>,
    /// How long to wait in line if held (0: answer 409 at once; at most `lock.max_wait_ms`).
    #[serde(default)]
    pub wait_ms: u64,
    /// 1 for a mutex; N for a semaphore with N holders (fixed while in use; at most
    /// `lock.max_permits`).
    #[serde(default = "one")]
    #[schema(minimum = 1)]
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
    /// The holder's lease id: shown only to the admin token and API keys with `locks:secrets`
    /// (whoever has it can renew or release the lease); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
}

impl HolderView {
    fn new(h: &Holder, reveal: bool) -> Self {
        Self {
            owner: h.owner.clone(),
            fencing_token: h.token,
            expires_at: rfc3339(h.expires_at_ms),
            lease_id: reveal.then(|| h.lease_id.clone()),
        }
    }
}

/// Take the lock (or one permit of a semaphore); optionally wait in line.
#[utoipa::path(post, path = "/v1/locks/{name}/acquire", tag = "locks", params(LockPath), request_body = AcquireBody,
    responses((status = 200, body = LeaseView), (status = 409, body = Problem, description = "held (with holders) or permits mismatch"),
        (status = 400, body = Problem)))]
async fn acquire(
    State(svc): State<Arc<LockService>>,
    ApiPath(LockPath { name }): ApiPath<LockPath>,
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
    /// New lease length from now (1 to `lock.max_ttl_ms`).
    #[schema(minimum = 1)]
    pub ttl_ms: u64,
}

/// What a 410 from renew or release means.
const LEASE_LOST: &str =
    "the lease expired, was released or never existed (the lock may have a new holder)";

/// Extend a lease. 410 when it has already expired (the lock may have a new holder).
#[utoipa::path(post, path = "/v1/locks/{name}/renew", tag = "locks", params(LockPath), request_body = RenewBody,
    responses((status = 200, body = LeaseView), (status = 410, body = Problem, description = LEASE_LOST)))]
async fn renew(
    State(svc): State<Arc<LockService>>,
    ApiPath(LockPath { name }): ApiPath<LockPath>,
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
#[utoipa::path(post, path = "/v1/locks/{name}/release", tag = "locks", operation_id = "release_lock", params(LockPath), request_body = ReleaseBody,
    responses((status = 204, description = "released"), (status = 410, body = Problem, description = LEASE_LOST)))]
async fn release(
    State(svc): State<Arc<LockService>>,
    ApiPath(LockPath { name }): ApiPath<LockPath>,
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

impl LockView {
    /// `i` as shown to a caller; lease ids only when `reveal`.
    fn new(i: &LockInfo, reveal: bool) -> Self {
        Self {
            name: i.name.clone(),
            permits: i.permits,
            holders: i
                .holders
                .iter()
                .map(|h| HolderView::new(h, reveal))
                .collect(),
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

/// Holders (with expiries and tokens; lease ids for the admin token and `locks:secrets` keys)
/// and waiters of a lock. 404 when nobody holds or waits.
#[utoipa::path(get, path = "/v1/locks/{name}", tag = "locks", params(LockPath),
    responses((status = 200, body = LockView), (status = 404, body = Problem)))]
async fn inspect(
    State(svc): State<Arc<LockService>>,
    principal: Option<Extension<Principal>>,
    ApiPath(LockPath { name }): ApiPath<LockPath>,
) -> Result<ApiJson<LockView>, Problem> {
    let info = svc
        .inspect(&name)
        .await?
        .ok_or_else(|| Problem::not_found(format!("nobody holds or waits for lock `{name}`")))?;
    Ok(ApiJson(LockView::new(
        &info,
        admin::reveals(principal.as_ref()),
    )))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only names starting with this.
    #[serde(default)]
    pub prefix: String,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LockList {
    pub items: Vec<LockView>,
    pub next_cursor: Option<String>,
}

/// Locks in use, by name (holders' lease ids for the admin token and `locks:secrets` keys).
#[utoipa::path(get, path = "/v1/locks", tag = "locks", operation_id = "list_locks", params(ListParams),
    responses((status = 200, body = LockList), (status = 422, body = Problem, description = "`limit` out of range")))]
async fn list(
    State(svc): State<Arc<LockService>>,
    principal: Option<Extension<Principal>>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<ApiJson<LockList>, Problem> {
    let limit = mortar_core::api::page_limit(p.limit, 100, 1000)?;
    let locks = svc
        .list(
            &p.prefix,
            p.cursor.as_deref().unwrap_or(""),
            limit as usize + 1,
        )
        .await?;
    let page = Page::from_overfetch(locks, limit, |l| l.name.clone());
    Ok(ApiJson(LockList {
        items: page
            .items
            .iter()
            .map(|l| LockView::new(l, admin::reveals(principal.as_ref())))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::{Holder, LockInfo, busy_detail};
    use crate::engine::Waiter;

    fn info(permits: u32, owners: &[&str], waiters: usize) -> LockInfo {
        LockInfo {
            name: "n".into(),
            permits,
            holders: owners
                .iter()
                .zip(1..)
                .map(|(o, i)| Holder {
                    lease_id: format!("l{i}"),
                    owner: (*o).into(),
                    token: i,
                    acquired_at_ms: 0,
                    expires_at_ms: i * 1000,
                })
                .collect(),
            waiters: (0..waiters)
                .map(|i| Waiter {
                    ticket: format!("t{i}"),
                    owner: "w".into(),
                    until_ms: 5000,
                })
                .collect(),
            now_ms: 0,
        }
    }

    #[test]
    fn a_mutex_names_its_holder_a_semaphore_every_holder() {
        assert_eq!(
            busy_detail(&info(1, &["a"], 0)),
            "lock `n` is held by `a` until 1970-01-01T00:00:01.000Z"
        );
        assert_eq!(
            busy_detail(&info(3, &["a", "b", "c"], 0)),
            "all 3 permits of `n` are held: `a` (until 1970-01-01T00:00:01.000Z), \
             `b` (until 1970-01-01T00:00:02.000Z), `c` (until 1970-01-01T00:00:03.000Z)"
        );
        assert_eq!(
            busy_detail(&info(3, &["a"], 2)),
            "1 of 3 permits of `n` are held (`a` (until 1970-01-01T00:00:01.000Z)), and 2 waiter(s) \
             are ahead in line",
            "a semaphore with one holder is not reported as a mutex"
        );
        assert_eq!(
            busy_detail(&info(1, &[], 2)),
            "lock `n` is busy: 2 waiter(s) are ahead in line"
        );
    }
}
