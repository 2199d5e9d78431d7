//! Authentication and authorization for `/v1/*` and `/debug/*`.
//!
//! * No admin token configured: everything is open (the server then refuses to listen beyond
//!   loopback unless `--insecure`).
//! * Admin token configured: every `/v1` and `/debug` route needs `Authorization: Bearer …` with
//!   the admin token (compared in constant time) or an API key.
//! * API keys carry scopes `<block>:read` / `<block>:write` (`*` for every block; write implies
//!   read). The block is the path segment after `/v1/`; `GET`/`HEAD` need read, anything else
//!   write. `/v1/keys` and `/debug` are admin-only; `/v1/status` needs any valid token.
//!
//! Tokens are never logged. Missing or unknown tokens get 401, valid tokens without the scope 403.

pub mod api;
pub mod keys;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{Method, header};
use subtle::ConstantTimeEq;

pub use keys::{ApiKey, KeyStore, Level, Scope};

use crate::problem::Problem;

/// The auth policy of a running node.
#[derive(Debug)]
pub struct Auth {
    admin_token: Option<String>,
    pub keys: KeyStore,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Auth is off (no admin token configured): full rights.
    Open,
    Admin,
    Key(ApiKey),
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    Public,
    Admin,
    /// Any valid token.
    Authenticated,
    Block {
        block: &'a str,
        write: bool,
    },
}

impl Auth {
    pub fn new(admin_token: Option<String>, keys: KeyStore) -> Self {
        Self { admin_token, keys }
    }

    pub fn enabled(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Resolves a bearer token to a principal; `None` when auth is on and the token is unknown.
    pub async fn authenticate(&self, bearer: Option<&str>) -> Result<Option<Principal>, Problem> {
        let Some(admin) = &self.admin_token else {
            return Ok(Some(Principal::Open));
        };
        let Some(token) = bearer else { return Ok(None) };
        if bool::from(token.as_bytes().ct_eq(admin.as_bytes())) {
            return Ok(Some(Principal::Admin));
        }
        Ok(self.keys.verify(token).await?.map(Principal::Key))
    }
}

impl Principal {
    /// Whether it may see `block`'s secret values: the admin, anyone when auth is off, and keys
    /// with the scope `<block>:secrets`.
    pub fn reveals(&self, block: &str) -> bool {
        match self {
            Principal::Open | Principal::Admin => true,
            Principal::Key(k) => k.scopes.iter().any(|s| s.reveals(block)),
        }
    }

    pub fn allows(&self, need: Need<'_>) -> bool {
        match (self, need) {
            (_, Need::Public | Need::Authenticated) | (Principal::Open | Principal::Admin, _) => {
                true
            }
            (Principal::Key(_), Need::Admin) => false,
            (Principal::Key(k), Need::Block { block, write }) => {
                k.scopes.iter().any(|s| s.grants(block, write))
            }
        }
    }
}

/// What `method path` requires.
pub fn need_for<'a>(method: &Method, path: &'a str) -> Need<'a> {
    if path == "/debug" || path.starts_with("/debug/") {
        return Need::Admin;
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return if path == "/v1" {
            Need::Authenticated
        } else {
            Need::Public
        };
    };
    let block = rest.split('/').next().unwrap_or_default();
    match block {
        "keys" => Need::Admin,
        "status" | "" => Need::Authenticated,
        _ => Need::Block {
            block,
            write: !matches!(*method, Method::GET | Method::HEAD),
        },
    }
}

impl Auth {
    /// Whether `req` must be admitted by [`Auth::admit`]: auth is on and the route is not public.
    pub fn guards(&self, req: &Request) -> bool {
        self.enabled() && need_for(req.method(), req.uri().path()) != Need::Public
    }

    /// Admits `req` if its principal has what the route needs, and puts the principal in the
    /// request extensions for handlers; otherwise the 401/403 answer.
    pub async fn admit(&self, req: &mut Request) -> Result<(), Response> {
        let need = need_for(req.method(), req.uri().path());
        let bearer = bearer(req.headers()).map_err(IntoResponse::into_response)?;
        let principal = match self.authenticate(bearer).await {
            Ok(Some(p)) => p,
            Ok(None) if bearer.is_none() => {
                return Err(
                    Problem::unauthorized("send `Authorization: Bearer <token>`").into_response(),
                );
            }
            Ok(None) => {
                return Err(
                    Problem::unauthorized("the token is unknown or revoked").into_response()
                );
            }
            Err(p) => return Err(p.into_response()),
        };
        if !principal.allows(need) {
            let detail = match need {
                Need::Block { block, write } => {
                    format!(
                        "this API key lacks the scope `{block}:{}`",
                        if write { "write" } else { "read" }
                    )
                }
                _ => "this route needs the admin token".to_owned(),
            };
            return Err(Problem::forbidden(detail).into_response());
        }
        req.extensions_mut().insert(principal);
        Ok(())
    }
}

fn bearer(headers: &http::HeaderMap) -> Result<Option<&str>, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not valid text"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(Problem::unauthorized("use `Authorization: Bearer <token>`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_follow_the_path() {
        assert_eq!(need_for(&Method::GET, "/healthz"), Need::Public);
        assert_eq!(need_for(&Method::GET, "/metrics"), Need::Public);
        assert_eq!(need_for(&Method::GET, "/v1x"), Need::Public);
        assert_eq!(need_for(&Method::GET, "/debug/pprof/profile"), Need::Admin);
        assert_eq!(need_for(&Method::POST, "/v1/keys"), Need::Admin);
        assert_eq!(need_for(&Method::DELETE, "/v1/keys/abc"), Need::Admin);
        assert_eq!(need_for(&Method::GET, "/v1/status"), Need::Authenticated);
        assert_eq!(
            need_for(&Method::GET, "/v1/jobs/123"),
            Need::Block {
                block: "jobs",
                write: false
            }
        );
        assert_eq!(
            need_for(&Method::POST, "/v1/ratelimit/check"),
            Need::Block {
                block: "ratelimit",
                write: true
            }
        );
    }

    fn key(scopes: &[&str]) -> Principal {
        Principal::Key(ApiKey {
            id: "k".into(),
            name: "n".into(),
            scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            created_at_ms: 0,
            revoked_at_ms: None,
        })
    }

    #[test]
    fn scopes_grant_per_block_and_level() {
        let read = Need::Block {
            block: "jobs",
            write: false,
        };
        let write = Need::Block {
            block: "jobs",
            write: true,
        };
        assert!(key(&["jobs:read"]).allows(read));
        assert!(!key(&["jobs:read"]).allows(write));
        assert!(key(&["jobs:write"]).allows(read));
        assert!(key(&["jobs:write"]).allows(write));
        assert!(!key(&["cache:write"]).allows(read));
        assert!(key(&["jobs:secrets"]).allows(read));
        assert!(!key(&["jobs:secrets"]).allows(write));
        assert!(key(&["jobs:secrets"]).reveals("jobs"));
        assert!(!key(&["jobs:write"]).reveals("jobs"));
        assert!(key(&["*:secrets"]).reveals("config"));
        assert!(Principal::Admin.reveals("config"));
        assert!(key(&["*:read"]).allows(read));
        assert!(!key(&["*:read"]).allows(write));
        assert!(!key(&["*:write"]).allows(Need::Admin));
        assert!(key(&[]).allows(Need::Authenticated));
        assert!(Principal::Admin.allows(Need::Admin));
    }
}
