//! # mortar-resilience — circuit breaker, retry with budgets, timeouts with deadlines, bulkheads
//!
//! One implementation shared by the gateway, job push delivery, cache loaders and user code,
//! each policy both a plain async API and a tower layer ([`layer`]).
//!
//! * [`breaker::Breaker`] — closed / open / half-open plus forced-open and disabled; count- or
//!   time-based sliding window; trips on failure rate and/or slow-call rate after a minimum
//!   number of calls; half-open admits **exactly** `half_open_calls` concurrent probes; a
//!   classifier decides what a failure is (the HTTP layer: 5xx and transport errors, never 4xx);
//!   state changes are logged, exported as a metric and sent to listeners.
//! * [`retry::Retry`] — exponential backoff with full jitter, only retryable errors of
//!   idempotent operations, a retry budget (a percentage of recent requests plus a floor), never
//!   sleeping past the request deadline.
//! * [`timeout`] — per-call timeouts cut to the request deadline ([`mortar_core::deadline`]:
//!   in-process via the task context, across HTTP via `Mortar-Deadline`).
//! * [`bulkhead::Bulkhead`] — weighted permits, bounded FIFO wait queue with a timeout, immediate
//!   rejection when full; waiting is cancellable and fair.
//! * [`service::ResilienceService`] — named policies (from `mortar.toml`, or created on first
//!   use) and the `/v1/resilience` API ([`api`]) and CLI ([`cli`]).
//!
//! ## Limits
//!
//! Breakers and bulkheads are per node (like resilience4j, Envoy and Polly): in a cluster each
//! node judges the dependency from its own calls. Forcing a breaker through the API acts on
//! the node that receives the request.

pub mod api;
pub mod block;
pub mod breaker;
pub mod bulkhead;
pub mod cli;
pub mod config;
pub mod error;
pub mod layer;
pub mod metrics;
pub mod permits;
pub mod retry;
pub mod service;
pub mod shared;
pub mod store;
pub mod timeout;
pub mod window;

pub use breaker::{Breaker, BreakerConfig, BreakerError, State};
pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadError};
pub use config::ResilienceConfig;
pub use error::{PermitError, ResilienceError};
pub use retry::{Idempotency, Retry, RetryConfig};
pub use service::ResilienceService;
