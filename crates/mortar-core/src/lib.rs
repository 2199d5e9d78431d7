//! The Mortar kernel: what every block and the `mortar` binary share.
//!
//! * [`api`] — the API kit: `Page`/`PageParams` (one pagination rule) and `NameRule` (one name
//!   validator with one message).
//! * [`problem`] — RFC 9457 `application/problem+json` errors, the only error body Mortar sends.
//! * [`extract`] — axum extractors (`ApiJson`, `ApiPath`, `ApiQuery`) whose rejections are problems.
//! * [`config`] — the configuration loader (file → `MORTAR_…` environment → flags) and the
//!   documented `--print-config` renderer.
//! * [`storage`] — connections to the durable store (SQLite embedded, PostgreSQL in cluster mode)
//!   and Redis, per-block migrations, readiness checks.
//! * [`auth`] — the admin token and scoped API keys (stored hashed), and the middleware that
//!   enforces them on `/v1/*`.
//! * [`telemetry`] — structured logs, W3C trace context, OTLP export.
//! * [`deadline`] — request deadlines in the task context and the `Mortar-Deadline` header.
//! * [`http`] — the middleware stack every route runs behind and the hardened HTTP server
//!   (header-read and idle timeouts, connection limit, graceful shutdown).
//! * [`idempotency`] — `Idempotency-Key` for creating POSTs (stored response replayed, 422 on a
//!   reused key with another body, 409 while the first is in flight), shared across nodes.
//! * [`metrics`] — the Prometheus recorder and the `/metrics` renderer.
//! * [`client`] — the HTTP client every `mortar <block> <verb>` command uses.
//! * [`shutdown`] — the node's stopping signal that every wait watches, so a SIGTERM answers
//!   waiting clients at once.
//! * [`clock`] — injectable time, so engines never read the clock themselves; [`ids`] — ULIDs.
//!
//! Guarantees: every error response is problem+json; tokens are compared in constant time and
//! never logged; migrations are safe when several nodes start at once.

pub mod api;
pub mod auth;
pub mod block;
pub mod client;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod extract;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod metrics;
pub mod problem;
pub mod shutdown;
pub mod storage;
pub mod stream;
pub mod telemetry;
pub mod waiters;
pub mod watch;

pub use problem::{FieldError, Problem};

/// The version of Mortar, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
