//! # mortar-ratelimit — a distributed rate limiter
//!
//! Named **policies** (algorithm, `limit` per `window_ms`, `burst`, failure mode) applied to
//! caller-chosen **keys** (`user:42`, `ip:10.0.0.1`, `user:42:endpoint:/search`): per-user and
//! per-endpoint limits are both just keys.
//!
//! ## Algorithms
//!
//! | name | accuracy | memory per key | bursts |
//! |---|---|---|---|
//! | `token_bucket` (GCRA) | exact rate; any interval `d` admits ≤ `burst + d × limit / window` | one number | up to `burst` (default `limit`) at once; starts full |
//! | `sliding_log` | exact: ≤ `limit` in **any** window of `window_ms` | one entry per admitted request in the window | up to `limit` at once |
//! | `sliding_counter` | ≤ `limit` per aligned window and < `2 × limit` in any window; exact for evenly spread traffic | two counters | up to `limit` at once |
//! | `fixed_window` | ≤ `limit` per aligned window; up to `2 × limit` across a boundary | one counter | up to `limit` at once |
//!
//! ## Guarantees
//!
//! * A check of several policies is **atomic**: units are taken from every policy only if every
//!   policy allows (no partial consumption), on every backend, under any concurrency.
//! * Memory backend (embedded): a lock per (policy, key), found through a per-thread cache
//!   (or 64 sharded tables), one hash per check, no global lock, no allocation for a known
//!   key, threads on distinct keys do not slow each other; time read from the CPU's counter
//!   (`FastClock`, monotonic) rather than the system clock. Redis backend (cluster): one
//!   round trip per check, a Lua script, Redis's clock (nodes with skewed clocks agree), keys that
//!   expire by themselves.
//! * A node remembers keys that are over their limit until they may pass again and denies them
//!   without a Redis round trip (the local short-circuit).
//! * Redis trouble never takes the API down: each Redis call has a deadline (default 50 ms);
//!   when it fails, each policy's `failure_mode` (`fail_open` / `fail_closed`) decides, a metric
//!   and a warning say so, and service recovers by itself when Redis returns.
//!
//! ## Limits
//!
//! * Redis without persistence forgets counters on restart: keys start over with a full quota.
//! * Policies changed through the API reach other nodes within `policy_refresh_ms` (1 s).
//! * `limit` ≤ 10⁹, `window_ms` ≤ one year, keys 1 to 4095 bytes.
//!
//! ## API
//!
//! [`RateLimitService`] (what HTTP, the CLI, the tower layer and other blocks call),
//! [`api::router`], [`layer::RateLimitLayer`], [`store::RateLimitStore`] (backends).

pub mod api;
pub mod block;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod layer;
pub mod policy;
pub mod service;
pub mod store;

pub use config::RateLimitConfig;
pub use engine::{Algorithm, Decision, Limit};
pub use error::RateLimitError;
pub use policy::{FailureMode, Policy};
pub use service::{Outcome, RateLimitService};
