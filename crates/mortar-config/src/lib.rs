//! mortar-config: a configuration service with revisions, environments that fall back to one
//! another, JSON Schema validation, history with diffs, one-step rollback, and watches that
//! never miss a change.
//!
//! # Model
//!
//! A **namespace** (an application or team: `billing`) × an **environment** (`dev`, `prod`,
//! any name) × a **key** (a dotted path, `db.pool.max`) → a JSON value. A namespace is created
//! by its first write. Every environment falls back to `base`; `[config.environments]` sets
//! longer chains (`prod = ["staging"]`: prod → staging → base). A read answers the
//! **effective** value — the first environment of the chain that has the key — and says which
//! environment it came from.
//!
//! # Guarantees
//!
//! * **One global, monotonic revision.** Every write (one key, or a change set of many keys,
//!   or a rollback) is one new revision, committed atomically; every read says the revision it
//!   reflects. Revisions are allocated under one lock held to commit, so they commit in order:
//!   a reader that sees revision N sees every revision below it (what makes watches gap-free).
//! * **CAS.** A write may name the revision it expects — the key's (`If-Match` on a `PUT`) or the
//!   environment's (`expected_revision` of a change set); a mismatch changes nothing (412).
//! * **Validation before anything is stored.** A namespace may carry a JSON Schema (draft
//!   2020-12, no network or file resolution) over each environment's effective document — an
//!   object whose properties are the keys (flat: `{"db.pool.max": 10}`). A write that would make
//!   any environment's document invalid is refused (422, each failing JSON pointer and rule);
//!   so is a schema that the stored values do not satisfy.
//! * **History.** Each change records the revision, time, principal (API key name or `admin`),
//!   message, the value before and after (an RFC 6902 diff in `GET …/history`). Rollback
//!   restores an environment as it was at a revision, as a new revision.
//! * **Watches never miss.** `GET /v1/config/{ns}/{env}/watch` (SSE, `id:` = revision; or
//!   long-poll with `after_revision` + `wait_ms`) starts with a `snapshot` of the effective
//!   values, then one `change` event per revision that changed an effective value of the
//!   environment. A client resuming with `Last-Event-ID` gets every revision after it, in order,
//!   read from the history; one resuming from before the kept history gets a `reset` event with
//!   the full snapshot — never an error, never a gap. History is compacted only below
//!   `[config] history_keep` revisions, and never a key's latest change (so the state at any
//!   kept revision can be rebuilt).
//!
//! # Shape
//!
//! * `engine` — pure rules: names and keys, chains, effective documents, diffs.
//! * `store` — SQL only, one text per statement for SQLite and PostgreSQL through the core SQL
//!   layer: `config_meta` (the revision counter and history floor), `config_envs` (each
//!   environment's latest revision), `config_values` (current values), `config_changes` (the
//!   history, one row per key per revision), `config_schemas`.
//! * `service` — writes (CAS, validation, revision), reads, rollback, schemas, compaction.
//! * `follow` — each node follows the history in revision order and publishes the effective
//!   changes of watched environments on the node's hub (`config:<ns>/<env>`); `watch` — the
//!   per-client catch-up from the history, then the live tail.
//! * `api`, `cli`, `block` — the HTTP routes, `mortar config …` (with `config run`), the
//!   server's block; `client` — `ConfigClient`, a followed local copy for Rust services;
//!   `bench` — `mortar bench config`.
//!
//! # Limits
//!
//! Keys up to 256 characters of `A-Z a-z 0-9 _ - .` (dot-separated, no empty segment);
//! namespace and environment names up to 64 characters of `A-Z a-z 0-9 _ -`; values up to
//! `[config] max_value_bytes` (64 KiB by default; 413 beyond); change sets up to 1 000 keys.

pub mod api;
pub mod bench;
pub mod block;
pub mod cli;
pub mod client;
pub mod engine;
mod follow;
pub mod format;
pub mod service;
pub mod store;
mod watch;

pub use client::ConfigClient;
pub use service::{ConfigService, Settings};
