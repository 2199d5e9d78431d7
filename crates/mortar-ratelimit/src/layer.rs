//! `RateLimitLayer`: rate limiting as tower middleware for Rust services (and the gateway).
//!
//! ```ignore
//! let layer = RateLimitLayer::new(svc, &["per-user"], |req: &Request| {
//!     req.headers().get("x-user-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
//! })?;
//! let app = Router::new().route("/search", get(search)).layer(layer);
//! ```
//!
//! Allowed requests pass with the rate-limit headers added; denied ones get 429 problem+json
//! with the same headers and `Retry-After`. Requests the extractor gives no key for pass
//! unlimited.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;

use crate::error::RateLimitError;
use crate::policy::Policy;
use crate::service::RateLimitService;

/// Derives the rate-limit key of a request (`None`: not limited).
pub type KeyFn = Arc<dyn Fn(&Request) -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct RateLimitLayer {
    svc: Arc<RateLimitService>,
    names: Arc<[String]>,
    key: KeyFn,
}

impl std::fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("policies", &self.names)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// A layer checking `policies` (which must exist) for the key `key` extracts.
    pub fn new(
        svc: Arc<RateLimitService>,
        policies: &[&str],
        key: impl Fn(&Request) -> Option<String> + Send + Sync + 'static,
    ) -> Result<Self, RateLimitError> {
        for p in policies {
            svc.policy(p)?;
        }
        Ok(Self {
            svc,
            names: policies.iter().map(|s| (*s).to_owned()).collect(),
            key: Arc::new(key),
        })
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S> std::fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.layer.fmt(f)
    }
}

impl<S> tower::Service<Request> for RateLimit<S>
where
    S: tower::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // The inner service that was polled ready is the one we call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let Some(key) = (layer.key)(&req) else {
                return inner.call(req).await;
            };
            // Resolve on every call so policy changes apply; a deleted policy fails open.
            let policies: Vec<Arc<Policy>> = layer
                .names
                .iter()
                .filter_map(|n| layer.svc.policy(n).ok())
                .collect();
            if policies.is_empty() {
                return inner.call(req).await;
            }
            let outcome = layer.svc.check_resolved(&policies, &key, 1).await;
            if outcome.allowed {
                let mut res = inner.call(req).await?;
                crate::api::put_headers(&outcome, res.headers_mut());
                return Ok(res);
            }
            Ok(crate::api::denied(&outcome).into_response())
        })
    }
}
