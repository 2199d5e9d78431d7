//! `Idempotency-Key` for creating POSTs (draft-ietf-httpapi-idempotency-key-header), once for
//! every block: a route declares itself idempotent and gets the whole behaviour.
//!
//! A request with `Idempotency-Key: K` to a declared route is fingerprinted (method, path and
//! query, content type, body: SHA-256) and recorded under `(principal, path, K)` in
//! `core_idempotency` (SQLite embedded, PostgreSQL in cluster mode: shared by every node):
//!
//! * first time: the record is claimed (an insert that only one request can win, on any node),
//!   the handler runs, and its response is stored — unless it is one a retry should redo (5xx,
//!   429, 503), which frees the key instead;
//! * same key, same request, done: the stored response again, with `Idempotent-Replayed: true`
//!   (or, for a route whose handler is itself idempotent — [`Replay::Handler`] — the handler's
//!   own answer, so it can say what it found);
//! * same key, a different request: 422 problem;
//! * same key while the first is still in flight: 409 problem with `Retry-After`;
//! * keys expire after `http.idempotency_ttl_ms` (24 h by default); a claim whose request died
//!   with its node is free again after [`IN_FLIGHT_MS`].
//!
//! Keys are scoped by the caller (admin, open, or the API key's id) and the path, so two tenants
//! cannot see each other's responses. Limits: a key is 1 to 255 visible ASCII characters; the
//! stored body is the response as sent (bounded by what the handler sends).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::clock::Clock;
use crate::problem::Problem;
use crate::storage::Durable;
use crate::with_pool;

/// The request header.
pub static HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a replayed response.
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// How long a claim stays in flight before another request may take the key over (the first
/// request's node died, or it hung past any sane deadline).
pub const IN_FLIGHT_MS: u64 = 60_000;

/// How a completed key is answered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// The stored response (the default for creating POSTs).
    Stored,
    /// The handler runs again: for routes that deduplicate by themselves and say so in their
    /// answer (jobs' `duplicate: true`). The 422 and 409 rules still apply.
    Handler,
}

/// A route that honours `Idempotency-Key`.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// The route's path template, as axum matched it (`/v1/jobs`).
    pub path: &'static str,
    pub replay: Replay,
}

/// The idempotency records of one node's durable store.
#[derive(Clone)]
pub struct Idempotency {
    durable: Durable,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    claims: Arc<AtomicU64>,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

/// What a claim found.
enum Claim {
    Won,
    InFlight,
    Mismatch,
    Done(Stored),
}

struct Stored {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

type Row = (String, i32, String, Vec<u8>, i64, i64);

impl Idempotency {
    pub fn new(durable: Durable, clock: Arc<dyn Clock>, ttl_ms: u64) -> Self {
        Self {
            durable,
            clock,
            ttl_ms,
            claims: Arc::default(),
        }
    }

    /// `router` with `Idempotency-Key` honoured on `routes` (other routes, and requests
    /// without the header, pass through untouched).
    pub fn on(
        &self,
        router: utoipa_axum::router::OpenApiRouter,
        routes: &'static [Route],
    ) -> utoipa_axum::router::OpenApiRouter {
        router.layer(axum::middleware::from_fn_with_state(
            (self.clone(), routes),
            middleware,
        ))
    }

    async fn handle(&self, route: Route, req: Request, next: Next) -> Response {
        match self.try_handle(route, req, next).await {
            Ok(r) => r,
            Err(p) => p.into_response(),
        }
    }

    async fn try_handle(
        &self,
        route: Route,
        req: Request,
        next: Next,
    ) -> Result<Response, Problem> {
        let key = parse_key(req.headers())?;
        let principal = match req.extensions().get::<Principal>() {
            Some(Principal::Key(k)) => format!("key:{}", k.id),
            Some(Principal::Admin) => "admin".to_owned(),
            Some(Principal::Open) | None => "open".to_owned(),
        };
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|e| body_problem(&e))?;
        let fingerprint = fingerprint(&parts, &body);
        let path = parts.uri.path().to_owned();
        let id = (principal.as_str(), path.as_str(), key.as_str());
        let replayed = match self.claim(id, &fingerprint).await? {
            Claim::Won => false,
            Claim::Mismatch => {
                return Err(Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key-reused",
                    "idempotency key reused",
                    "this Idempotency-Key was used with a different request; use a new key for a new request",
                ));
            }
            Claim::InFlight => {
                return Err(Problem::new(
                    StatusCode::CONFLICT,
                    "idempotency-key-in-flight",
                    "request in flight",
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                )
                .with_retry_after(1));
            }
            Claim::Done(stored) if route.replay == Replay::Stored => {
                return Ok(stored.into_response());
            }
            Claim::Done(_) => true,
        };
        let mut guard = Release {
            store: self.clone(),
            id: (principal.clone(), path.clone(), key.clone()),
            armed: !replayed,
        };
        let res = next.run(Request::from_parts(parts, Body::from(body))).await;
        let (mut parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        if replayed {
            parts
                .headers
                .insert(&REPLAYED, HeaderValue::from_static("true"));
        } else if retryable(parts.status) {
            // Left to `guard`: the key is freed so that a retry does the work.
        } else {
            guard.armed = false;
            self.store(id, parts.status.as_u16(), &parts.headers, &body)
                .await?;
        }
        Ok(Response::from_parts(parts, Body::from(body)))
    }

    /// Claims `id` for a request with `fingerprint`, or says what holds it.
    async fn claim(&self, id: (&str, &str, &str), fingerprint: &str) -> Result<Claim, Problem> {
        let now = self.clock.now_ms() as i64;
        if self
            .claims
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(256)
        {
            self.prune(now).await?;
        }
        for _ in 0..3 {
            let insert = "INSERT INTO core_idempotency (principal, path, key, fingerprint, status, headers, body, locked_until_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, 0, '', $5, $6, $7) ON CONFLICT DO NOTHING";
            let won = with_pool!(&self.durable, pool => sqlx::query(insert)
                .bind(id.0)
                .bind(id.1)
                .bind(id.2)
                .bind(fingerprint)
                .bind(Vec::<u8>::new())
                .bind(now + IN_FLIGHT_MS as i64)
                .bind(now + self.ttl_ms as i64)
                .execute(pool)
                .await
                .map_err(self.failed())?
                .rows_affected())
                == 1;
            if won {
                return Ok(Claim::Won);
            }
            let select = "SELECT fingerprint, status, headers, body, locked_until_ms, expires_at_ms \
                 FROM core_idempotency WHERE principal = $1 AND path = $2 AND key = $3";
            let row: Option<Row> = with_pool!(&self.durable, pool => sqlx::query_as(select)
                .bind(id.0)
                .bind(id.1)
                .bind(id.2)
                .fetch_optional(pool)
                .await
                .map_err(self.failed())?);
            let Some((stored_print, status, headers, body, locked_until, expires)) = row else {
                continue; // freed meanwhile: claim again
            };
            let abandoned = status == 0 && locked_until <= now;
            if expires <= now || abandoned {
                // Take over an expired key or a dead request's claim: delete exactly what was
                // read, then claim again (a concurrent taker makes one of us lose the insert).
                let delete = "DELETE FROM core_idempotency WHERE principal = $1 AND path = $2 AND key = $3 \
                     AND expires_at_ms = $4 AND locked_until_ms = $5 AND status = $6";
                with_pool!(&self.durable, pool => sqlx::query(delete)
                    .bind(id.0)
                    .bind(id.1)
                    .bind(id.2)
                    .bind(expires)
                    .bind(locked_until)
                    .bind(status)
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(self.failed())?);
                continue;
            }
            if stored_print != fingerprint {
                return Ok(Claim::Mismatch);
            }
            if status == 0 {
                return Ok(Claim::InFlight);
            }
            return Ok(Claim::Done(Stored {
                status: status as u16,
                headers,
                body,
            }));
        }
        Ok(Claim::InFlight)
    }

    async fn store(
        &self,
        id: (&str, &str, &str),
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Problem> {
        let kept: serde_json::Map<String, serde_json::Value> = headers
            .iter()
            .filter(|(name, _)| replayable(name))
            .filter_map(|(name, v)| Some((name.to_string(), v.to_str().ok()?.into())))
            .collect();
        let update = "UPDATE core_idempotency SET status = $4, headers = $5, body = $6 \
             WHERE principal = $1 AND path = $2 AND key = $3";
        with_pool!(&self.durable, pool => sqlx::query(update)
            .bind(id.0)
            .bind(id.1)
            .bind(id.2)
            .bind(i32::from(status))
            .bind(serde_json::Value::Object(kept).to_string())
            .bind(body)
            .execute(pool)
            .await
            .map(drop)
            .map_err(self.failed())?);
        Ok(())
    }

    async fn release(&self, id: (&str, &str, &str)) -> Result<(), Problem> {
        let delete = "DELETE FROM core_idempotency WHERE principal = $1 AND path = $2 AND key = $3 AND status = 0";
        with_pool!(&self.durable, pool => sqlx::query(delete)
            .bind(id.0)
            .bind(id.1)
            .bind(id.2)
            .execute(pool)
            .await
            .map(drop)
            .map_err(self.failed())?);
        Ok(())
    }

    async fn prune(&self, now: i64) -> Result<(), Problem> {
        let delete = "DELETE FROM core_idempotency WHERE expires_at_ms <= $1";
        with_pool!(&self.durable, pool => sqlx::query(delete)
            .bind(now)
            .execute(pool)
            .await
            .map(drop)
            .map_err(self.failed())?);
        Ok(())
    }

    fn failed(&self) -> impl Fn(sqlx::Error) -> Problem + '_ {
        move |e| {
            let dependency = self.durable.failed("idempotency", &e);
            Problem::unavailable(
                dependency,
                format!("{dependency} did not answer; retry shortly"),
            )
        }
    }
}

async fn middleware(
    axum::extract::State((this, routes)): axum::extract::State<(Idempotency, &'static [Route])>,
    req: Request,
    next: Next,
) -> Response {
    if !req.headers().contains_key(&HEADER) {
        return next.run(req).await;
    }
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let route = routes
        .iter()
        .find(|r| Some(r.path) == matched && r.method == req.method().as_str())
        .copied();
    match route {
        Some(route) => this.handle(route, req, next).await,
        None => next.run(req).await,
    }
}

/// Frees a claim whose request did not finish with a storable response (an error a retry
/// should redo, a panic, a client gone mid-request).
struct Release {
    store: Idempotency,
    id: (String, String, String),
    armed: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, id) = (self.store.clone(), std::mem::take(&mut self.id));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = store.release((&id.0, &id.1, &id.2)).await;
            });
        }
    }
}

impl IntoResponse for Stored {
    fn into_response(self) -> Response {
        let mut res = Response::new(Body::from(self.body));
        *res.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        if let Ok(serde_json::Value::Object(h)) = serde_json::from_str(&self.headers) {
            for (name, v) in h {
                if let (Ok(name), Some(Ok(v))) = (
                    HeaderName::try_from(name),
                    v.as_str().map(HeaderValue::from_str),
                ) {
                    res.headers_mut().insert(name, v);
                }
            }
        }
        res.headers_mut()
            .insert(&REPLAYED, HeaderValue::from_static("true"));
        res
    }
}

/// The key: 1 to 255 visible ASCII characters (a structured-field string's content).
fn parse_key(headers: &HeaderMap) -> Result<String, Problem> {
    let raw = headers
        .get(&HEADER)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    // The draft sends it as a structured-field string ("…"); a bare token is accepted too.
    let raw = raw
        .strip_prefix(b"\"")
        .and_then(|r| r.strip_suffix(b"\""))
        .unwrap_or(raw);
    if raw.is_empty() || raw.len() > 255 || !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Problem::bad_request(
            "the Idempotency-Key header must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

fn fingerprint(parts: &http::request::Parts, body: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [
        parts.method.as_str().as_bytes(),
        parts
            .uri
            .path_and_query()
            .map_or(b"" as &[u8], |p| p.as_str().as_bytes()),
        parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map_or(b"" as &[u8], HeaderValue::as_bytes),
        body,
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    crate::auth::keys::hex(&h.finalize())
}

/// Responses a retry should redo rather than see again.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// Response headers worth replaying (not per-request ones).
fn replayable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "date"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "x-request-id"
            | "traceparent"
            | "tracestate"
            | "server"
    )
}

fn body_problem(e: &axum::Error) -> Problem {
    let too_large = std::error::Error::source(e)
        .is_some_and(<dyn std::error::Error>::is::<http_body_util::LengthLimitError>)
        || e.to_string().contains("length limit");
    if too_large {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "request body too large",
            "the request body is larger than http.max_body_bytes",
        )
    } else {
        Problem::bad_request("the request body could not be read")
    }
}
