//! `/v1/ratelimit/…`: checks (with IETF and legacy rate-limit headers), peeks, resets, policies.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use mortar_core::Problem;
use mortar_core::extract::{ApiJson, ApiPath};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::RateLimitError;
use crate::policy::{FailureMode, Policy, PolicySpec, Source};
use crate::service::{Outcome, RateLimitService};

/// Most checks in one batch.
pub const MAX_BATCH: usize = 1000;

pub fn router(svc: Arc<RateLimitService>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(check))
        .routes(routes!(check_batch))
        .routes(routes!(list_policies))
        .routes(routes!(get_policy, put_policy, delete_policy))
        .routes(routes!(peek, reset))
        .with_state(svc)
}

impl From<RateLimitError> for Problem {
    fn from(e: RateLimitError) -> Self {
        match e {
            RateLimitError::Invalid(errors) => Problem::invalid_body(errors),
            RateLimitError::UnknownPolicy(name) => Problem::not_found(format!(
                "no rate-limit policy named `{name}`; create it with PUT /v1/ratelimit/policies/{name}"
            )),
            e @ RateLimitError::ConfigPolicy(_) => Problem::conflict(e.to_string()),
            RateLimitError::Unavailable(what) => Problem::unavailable(
                &what,
                format!("{what} did not answer in time; retry shortly"),
            ),
        }
    }
}

/// A policy name: 1 to 128 of letters, digits, `_`, `.`, `-` (not `check` or `policies`).
#[derive(ToSchema)]
#[schema(pattern = r"^[A-Za-z0-9_.-]{1,128}$")]
pub struct PolicyName(pub String);

/// `{name}` in a policy's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct PolicyPath {
    /// The policy's name: 1 to 128 of letters, digits, `_`, `.`, `-` (not `check` or
    /// `policies`).
    #[param(pattern = r"^[A-Za-z0-9_.-]{1,128}$")]
    pub name: String,
}

/// `{policy}/{key}` in a key's path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// The policy's name.
    pub policy: String,
    /// The key, 1 to 4095 bytes (percent-encode `/`).
    #[param(min_length = 1, max_length = 4095)]
    pub key: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// 1 to 16 distinct policy names; units are taken from all of them only if all allow.
    #[schema(value_type = Vec<PolicyName>, min_items = 1, max_items = 16)]
    pub policies: Vec<String>,
    /// The caller-chosen key: a user id, an API key, an IP, `user:42:endpoint:/search`…
    /// (1 to 4095 bytes).
    #[schema(min_length = 1, max_length = 4095)]
    pub key: String,
    /// Units to take (default 1); at most the smallest capacity among the policies.
    #[serde(default = "one")]
    #[schema(minimum = 1)]
    pub cost: u64,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResponse {
    pub allowed: bool,
    /// The reported (most restrictive) policy's limit.
    pub limit: u64,
    pub remaining: u64,
    /// Milliseconds until the reported policy's quota is whole again.
    pub reset_ms: u64,
    /// Milliseconds to wait before retrying (0 when allowed).
    pub retry_after_ms: u64,
    /// The most restrictive policy.
    pub policy: String,
    /// True when the shared backend was unreachable and failure modes decided.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub degraded: bool,
    /// Every policy's own decision, in request order.
    pub policies: Vec<PolicyDecision>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyDecision {
    pub policy: String,
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
    pub retry_after_ms: u64,
}

impl From<&Outcome> for CheckResponse {
    fn from(o: &Outcome) -> Self {
        let (p, d) = o.decision();
        Self {
            allowed: o.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_ms: d.reset_ms,
            retry_after_ms: d.retry_after_ms,
            policy: p.name.clone(),
            degraded: o.degraded,
            policies: o
                .results
                .iter()
                .map(|(p, d)| PolicyDecision {
                    policy: p.name.clone(),
                    allowed: d.allowed,
                    limit: d.limit,
                    remaining: d.remaining,
                    reset_ms: d.reset_ms,
                    retry_after_ms: d.retry_after_ms,
                })
                .collect(),
        }
    }
}

/// The rate-limit headers for an outcome: draft-ietf-httpapi-ratelimit-headers-11
/// (`RateLimit-Policy`, `RateLimit`), the legacy `X-RateLimit-*`, and `Retry-After` when denied.
pub fn headers(o: &Outcome) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(8);
    put_headers(o, &mut h);
    h
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Adds the rate-limit headers of `o` to `h` (see [`headers`]).
pub fn put_headers(o: &Outcome, h: &mut HeaderMap) {
    use std::fmt::Write as _;
    let (p, d) = o.decision();
    let secs = |ms: u64| ms.div_ceil(1000);
    let mut text = String::with_capacity(64);
    for (i, (p, _)) in o.results.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(
            text,
            "{sep}\"{}\";q={};w={}",
            p.name,
            p.limit.capacity(),
            secs(p.limit.window_ms).max(1)
        );
    }
    if let Ok(v) = HeaderValue::from_str(&text) {
        h.insert(RATELIMIT_POLICY.clone(), v);
    }
    text.clear();
    let _ = write!(
        text,
        "\"{}\";r={};t={}",
        p.name,
        d.remaining,
        secs(d.reset_ms)
    );
    if let Ok(v) = HeaderValue::from_str(&text) {
        h.insert(RATELIMIT.clone(), v);
    }
    h.insert(X_LIMIT.clone(), HeaderValue::from(d.limit));
    h.insert(X_REMAINING.clone(), HeaderValue::from(d.remaining));
    h.insert(X_RESET.clone(), HeaderValue::from(secs(d.reset_ms)));
    if !o.allowed {
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(secs(d.retry_after_ms).max(1)),
        );
    }
}

/// The 429 answer: a problem (`type` …/rate-limited) that also carries every field of
/// [`CheckResponse`], with the rate-limit headers and `Retry-After`.
pub fn denied(o: &Outcome) -> Problem {
    let (p, d) = o.decision();
    let mut problem = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "too many requests",
        format!(
            "rate limit `{}` exceeded; retry in {} ms",
            p.name, d.retry_after_ms
        ),
    );
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(CheckResponse::from(o)) {
        problem.extensions = fields;
    }
    problem.headers = headers(o)
        .into_iter()
        .filter_map(|(k, v)| Some((k?, v)))
        .collect();
    problem
}

/// Check a key against one or more policies, consuming `cost` only if all allow.
#[utoipa::path(post, path = "/v1/ratelimit/check", tag = "ratelimit", request_body = CheckRequest,
    responses((status = 200, body = CheckResponse, description = "allowed"),
        (status = 429, body = Problem, description = "denied: a problem carrying every CheckResponse field, with Retry-After"),
        (status = 400, body = Problem, description = "bad input, a policy named twice, or a cost over a policy's capacity"),
        (status = 404, body = Problem, description = "a policy does not exist")))]
async fn check(
    State(svc): State<Arc<RateLimitService>>,
    ApiJson(req): ApiJson<CheckRequest>,
) -> Result<Response, Problem> {
    let outcome = svc.check(&req.policies, &req.key, req.cost).await?;
    if !outcome.allowed {
        return Err(denied(&outcome));
    }
    let mut res = ApiJson(CheckResponse::from(&outcome)).into_response();
    put_headers(&outcome, res.headers_mut());
    Ok(res)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1000 independent checks (each atomic on its own).
    #[schema(min_items = 1, max_items = 1000)]
    pub checks: Vec<CheckRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One result per check, in order: a decision, or a problem for that check alone.
    pub results: Vec<BatchItem>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BatchItem {
    Decision(CheckResponse),
    Problem(Problem),
}

/// Check many keys in one call. Always 200; each item says allowed or not, or why it failed.
#[utoipa::path(post, path = "/v1/ratelimit/check/batch", tag = "ratelimit", request_body = BatchRequest,
    responses((status = 200, body = BatchResponse), (status = 400, body = Problem)))]
async fn check_batch(
    State(svc): State<Arc<RateLimitService>>,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<ApiJson<BatchResponse>, Problem> {
    if req.checks.is_empty() || req.checks.len() > MAX_BATCH {
        return Err(
            RateLimitError::field("checks", format!("give 1 to {MAX_BATCH} checks")).into(),
        );
    }
    let futures = req
        .checks
        .iter()
        .map(|c| svc.check(&c.policies, &c.key, c.cost));
    let results = futures_util::future::join_all(futures)
        .await
        .into_iter()
        .map(|r| match r {
            Ok(o) => BatchItem::Decision(CheckResponse::from(&o)),
            Err(e) => BatchItem::Problem(e.into()),
        })
        .collect();
    Ok(ApiJson(BatchResponse { results }))
}

/// A key's standing under a policy, without consuming anything.
#[utoipa::path(get, path = "/v1/ratelimit/{policy}/{key}", tag = "ratelimit",
    params(KeyPath),
    responses((status = 200, body = CheckResponse), (status = 404, body = Problem)))]
async fn peek(
    State(svc): State<Arc<RateLimitService>>,
    ApiPath(KeyPath { policy, key }): ApiPath<KeyPath>,
) -> Result<Response, Problem> {
    let outcome = svc.peek(&policy, &key).await?;
    let mut res = ApiJson(CheckResponse::from(&outcome)).into_response();
    put_headers(&outcome, res.headers_mut());
    Ok(res)
}

/// Forget a key's usage under a policy.
#[utoipa::path(delete, path = "/v1/ratelimit/{policy}/{key}", tag = "ratelimit",
    params(KeyPath),
    responses((status = 204, description = "forgotten"), (status = 404, body = Problem)))]
async fn reset(
    State(svc): State<Arc<RateLimitService>>,
    ApiPath(KeyPath { policy, key }): ApiPath<KeyPath>,
) -> Result<StatusCode, Problem> {
    svc.reset(&policy, &key).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub name: String,
    pub algorithm: String,
    pub limit: i64,
    pub window_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    pub failure_mode: FailureMode,
    /// `config` (mortar.toml, read-only here) or `api`.
    pub source: Source,
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        let s = p.spec();
        Self {
            name: p.name.clone(),
            algorithm: s.algorithm,
            limit: s.limit,
            window_ms: s.window_ms,
            burst: s.burst,
            failure_mode: s.failure_mode,
            source: p.source,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyList {
    pub items: Vec<PolicyView>,
    pub next_cursor: Option<String>,
}

/// Every policy, by name.
#[utoipa::path(get, path = "/v1/ratelimit/policies", tag = "ratelimit", responses((status = 200, body = PolicyList)))]
async fn list_policies(State(svc): State<Arc<RateLimitService>>) -> ApiJson<PolicyList> {
    let items = svc
        .policies()
        .iter()
        .map(|p| PolicyView::from(&**p))
        .collect();
    ApiJson(PolicyList {
        items,
        next_cursor: None,
    })
}

/// One policy.
#[utoipa::path(get, path = "/v1/ratelimit/policies/{name}", tag = "ratelimit", params(PolicyPath),
    responses((status = 200, body = PolicyView), (status = 404, body = Problem)))]
async fn get_policy(
    State(svc): State<Arc<RateLimitService>>,
    ApiPath(PolicyPath { name }): ApiPath<PolicyPath>,
) -> Result<ApiJson<PolicyView>, Problem> {
    Ok(ApiJson(PolicyView::from(&*svc.policy(&name)?)))
}

/// Create or replace a policy. 201 when created, 200 when replaced.
#[utoipa::path(put, path = "/v1/ratelimit/policies/{name}", tag = "ratelimit", params(PolicyPath),
    request_body = PolicySpec,
    responses((status = 201, body = PolicyView, description = "created"), (status = 200, body = PolicyView, description = "replaced"),
        (status = 400, body = Problem), (status = 409, body = Problem, description = "a config policy of that name exists")))]
async fn put_policy(
    State(svc): State<Arc<RateLimitService>>,
    ApiPath(PolicyPath { name }): ApiPath<PolicyPath>,
    ApiJson(spec): ApiJson<PolicySpec>,
) -> Result<(StatusCode, ApiJson<PolicyView>), Problem> {
    let (policy, created) = svc.put_policy(&name, &spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, ApiJson(PolicyView::from(&*policy))))
}

/// Delete a policy (config policies cannot be deleted here).
#[utoipa::path(delete, path = "/v1/ratelimit/policies/{name}", tag = "ratelimit", params(PolicyPath),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "a config policy cannot be deleted here")))]
async fn delete_policy(
    State(svc): State<Arc<RateLimitService>>,
    ApiPath(PolicyPath { name }): ApiPath<PolicyPath>,
) -> Result<StatusCode, Problem> {
    svc.delete_policy(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
