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
//! * [`service::ResilienceService`] — named policies: breakers from `mortar.toml` (read-only
//!   through the API), from the API (stored, on every node), or asked for by a block of the
//!   node; the `/v1/resilience` API ([`api`]) and CLI ([`cli`]).
//!
//! ## Breakers for any language
//!
//! `PUT /v1/resilience/breakers/{name}` creates or updates a breaker with the fields of a
//! `[resilience.breakers.<name>]` table (201 / 200; every bad field named in a 400; 409 for a
//! `mortar.toml` breaker); `DELETE` removes it. Definitions live in the durable store
//! ([`store`]: SQLite embedded, PostgreSQL in a cluster), survive restarts, and reach every node
//! of a cluster within `resilience.refresh_ms` (1 s). An update keeps the breaker's state: an
//! open breaker stays open (its wait now the new `wait_open_ms` from when it opened), calls
//! already admitted still count, the window keeps its counts unless its kind or size changed,
//! and the new thresholds judge from the next recorded call.
//!
//! A service in any language calls through a breaker with `POST …/{name}/acquire` — 200 with an
//! opaque `permit`, or 503 `circuit-open` with `Retry-After` (seconds until an open breaker may
//! probe; 1 when forced open or when every half-open probe is taken) — then makes its call and
//! `POST …/{name}/record {permit, outcome: success|failure|cancelled, duration_ms}`.
//! `duration_ms` at or over `slow_call_ms` counts as slow. A permit records once (409 after);
//! one not recorded within `slow_call_ms` + 60 s expires (410) and counts as nothing — as a
//! dropped in-process [`breaker::Permit`] does — so a caller that dies never holds a half-open
//! probe slot for longer than that, and never trips the breaker by dying. Half-open admits
//! exactly `half_open_calls` permits at once, whichever way they arrive. At most
//! [`permits::MAX_IN_FLIGHT`] permits per breaker may wait for their record (then 429).
//!
//! ## Per node, or shared
//!
//! A breaker's *state* is per node by default (like resilience4j, Envoy and Polly): each node
//! judges the dependency from its own calls. Deciding needs no network round trip on the hot
//! path, and one node's bad link (a broken route, a saturated NIC) opens only that node's
//! breaker instead of cutting the whole cluster off a dependency that the others reach fine.
//! Forcing or resetting a per-node breaker through the API acts on the node that receives the
//! request, and a permit is recorded on the node that issued it (409 elsewhere).
//!
//! `shared = true` (cluster mode with Redis only; refused otherwise) keeps the state, the window
//! and the permits in Redis ([`shared`]: one Lua script per call, the engine's rules, tested
//! against it step by step), so every node sees one breaker: any node records any permit, and
//! steering acts everywhere. The price is a Redis round trip on every acquire and record. When
//! Redis does not answer within `redis_timeout_ms`, `acquire` falls back to the node's own
//! breaker (`degraded: true` in the answer, and in the breaker's status); recording a shared
//! permit then answers 503 naming Redis. Sharing applies to HTTP permits: blocks of the node
//! calling through a breaker in-process (job push delivery, cache origins) use the node's own.

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
