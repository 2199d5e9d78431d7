//! # mortar-jobs — a durable job queue with workers in any language
//!
//! Jobs `{queue, kind, payload, priority, delay_ms | run_at, max_attempts, backoff, timeout_ms,
//! unique_key, unique_while, unique_for_ms, tags}` are durable in the node's store before
//! `POST /v1/jobs` answers (SQLite in embedded mode, PostgreSQL in cluster mode).
//!
//! ## Guarantees
//!
//! - **Ordering**: lower `priority` first (0 to 100, default 10), then earlier `run_at`, then
//!   enqueue order (ULIDs) — FIFO within equal priority.
//! - **At-least-once with fencing**: a worker leases jobs (`POST /v1/jobs/lease`, long-poll);
//!   a lease lasts `jobs.lease_ms` (30 s, or the job's `timeout_ms` if shorter) and
//!   heartbeats renew it. A lease that runs out before the attempt's deadline (the worker
//!   died, hung or lost its way) returns the job at once for another attempt (the lost attempt
//!   counts), and the old lease can no longer complete, fail or heartbeat it (409): effects
//!   can be fenced by lease id. PostgreSQL's `FOR UPDATE SKIP LOCKED` gives each job to one
//!   worker at a time across all nodes.
//! - **Timeouts are enforced**: `timeout_ms` (default 30 s, at most 24 h) is the most one
//!   attempt may run, counted from its lease, however often its worker heartbeats: no lease
//!   reaches past `started_at + timeout_ms` (`deadline_at` on a running job). At the deadline
//!   the attempt fails as timed out (`timed out after N ms`) — retried with the backoff, dead
//!   when its attempts are spent — and any call on it after that is refused (410
//!   `timed-out`). Ended by maintenance on any node, or at once when its holder calls. The
//!   Rust worker stops the handler at the deadline; `mortar jobs work --exec` its command.
//! - **Cancelling a running job** (`DELETE /v1/jobs/{id}` or `POST /v1/jobs/{id}/cancel`:
//!   202, the job shows `cancel_requested`) asks its worker to stop: its next heartbeat is
//!   refused 410 `cancelled` and the attempt ends `cancelled`, never retried. A completion
//!   that arrives first wins (the job is `completed`); a failure, release or lease that runs
//!   out after the request ends it `cancelled` (decided in the statement that ends the
//!   attempt, so a request is never lost to a retry). Waiting jobs are cancelled at once
//!   (200). The events stream shows `job.cancel_requested`, then `job.cancelled`.
//! - **Retries and the DLQ**: failures retry with exponential backoff and equal jitter (half
//!   fixed, half random) up to `max_attempts`; then, or on a non-retryable failure, the job is
//!   **dead** (`GET /v1/jobs?state=dead`) with every attempt's error kept; retry or discard it
//!   one by one or in bulk by filter. A retry (of a dead, cancelled or retryable job) gives it
//!   a fresh budget of `max_attempts` attempts, as Sidekiq and BullMQ do, while attempt
//!   numbers keep counting (`attempts_before_retry` says where the budget starts): every
//!   error in a job's history has a number of its own.
//! - **Unique jobs**, enforced by the database (a partial unique index on the key while it
//!   holds, so concurrent enqueues on any node cannot both win): `unique_while = queued` (until
//!   it starts), `active` (until completed, dead or cancelled; the default), `for_ms` (for
//!   `unique_for_ms` whatever happens). A duplicate returns the existing job with
//!   `"duplicate": true` (HTTP 200). `Idempotency-Key: K` is `unique_key = K` for 24 hours, and
//!   the core idempotency layer ([`IDEMPOTENT`]) adds the IETF draft's rules: K reused with
//!   another body is a 422, a duplicate while the first is in flight a 409.
//! - **Transactional enqueue (outbox)**: [`service::enqueue_in_tx`] inserts a job in the
//!   caller's PostgreSQL transaction, and the SQL function `mortar_jobs_enqueue(queue, kind,
//!   payload, priority, run_at, max_attempts, timeout_ms)` does the same from any language: the
//!   job exists only if that transaction commits.
//! - **Queues**: pause/resume; a global **concurrency** limit and **rate** limit (token bucket)
//!   per queue, enforced under the queue row's lock so every worker on every node shares one
//!   count; retention of completed and cancelled jobs (default 24 h; dead jobs 7 days).
//! - **Push delivery**: a queue with a `target_url` has its jobs POSTed there, signed, through
//!   a circuit breaker ([`push`]).
//! - **Wake-ups**: an enqueue hands its jobs to leases waiting on its node inside its own
//!   transaction; jobs left over wake waiting leases at once — on this node directly, on other
//!   nodes through PostgreSQL LISTEN/NOTIFY (sent at commit, so transactional enqueues wake too;
//!   a node that hears no other node on the channel sends none — see
//!   `mortar_core::storage::notify`); scheduled jobs and retries coming due, and freed
//!   concurrency slots, are seen within `jobs.poll_ms` (100 ms). A lease whose queues the
//!   previous lease found empty, with nothing woken since, waits without querying again.
//!
//! ## Limits
//!
//! Payloads up to `jobs.max_payload_bytes` (1 MiB); batches of up to 10 000 jobs or
//! completions; leases of up to 1000 jobs and waits of up to 60 s. `queued` uniqueness is not
//! re-taken when a started job goes back to waiting for a retry. A rate limit counts starts
//! (leases), so a lease that runs out and is leased again counts twice.
//!
//! ## API
//!
//! HTTP in [`api`]; the Rust worker library and client in [`worker`] and [`client`]; the
//! `mortar jobs …` CLI in [`cli`]; `mortar bench jobs` in [`bench`].

pub mod api;
pub mod bench;
pub mod block;
pub mod cli;
pub mod client;
pub mod engine;
pub mod error;
pub mod events;
pub mod push;
pub mod service;
pub mod state;
pub mod store;
pub mod worker;

pub use client::JobsClient;
pub use service::{Enqueued, JobsConfig, JobsService, NewJob};
pub use worker::{JobError, Worker};

/// The routes that honour `Idempotency-Key` through the core layer (`mortar_core::idempotency`):
/// a reused key with another body gets 422, a duplicate in flight 409; a replay runs the handler
/// again, whose unique key on the `Idempotency-Key` answers with the job and `duplicate: true`.
pub const IDEMPOTENT: &[mortar_core::idempotency::Route] = &[
    mortar_core::idempotency::Route {
        method: "POST",
        path: "/v1/jobs",
        replay: mortar_core::idempotency::Replay::Handler,
    },
    mortar_core::idempotency::Route {
        method: "POST",
        path: "/v1/jobs/batch",
        replay: mortar_core::idempotency::Replay::Handler,
    },
];
