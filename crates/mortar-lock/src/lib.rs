//! # mortar-lock — distributed locks and semaphores with leases and fencing tokens
//!
//! `POST /v1/locks/{name}/acquire {ttl_ms, owner, wait_ms, permits}` grants a **lease** (renew it
//! before `ttl_ms` runs out, or lose it) and a **fencing token**: a 64-bit number that strictly
//! increases on every grant of that name — across nodes, restarts and backends. Waiters
//! (`wait_ms > 0`) are served first come, first served. `permits: N` makes the name a counting
//! semaphore with N holders, each with its own lease and token.
//!
//! ## Why fencing tokens
//!
//! A lease alone cannot give mutual exclusion: a holder paused (GC, swap, a stopped VM) past
//! its TTL wakes up believing it still holds the lock while a new holder writes. The protected
//! resource must check the token:
//!
//! ```text
//! client A: acquire → token 33 … (paused 15 s; lease expires)
//! client B: acquire → token 34 → storage.write(key, value, token = 34)   // storage: max = 34
//! client A: wakes → storage.write(key, value, token = 33)                // 33 < 34: REJECTED
//! ```
//!
//! The storage keeps the highest token it has seen (per key or per lock) and rejects writes
//! with a smaller one (`UPDATE … SET v = $1, token = $2 WHERE token < $2`). The cluster test does
//! exactly this. Losing a lease is reported at once: renew answers 410 Gone, and the Rust
//! client's guard fires `lost()`; `mortar lock run` stops its command.
//!
//! ## Force-release (operators)
//!
//! `DELETE /v1/locks/{name}?reason=…` ends every holder's lease (`&lease_id=…`: only that one,
//! e.g. one holder of a semaphore) as if it had expired: the holder's renew and release answer
//! 410, the waiters in line get the freed permits at once, and the next grant's fencing token
//! is larger than the evicted ones — so a holder that still acts is fenced off. It needs the
//! admin token or an API key with `locks:secrets` (which also shows lease ids in lock status),
//! and is logged at WARN with the reason and the evicted owners.
//!
//! ## Backends and their safety model
//!
//! * **Embedded** (memory + SQLite): leases and waiters in memory; the fencing counter in SQLite,
//!   reserved in blocks written before use, so tokens keep increasing after a restart. A restart
//!   drops leases: holders learn it on their next renew (410).
//! * **PostgreSQL** (cluster mode; the safe choice): leases, waiters and counters in tables,
//!   every change to a name in one transaction under an advisory lock, time from the database's
//!   clock. Nothing acknowledged is lost by a node or database restart.
//!
//! A release wakes, at once, the waiters a freed permit can go to: on this node its first
//! `permits` waiters in line (not every waiter: with many, a wake-all herd starved the head of
//! the line), and on the PostgreSQL backend the same on every other node, over `NOTIFY
//! mortar_lock` ([`peers`]). Waiters also re-check every `lock.poll_ms` (default 10 ms; the only
//! cross-node path on the Redis backend, a safety net on PostgreSQL) and at the next lease
//! expiry. A waiter's poll on PostgreSQL reads the lock without taking it, so a crowd of
//! waiters does not queue on the advisory lock that grants need.
//!
//! **A waiter belongs to a live node.** On the cluster backends each node renews a liveness
//! lease (`lock_nodes` row / a field of the `lock:nodes` hash, in the backend's clock) every
//! third of `lock.node_lease_ms` (default 5 s), and every waiter carries its node's id. When a
//! node dies (kill -9, a lost host), its waiters leave the line within one node lease, instead
//! of holding their place until their own `wait_ms` runs out while the lock has no holder. A
//! live node whose lease lapsed (a stall longer than the lease) finds its waiter gone and
//! queues it again, at the back. On SIGTERM a waiter leaves the line and answers 503 with
//! `Retry-After` at once.

pub mod api;
pub mod bench;
pub mod block;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod peers;
pub mod service;
pub mod store;

pub use client::{AcquireOptions, LockClient, LockGuard};
pub use config::LockConfig;
pub use error::LockError;
pub use service::admin::ForceRelease;
pub use service::{AcquireRequest, LockService};
