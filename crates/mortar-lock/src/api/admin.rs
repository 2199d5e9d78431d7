//! `DELETE /v1/locks/{name}`: an operator's force-release, and who may see lease ids.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use mortar_core::Problem;
use mortar_core::auth::Principal;
use mortar_core::extract::{ApiJson, ApiPath, ApiQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{LeaseView, LockPath};
use crate::service::LockService;
use crate::service::admin::ForceRelease;

/// The block name API key scopes use for these routes. The auth layer derives a route's scope
/// from its path segment (`/v1/locks/…` needs `locks:read` / `locks:write`), so the secrets
/// scope is `locks:secrets` too: one operator key is `--scope locks:write --scope
/// locks:secrets`, not a mix of `locks:` and `lock:`.
const SCOPE_BLOCK: &str = "locks";

/// The scope (besides `locks:write`) an API key needs to force-release and to see lease ids.
pub const SECRETS_SCOPE: &str = "locks:secrets";

/// Whether the caller may see lease ids and force-release: the admin token, an API key with
/// `locks:secrets`, or anyone when auth is off (no principal in the request).
pub(super) fn reveals(p: Option<&Extension<Principal>>) -> bool {
    p.is_none_or(|Extension(p)| p.reveals(SCOPE_BLOCK))
}

/// Who asked, for the log.
fn who(p: Option<&Extension<Principal>>) -> String {
    match p.map(|Extension(p)| p) {
        Some(Principal::Key(k)) => format!("key {}", k.name),
        Some(Principal::Admin) => "admin".into(),
        Some(Principal::Open) | None => "anonymous".into(),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ForceReleaseParams {
    /// Why: logged at WARN with the lock's name and the evicted owners, and echoed back
    /// (at most 1024 characters).
    #[param(max_length = 1024)]
    pub reason: Option<String>,
    /// Release only this lease (one holder of a semaphore, from `GET /v1/locks/{name}`);
    /// without it, every holder is released.
    #[param(min_length = 1, max_length = 256)]
    pub lease_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ForceReleased {
    pub name: String,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// The leases ended, by fencing token. Their renewals and releases now answer 410 (as
    /// for an expired lease); the next grant's fencing token is larger than theirs.
    pub released: Vec<LeaseView>,
}

/// Force-release a lock (admin): end every holder's lease, or only `lease_id`'s, as if they
/// had expired; the waiters in line get the freed permits at once. Needs the admin token or an
/// API key with `locks:secrets` (and `locks:write`). Logged at WARN.
#[utoipa::path(delete, path = "/v1/locks/{name}", tag = "locks", operation_id = "force_release_lock",
    params(LockPath, ForceReleaseParams),
    responses((status = 200, body = ForceReleased, description = "the leases released"),
        (status = 403, body = Problem, description = "the API key lacks `locks:write` or `locks:secrets`"),
        (status = 404, body = Problem, description = "nobody holds the lock (or `lease_id` does not)")))]
pub(super) async fn force_release(
    State(svc): State<Arc<LockService>>,
    principal: Option<Extension<Principal>>,
    ApiPath(LockPath { name }): ApiPath<LockPath>,
    ApiQuery(p): ApiQuery<ForceReleaseParams>,
) -> Result<ApiJson<ForceReleased>, Problem> {
    if !reveals(principal.as_ref()) {
        return Err(Problem::forbidden(format!(
            "force-release needs the admin token or an API key with the scope `{SECRETS_SCOPE}` \
             (as well as `locks:write`); this key lacks `{SECRETS_SCOPE}`"
        )));
    }
    let req = ForceRelease {
        lease_id: p.lease_id,
        reason: p.reason.filter(|r| !r.is_empty()),
        by: who(principal.as_ref()),
    };
    let released = svc.force_release(&name, &req).await?;
    Ok(ApiJson(ForceReleased {
        released: released.iter().map(|h| LeaseView::new(&name, h)).collect(),
        name,
        reason: req.reason,
    }))
}

#[cfg(test)]
mod tests {
    use utoipa::IntoParams;

    use mortar_core::auth::{Level, Need, Scope, need_for};

    use super::{ForceReleaseParams, SCOPE_BLOCK, SECRETS_SCOPE};
    use crate::service::admin::{MAX_LEASE_ID, MAX_REASON};

    #[test]
    fn the_secrets_scope_names_the_block_the_auth_layer_names() {
        let Need::Block { block, write } = need_for(&http::Method::DELETE, "/v1/locks/x") else {
            panic!("a block route")
        };
        assert_eq!((block, write), (SCOPE_BLOCK, true));
        let scope = Scope::parse(SECRETS_SCOPE).unwrap();
        assert_eq!(
            (scope.block.as_str(), scope.level),
            (SCOPE_BLOCK, Level::Secrets)
        );
    }

    #[test]
    fn the_documented_limits_are_the_enforced_ones() {
        let params = ForceReleaseParams::into_params(|| None);
        let max = |name: &str| {
            let p = params.iter().find(|p| p.name == name).unwrap();
            let json = serde_json::to_value(p).unwrap();
            json["schema"]["maxLength"].as_u64().unwrap() as usize
        };
        assert_eq!(max("reason"), MAX_REASON);
        assert_eq!(max("lease_id"), MAX_LEASE_ID);
    }
}
