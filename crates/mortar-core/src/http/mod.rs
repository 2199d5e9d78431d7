//! The middleware stack every route runs behind, and the hardened server ([`server`]).
//!
//! [`finish`] wraps an application router with, from the outside in:
//! 1. panic catching → 500 problem (and an error log), never a dropped connection;
//! 2. observation: request id (`x-request-id`, honoured or minted), W3C trace context, the
//!    request span every log line inherits, metrics by route template, and a safety net that
//!    turns any non-problem error response into problem+json (so no plain-text rejection leaks);
//!    It also applies the caller's `Mortar-Deadline` (504 when it passes; see [`crate::deadline`]);
//! 3. the body limit (413 via the extractors);
//! 4. authentication and authorization (see [`crate::auth`]).
//!
//! Unknown routes get a 404 problem; wrong methods a 405 problem listing the allowed ones.

pub mod server;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, StatusCode, header};
use tower::{Layer, Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::auth::Auth;
use crate::problem::{PROBLEM_JSON, Problem};
use crate::telemetry::TraceContext;

pub use server::{Listeners, serve};

/// The request id header, read from callers and set on every response.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Wraps `app` in the standard stack (see the module docs).
///
/// The stack is one layer: axum boxes each `Router::layer` around every route and clones it per
/// request, so the pieces are composed statically here and observation and auth are one
/// hand-written service (not `from_fn`, which boxes and clones the rest of the stack per call).
pub fn finish(app: Router, max_body_bytes: usize, auth: Arc<Auth>) -> Router {
    app.fallback(fallback).layer(
        ServiceBuilder::new()
            .layer(CatchPanicLayer::custom(panic_response))
            .layer(StackLayer { auth })
            .layer(DefaultBodyLimit::max(max_body_bytes)),
    )
}

async fn fallback(req: Request) -> Problem {
    Problem::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

#[allow(clippy::needless_pass_by_value)] // the signature CatchPanicLayer wants
fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let msg = err
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %msg, "handler panicked");
    Problem::internal().into_response()
}

/// The access log's target: one INFO line per request served (`log.level =
/// "info,mortar::access=off"` turns it off); 5xx answers are WARN lines of the request span.
pub const ACCESS: &str = "mortar::access";

/// Routes polled by machines, left out of the access log.
const QUIET: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// Observation (request id, trace context, span, metrics, deadline, the problem safety net)
/// and authentication, as one service.
#[derive(Clone)]
struct StackLayer {
    auth: Arc<Auth>,
}

impl<S> Layer<S> for StackLayer {
    type Service = Stack<S>;

    fn layer(&self, inner: S) -> Stack<S> {
        Stack {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
struct Stack<S> {
    inner: S,
    auth: Arc<Auth>,
}

impl<S> Service<Request> for Stack<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let start = Instant::now();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let method = req.method().clone();
        // The access line's path, only when it will be written.
        let access_path = (tracing::enabled!(target: ACCESS, tracing::Level::INFO)
            && !route.as_ref().is_some_and(|r| QUIET.contains(&r.as_str())))
        .then(|| req.uri().path().to_owned());
        let request_id = req
            .headers()
            .get(&REQUEST_ID)
            .filter(|v| {
                let b = v.as_bytes();
                !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
            })
            .cloned()
            .unwrap_or_else(new_request_id);
        let mut trace = TraceContext::from_headers(req.headers());
        let span = tracing::info_span!(
            "request",
            request_id = request_id.to_str().unwrap_or_default(),
            trace_id = tracing::field::Empty,
            method = %method,
            route = route.as_ref().map_or("unmatched", MatchedPath::as_str),
        );
        if !span.is_disabled() {
            trace.attach(&span);
            span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
        }
        req.extensions_mut().insert(trace);
        // The inner service was polled ready for this call: call it now unless something must
        // answer first (for auth, the ready one moves into the future and a clone stays here).
        let (then, deadline) = match crate::deadline::from_headers(req.headers()) {
            Err(problem) => (Then::Answer(problem.into_response()), None),
            Ok(deadline) if self.auth.guards(&req) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                (Then::Admit(self.auth.clone(), inner, req), deadline)
            }
            Ok(deadline) => (Then::Run(self.inner.call(req)), deadline),
        };
        let in_flight = crate::metrics::in_flight();
        in_flight.increment(1.0);
        Box::pin(async move {
            let run = async move {
                let done = match then {
                    Then::Answer(res) => return res,
                    Then::Run(pending) => pending.await,
                    Then::Admit(auth, mut inner, mut req) => {
                        if let Err(denied) = auth.admit(&mut req).await {
                            return denied;
                        }
                        inner.call(req).await
                    }
                };
                match done {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            };
            let mut res = match deadline {
                None => run.instrument(span.clone()).await,
                Some(deadline) => {
                    let run = crate::deadline::scope(Some(deadline), run.instrument(span.clone()));
                    match tokio::time::timeout_at(deadline, run).await {
                        Ok(res) => res,
                        Err(_) => crate::deadline::exceeded().into_response(),
                    }
                }
            };
            in_flight.decrement(1.0);
            if res.status().as_u16() >= 400 && !is_problem(&res) {
                res = problemize(res, &method).await;
            }
            let status = res.status();
            let headers = res.headers_mut();
            headers.insert(REQUEST_ID.clone(), request_id);
            headers.insert(TRACEPARENT.clone(), trace.traceparent_header());
            let elapsed = start.elapsed();
            crate::metrics::record_http(
                route.as_ref().map_or("unmatched", MatchedPath::as_str),
                &method,
                status,
                elapsed,
            );
            if status.is_server_error() {
                tracing::warn!(parent: &span, status = status.as_u16(), elapsed_us = elapsed.as_micros() as u64, "request failed");
            } else if let Some(path) = access_path {
                tracing::info!(target: ACCESS, parent: &span, path, status = status.as_u16(), elapsed_us = elapsed.as_micros() as u64, "request served");
            }
            Ok(res)
        })
    }
}

/// What a request does once observed.
enum Then<S, F> {
    /// Answer at once (a bad `Mortar-Deadline`).
    Answer(Response),
    /// The route, already called.
    Run(F),
    /// Authenticate, then call the route.
    Admit(Arc<Auth>, S, Request),
}

/// A ULID for a request, lower case. Unlike [`crate::ids::new_id`] it takes no lock (request ids
/// need not be strictly increasing), which keeps a global mutex off the hot path.
fn new_request_id() -> HeaderValue {
    let ms = crate::clock::unix_time().as_millis() as u64;
    let mut buf = [0u8; ulid::ULID_LEN];
    let text = ulid::Ulid::from_parts(ms, fastrand::u128(..)).array_to_str(&mut buf);
    text.make_ascii_lowercase();
    HeaderValue::from_str(text).expect("a ULID is a valid header value")
}

fn is_problem(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes())
}

/// Rewrites an error response that is not problem+json (axum's plain-text rejections, a bare
/// 405) into one, keeping its status and headers and using a short text body as the detail.
async fn problemize(res: Response, method: &http::Method) -> Response {
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|s| !s.trim().is_empty() && !s.trim_start().starts_with(['{', '<']));
    let detail = match (parts.status, text) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            format!("this route does not accept {method}; the Allow header lists what it does")
        }
        (StatusCode::PAYLOAD_TOO_LARGE, _) => crate::extract::payload_too_large().detail,
        (_, Some(text)) => text.trim().to_owned(),
        (status, None) => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    };
    let problem = Problem::from_status(parts.status, detail);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut fresh = problem.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && !fresh.headers().contains_key(name) {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    let (new_parts, body) = fresh.into_parts();
    Response::from_parts(new_parts, Body::new(body))
}
