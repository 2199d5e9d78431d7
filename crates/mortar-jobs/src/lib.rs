//! # mortar-jobs — a durable job queue (first slice)
//!
//! Jobs `{queue, kind, payload, priority, delay_ms, max_attempts, backoff, timeout_ms}` are
//! durable in the node's store before `POST /v1/jobs` answers. Workers in any language lease
//! them over HTTP (`POST /v1/jobs/lease`, long-poll), heartbeat, and complete or fail them.
//! Ordering: lower `priority` first, then earlier `run_at`, then enqueue order (ULIDs).
//!
//! Guarantees: at-least-once — a lease that runs out returns the job for another attempt, and
//! the old lease can no longer complete or fail it (409), so effects can be fenced by lease id;
//! in cluster mode PostgreSQL's `FOR UPDATE SKIP LOCKED` gives each job to one worker at a time.
//! Failures retry with exponential backoff and jitter; after `max_attempts`, or a
//! non-retryable failure, the job is **dead** (the DLQ: `GET /v1/jobs?state=dead`), keeping every
//! attempt's error; `POST /v1/jobs/{id}/retry` revives it.
//!
//! ## Clients
//!
//! `client::JobsClient` (the HTTP API from Rust), `worker::Worker` (batched leases, automatic
//! heartbeats, batched completions, panics as failed attempts, graceful shutdown), `cli`
//! (`mortar jobs …`, incl. `work --exec CMD`) and `bench` (`mortar bench jobs`).
//!
//! ## Not built yet
//!
//! Unique keys and `Idempotency-Key`, transactional enqueue (`enqueue_in_tx`), push workers,
//! queue management (pause, concurrency and rate limits, retention),
//! LISTEN/NOTIFY wake-ups (other nodes' enqueues are seen within `jobs.poll_ms`).

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod engine;
pub mod error;
pub mod service;
pub mod store;
pub mod worker;

pub use client::JobsClient;
pub use service::{JobsConfig, JobsService, NewJob};
pub use worker::{JobError, Worker};
