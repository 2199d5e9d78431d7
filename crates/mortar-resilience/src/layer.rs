//! The policies as tower layers for HTTP services (axum `Request` → `Response`): the gateway,
//! push delivery and user services stack them. Rejections are problem+json:
//! breaker open → 503 + `Retry-After`, bulkhead full → 503 + `Retry-After`, timeout → 504.
//! A response counts as a failure for the breaker when it is a 5xx (never a 4xx).
//! `RetryLayer` works on any service whose requests can be cloned.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http::StatusCode;
use mortar_core::Problem;

use crate::breaker::{Breaker, retry_after_secs};
use crate::bulkhead::{Bulkhead, BulkheadError};
use crate::retry::{Idempotency, Retry};

/// Takes the service that was polled ready, leaving a clone in its place.
fn take<S: Clone>(s: &mut S) -> S {
    let clone = s.clone();
    std::mem::replace(s, clone)
}

macro_rules! http_layer {
    ($layer:ident, $svc:ident, $field:ident: $ty:ty) => {
        #[derive(Clone, Debug)]
        pub struct $layer {
            $field: $ty,
        }

        impl $layer {
            pub fn new($field: $ty) -> Self {
                Self { $field }
            }
        }

        impl<S> tower::Layer<S> for $layer {
            type Service = $svc<S>;

            fn layer(&self, inner: S) -> $svc<S> {
                $svc {
                    inner,
                    $field: self.$field.clone(),
                }
            }
        }

        #[derive(Clone, Debug)]
        pub struct $svc<S> {
            inner: S,
            $field: $ty,
        }
    };
}

/// Counts a response as a failure: any 5xx (which includes the 502/504 a proxy or a
/// `TimeoutLayer` below produces for connection errors and timeouts), never a 4xx.
pub fn server_error(res: &Response) -> bool {
    res.status().is_server_error()
}

/// A circuit breaker around an HTTP service; `is_failure` (default [`server_error`]) decides.
#[derive(Clone, Debug)]
pub struct BreakerLayer {
    breaker: Arc<Breaker>,
    is_failure: fn(&Response) -> bool,
}

impl BreakerLayer {
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self {
            breaker,
            is_failure: server_error,
        }
    }

    /// Uses another failure predicate (e.g. also count 429 from an overloaded dependency).
    #[must_use]
    pub fn with_classifier(mut self, is_failure: fn(&Response) -> bool) -> Self {
        self.is_failure = is_failure;
        self
    }
}

impl<S> tower::Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;

    fn layer(&self, inner: S) -> BreakerService<S> {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
            is_failure: self.is_failure,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Arc<Breaker>,
    is_failure: fn(&Response) -> bool,
}

http_layer!(BulkheadLayer, BulkheadService, bulkhead: Arc<Bulkhead>);
http_layer!(TimeoutLayer, TimeoutService, timeout: Duration);

impl<S> tower::Service<Request> for BreakerService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let mut inner = take(&mut self.inner);
        let (breaker, is_failure) = (self.breaker.clone(), self.is_failure);
        Box::pin(async move {
            let permit = match breaker.try_acquire() {
                Ok(p) => p,
                Err(r) => {
                    let problem = Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "circuit-open",
                        "circuit open",
                        format!(
                            "circuit breaker `{}` is {}; the dependency is failing",
                            breaker.name(),
                            r.state.as_str()
                        ),
                    )
                    .with_extension("breaker", breaker.name())
                    .with_retry_after(retry_after_secs(&r));
                    return Ok(problem.into_response());
                }
            };
            let res = inner.call(req).await?;
            permit.finish(is_failure(&res));
            Ok(res)
        })
    }
}

impl<S> tower::Service<Request> for BulkheadService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let mut inner = take(&mut self.inner);
        let bulkhead = self.bulkhead.clone();
        Box::pin(async move {
            match bulkhead.acquire(1).await {
                Ok(_permit) => inner.call(req).await,
                Err(
                    e @ (BulkheadError::Full
                    | BulkheadError::QueueTimeout
                    | BulkheadError::TooHeavy(_)),
                ) => {
                    let problem = Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "bulkhead-full",
                        "bulkhead full",
                        format!("bulkhead `{}`: {e}", bulkhead.name()),
                    )
                    .with_extension("bulkhead", bulkhead.name())
                    .with_retry_after(1);
                    Ok(problem.into_response())
                }
            }
        })
    }
}

impl<S> tower::Service<Request> for TimeoutService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let mut inner = take(&mut self.inner);
        let timeout = self.timeout;
        Box::pin(async move {
            match crate::timeout::call(Some(timeout), inner.call(req)).await {
                Ok(res) => res,
                Err(e) => Ok(Problem::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "timeout",
                    format!("the call {e}"),
                )
                .into_response()),
            }
        })
    }
}

/// Retries calls of a service whose requests can be cloned.
#[derive(Clone)]
pub struct RetryLayer<Req, Res, E> {
    retry: Arc<Retry>,
    idempotent: fn(&Req) -> bool,
    retryable: fn(&Result<Res, E>) -> bool,
}

impl<Req, Res, E> std::fmt::Debug for RetryLayer<Req, Res, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("retry", &self.retry.name())
            .finish_non_exhaustive()
    }
}

impl<Req, Res, E> RetryLayer<Req, Res, E> {
    /// `idempotent` says whether a request may be sent twice; `retryable` whether an outcome
    /// is worth another attempt.
    pub fn new(
        retry: Arc<Retry>,
        idempotent: fn(&Req) -> bool,
        retryable: fn(&Result<Res, E>) -> bool,
    ) -> Self {
        Self {
            retry,
            idempotent,
            retryable,
        }
    }
}

impl<S: Clone, Req, Res, E> tower::Layer<S> for RetryLayer<Req, Res, E> {
    type Service = RetryService<S, Req, Res, E>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            retry: self.retry.clone(),
            idempotent: self.idempotent,
            retryable: self.retryable,
        }
    }
}

pub struct RetryService<S, Req, Res, E> {
    inner: S,
    retry: Arc<Retry>,
    idempotent: fn(&Req) -> bool,
    retryable: fn(&Result<Res, E>) -> bool,
}

impl<S: Clone, Req, Res, E> Clone for RetryService<S, Req, Res, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            retry: self.retry.clone(),
            idempotent: self.idempotent,
            retryable: self.retryable,
        }
    }
}

impl<S, Req, Res, E> tower::Service<Req> for RetryService<S, Req, Res, E>
where
    S: tower::Service<Req, Response = Res, Error = E> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Clone + Send + 'static,
    Res: Send + 'static,
    E: Send + 'static,
{
    type Response = Res;
    type Error = E;
    type Future = BoxFuture<'static, Result<Res, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let inner = take(&mut self.inner);
        let (retry, retryable) = (self.retry.clone(), self.retryable);
        let idempotency = if (self.idempotent)(&req) {
            Idempotency::Idempotent
        } else {
            Idempotency::NotIdempotent
        };
        Box::pin(async move {
            let mut attempt = 1;
            loop {
                let mut svc = inner.clone();
                let out = tower::ServiceExt::ready(&mut svc).await;
                let out = match out {
                    Ok(svc) => svc.call(req.clone()).await,
                    Err(e) => Err(e),
                };
                match retry.may_retry(attempt, idempotency, retryable(&out)) {
                    Ok(delay) => {
                        crate::metrics::retry(retry.name());
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    Err(crate::retry::GiveUp::Budget) => {
                        crate::metrics::budget_exhausted(retry.name());
                        return out;
                    }
                    Err(_) => return out,
                }
            }
        })
    }
}
