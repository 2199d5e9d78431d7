//! `[lock]` in `mortar.toml`.

use mortar_core::config::{ConfigError, KeyDoc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockConfig {
    /// `auto` (embedded: memory + SQLite; cluster: PostgreSQL) or `redis`.
    pub backend: Backend,
    pub max_ttl_ms: u64,
    pub max_wait_ms: u64,
    pub max_permits: u32,
    /// How often a waiter re-checks when the backend cannot notify it (cluster mode).
    pub poll_ms: u64,
    /// Cluster mode: a node's liveness lease; its waiters leave the line once it lapses.
    pub node_lease_ms: u64,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            max_ttl_ms: 86_400_000,
            max_wait_ms: 300_000,
            max_permits: 10_000,
            poll_ms: 10,
            node_lease_ms: 5_000,
        }
    }
}

impl LockConfig {
    pub const DOCS: &[KeyDoc] = &[
        KeyDoc::new(
            "lock.backend",
            "\"auto\": memory with SQLite fencing counters (embedded) or PostgreSQL (cluster: the safe\n\
             choice); \"redis\": Redis (needs redis_url; see the crate docs for its safety model)",
        ),
        KeyDoc::new(
            "lock.max_ttl_ms",
            "longest lease a client may ask for (ttl_ms above it is a 400)",
        ),
        KeyDoc::new(
            "lock.max_wait_ms",
            "longest a client may wait in line (wait_ms above it is a 400)",
        ),
        KeyDoc::new("lock.max_permits", "largest semaphore"),
        KeyDoc::new(
            "lock.poll_ms",
            "cluster mode: how often a waiter re-checks the line (embedded mode wakes waiters directly)",
        ),
        KeyDoc::new(
            "lock.node_lease_ms",
            "cluster mode: each node renews a liveness lease this long (every third of it); the\n\
             waiters of a node whose lease lapsed (it died) leave the line within this time",
        ),
    ];

    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |k: &str, why: &str| Err(ConfigError(format!("key `lock.{k}`: {why}")));
        if self.max_ttl_ms == 0 {
            return fail("max_ttl_ms", "must be at least 1");
        }
        if self.max_permits == 0 {
            return fail("max_permits", "must be at least 1");
        }
        if self.poll_ms == 0 || self.poll_ms > 10_000 {
            return fail("poll_ms", "must be 1 to 10000");
        }
        if !(300..=600_000).contains(&self.node_lease_ms) {
            return fail("node_lease_ms", "must be 300 to 600000");
        }
        Ok(())
    }
}
