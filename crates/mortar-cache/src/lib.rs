//! # mortar-cache — a cache any Redis client can use
//!
//! * A **RESP server** (RESP2, and RESP3 after `HELLO 3`) on `127.0.0.1:6380` by default, so
//!   `redis-cli`, `redis-benchmark` and every Redis client work unchanged: the string commands
//!   (GET/SET with every option, MGET/MSET/MSETNX, INCR family, APPEND, GETRANGE/SETRANGE,
//!   expiry commands with NX/XX/GT/LT, KEYS/SCAN, …) and the connection commands (PING, HELLO,
//!   AUTH with the Mortar admin token, SELECT 0, CLIENT SETNAME/GETNAME, COMMAND, INFO with
//!   sections, read-only CONFIG GET, TIME, …),
//!   pipelining, Redis's own error texts. Values are binary-safe.
//! * An **HTTP API** on the same entries: `/v1/cache/{namespace}/{key}` is the RESP key
//!   `{namespace}:{key}`.
//! * A **memory-bounded store** ([`store`]) of our own: sharded hash tables bounded in bytes
//!   (`cache.max_memory`, keys + values + a per-entry overhead), Redis-style sampled eviction
//!   with TinyLFU admission (default), plain LFU or approximated LRU, per-entry TTLs (invisible at once,
//!   reclaimed by a background sweep), hit/miss/eviction/expiry counters in INFO and /metrics.
//!
//! ## Limits (today)
//!
//! * Cluster mode ([`cluster`]): with `redis_url`, Redis is the shared tier and each node keeps
//!   a near-cache; invalidations travel over Redis pub/sub and the L1 TTL (`l1_ttl_ms`) caps
//!   staleness. Origins ([`origin`]): read-through with singleflight, write-through and write-behind per
//!   namespace.
//! * Strings only (as a cache needs): no lists, hashes or sets, so `-WRONGTYPE` never occurs.
//! * MSETNX checks then sets: a concurrent writer of the same keys can interleave.
//! * SCAN walks a snapshot ordered by a stable key hash: O(keys) per call.

pub mod api;
pub mod bench;
pub mod block;
pub mod busy_poll;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod origin;
pub mod resp;
pub mod server;
pub mod service;
pub mod store;

pub use config::CacheConfig;
pub use service::CacheService;
