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

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};
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
pub fn finish(app: Router, max_body_bytes: usize, auth: Arc<Auth>) -> Router {
    app.fallback(fallback)
        .layer(middleware::from_fn_with_state(
            auth,
            crate::auth::middleware,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn(observe))
        .layer(CatchPanicLayer::custom(panic_response))
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

async fn observe(mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route: Arc<str> = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| Arc::from("unmatched"), |m| Arc::from(m.as_str()));
    let method = req.method().clone();
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_request_id, str::to_owned);
    let trace = TraceContext::from_headers(req.headers());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        method = %method,
        route = %route,
    );
    let mut trace = trace;
    if !span.is_disabled() {
        trace.attach(&span);
        span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    }
    req.extensions_mut().insert(trace);

    let in_flight = crate::metrics::in_flight();
    in_flight.increment(1.0);
    let mut res = match crate::deadline::from_headers(req.headers()) {
        Err(problem) => problem.into_response(),
        Ok(None) => next.run(req).instrument(span.clone()).await,
        Ok(Some(deadline)) => {
            let run =
                crate::deadline::scope(Some(deadline), next.run(req).instrument(span.clone()));
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
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&trace.traceparent()) {
        headers.insert(TRACEPARENT.clone(), v);
    }
    let elapsed = start.elapsed();
    crate::metrics::http_request(&route, &method, status).record(elapsed);
    if status.is_server_error() {
        tracing::warn!(parent: &span, status = status.as_u16(), elapsed_us = elapsed.as_micros() as u64, "request failed");
    } else {
        tracing::debug!(parent: &span, status = status.as_u16(), elapsed_us = elapsed.as_micros() as u64, "request served");
    }
    res
}

/// A ULID for a request. Unlike [`crate::ids::new_id`] it takes no lock (request ids need not be
/// strictly increasing), which keeps a global mutex off the hot path.
fn new_request_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    ulid::Ulid::from_parts(ms, fastrand::u128(..))
        .to_string()
        .to_ascii_lowercase()
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
