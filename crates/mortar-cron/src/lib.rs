//! # mortar-cron — a distributed cron scheduler that fires every time exactly once
//!
//! Schedules `{name, expr, timezone, job, overlap, misfire, catchup_window_ms, jitter_ms,
//! start_at, end_at, enabled}` live in the durable store. Each fire enqueues a mortar-jobs job
//! built from the schedule's job template.
//!
//! ## Guarantees
//!
//! * **Exactly once per fire time, no leader.** Every node runs the scheduler. A fire time is
//!   claimed once: the tick that advances a schedule inserts `(schedule_id, fire_at)` into
//!   `cron_runs` (primary key) in the same transaction; on PostgreSQL due schedules are taken
//!   `FOR UPDATE SKIP LOCKED`, so nodes share the work. The claimed run's job carries the
//!   unique key `cron:{schedule_id}:{fire_at_ms}`; a node that dies between claim and enqueue
//!   leaves the run `claimed`, and any node's sweeper enqueues it after `cron.sweep_after_ms`
//!   — the unique key turns a repeated enqueue into the same job. Any node may die at any
//!   moment without a fire being lost or doubled.
//! * **DST**, see [`engine`]: a wall-clock time skipped by spring forward fires once at the
//!   first instant after the gap; a time repeated by fall back fires once, at its first
//!   occurrence; interval schedules (`*/15 * * * *`) follow real elapsed time.
//! * **Misfires** (fire times more than `cron.misfire_threshold_ms` behind, e.g. every node was
//!   down): `skip` drops them, `fire_once` fires the latest one, `fire_all` fires each — only
//!   those within the schedule's `catchup_window_ms` (capped by `cron.max_catchup_window_ms`).
//! * **Overlap** (the previous fire's job unfinished): `allow`, `skip`, or `buffer_one` (one
//!   fire waits and is enqueued when the previous job finishes).
//! * Updates take effect from the next fire; pause/resume (no catch-up of the paused stretch);
//!   trigger fires now; backfill fires each never-claimed fire time in a past range.
//!
//! ## Limits
//!
//! * Resolution is one second; fire lag is the tick's wake-up plus one claim transaction and
//!   one enqueue (bench/RESULTS.md). Other nodes see a new schedule within `cron.poll_ms`.
//! * Overlap checks read the latest run's job; a job pruned by mortar-jobs counts as finished.
//! * Run history (and the fire's job unique key) is kept `cron.history_retention_ms`; a
//!   backfill over a range older than that could fire a time again.
//! * Nodes' clocks must agree to within `cron.misfire_threshold_ms` (NTP).

pub mod api;
pub mod bench;
pub mod block;
pub mod cli;
pub mod engine;
pub mod error;
pub mod events;
pub mod service;
pub mod store;

pub use service::{CronConfig, CronService, ScheduleSpec};
