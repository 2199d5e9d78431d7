//! `[cache]` in `mortar.toml`.

use mortar_core::config::{ConfigError, KeyDoc};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::origin::NamespaceConfig;
use crate::store::Policy;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `host:port` for the RESP listener, or `off`.
    pub resp_listen: String,
    /// RESP event loops; 0 = one per CPU but one (at least one).
    pub resp_threads: usize,
    /// Microseconds a busy RESP loop keeps polling after its last request; 0 = never.
    pub resp_busy_poll_us: u64,
    pub max_memory: u64,
    pub eviction: Policy,
    pub max_bulk_bytes: usize,
    /// Most RESP connections at once (Redis's `maxclients`).
    pub max_clients: u64,
    /// Cluster mode: how long a node may serve a value from its near-cache.
    pub l1_ttl_ms: u64,
    /// Cluster mode: deadline of one Redis call.
    pub redis_timeout_ms: u64,
    /// Namespaces with an origin (`[cache.namespaces.<name>]`).
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            resp_listen: "127.0.0.1:6380".into(),
            resp_threads: 0,
            resp_busy_poll_us: 200,
            max_memory: 256 * 1024 * 1024,
            eviction: Policy::TinyLfu,
            max_bulk_bytes: 64 * 1024 * 1024,
            max_clients: 10_000,
            l1_ttl_ms: 10_000,
            redis_timeout_ms: 500,
            namespaces: BTreeMap::new(),
        }
    }
}

impl CacheConfig {
    pub const DOCS: &[KeyDoc] = &[
        KeyDoc::new(
            "cache.resp_listen",
            "address of the Redis-protocol (RESP) listener, or \"off\" (env MORTAR_CACHE__RESP_LISTEN)",
        ),
        KeyDoc::new(
            "cache.resp_threads",
            "RESP event loops (one thread each, connections spread by SO_REUSEPORT); 0 = one per\n\
             CPU but one, at least one: a core is left to the kernel's network work, the rest of\n\
             the server and co-located clients, as Redis advises for its io-threads (env\n\
             MORTAR_CACHE__RESP_THREADS)",
        ),
        KeyDoc::new(
            "cache.resp_busy_poll_us",
            "microseconds a busy RESP loop keeps polling its sockets after its last request\n\
             before it sleeps (as Seastar's idle-poll-time), so that clients' sends need not wake\n\
             it: only while the loop was busy at least half of the last 10 ms, so an idle or\n\
             lightly loaded server sleeps as before; costs CPU under load; 0 = off (env\n\
             MORTAR_CACHE__RESP_BUSY_POLL_US)",
        ),
        KeyDoc::new(
            "cache.max_memory",
            "bytes the cache may hold (keys, values and per-entry overhead)",
        ),
        KeyDoc::new(
            "cache.eviction",
            "\"tiny_lfu\" (sampled least-frequent eviction with TinyLFU admission, the default),\n\
             \"lfu\" (the same eviction, every new key admitted: Redis's allkeys-lfu) or \"lru\"\n\
             (sampled approximated LRU: allkeys-lru)",
        ),
        KeyDoc::new(
            "cache.max_bulk_bytes",
            "largest value or argument an authenticated client may send (before AUTH, on a\n\
             server with an admin token: 10 arguments of at most 16 KiB, as Redis)",
        ),
        KeyDoc::new(
            "cache.max_clients",
            "most RESP connections at once (Redis's maxclients); past it a new connection gets\n\
             \"-ERR max number of clients reached\" and is closed",
        ),
        KeyDoc::new(
            "cache.l1_ttl_ms",
            "cluster mode: longest a node serves a value from its near-cache (caps staleness if an\n\
             invalidation is lost)",
        ),
        KeyDoc::new(
            "cache.redis_timeout_ms",
            "cluster mode: deadline of one Redis call (then an error, never a hang)",
        ),
        KeyDoc::new(
            "cache.namespaces",
            "namespaces backed by an origin: [cache.namespaces.<name>] with origin_url (a miss on\n\
             <name>:<key> loads origin_url/<key>), ttl_ms (when the origin sends no max-age),\n\
             write (\"none\", \"through\" or \"behind\"), timeout_ms, flush_ms\n\
             (write-behind)",
        ),
    ];

    /// The RESP address, or `None` when off.
    pub fn resp_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        if self.resp_listen == "off" {
            return Ok(None);
        }
        self.resp_listen.parse().map(Some).map_err(|_| {
            ConfigError(format!(
                "key `cache.resp_listen`: `{}` is not host:port or \"off\"",
                self.resp_listen
            ))
        })
    }

    /// The number of RESP event loops on a machine with `cpus` CPUs: `resp_threads`, or when it
    /// is 0 one per CPU but one (at least one). On 2 cores with the benchmark client on the
    /// same machine, one loop serves 7% more requests than two (bench/RESULTS.md): a loop per
    /// CPU takes turns with the client and the kernel's loopback work on every core.
    pub fn resp_event_loops(&self, cpus: usize) -> usize {
        if self.resp_threads > 0 {
            self.resp_threads
        } else {
            cpus.saturating_sub(1).max(1)
        }
    }

    /// How long a busy RESP loop keeps polling after its last request (zero: never).
    pub fn resp_busy_poll(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.resp_busy_poll_us)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.resp_addr()?;
        if self.resp_busy_poll_us > 10_000 {
            return Err(ConfigError(
                "key `cache.resp_busy_poll_us`: at most 10000 (10 ms; 0 = off)".into(),
            ));
        }
        if self.resp_threads > 1024 {
            return Err(ConfigError(
                "key `cache.resp_threads`: at most 1024 (0 = one per CPU but one)".into(),
            ));
        }
        if self.max_memory < 1024 * 1024 {
            return Err(ConfigError(
                "key `cache.max_memory`: must be at least 1048576 (1 MiB)".into(),
            ));
        }
        if self.max_clients == 0 {
            return Err(ConfigError(
                "key `cache.max_clients`: must be at least 1".into(),
            ));
        }
        if self.max_bulk_bytes == 0 {
            return Err(ConfigError(
                "key `cache.max_bulk_bytes`: must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_threads_default_to_one_per_cpu_but_one_and_are_bounded() {
        let mut c = CacheConfig::default();
        assert_eq!(c.resp_event_loops(4), 3);
        assert_eq!(c.resp_event_loops(2), 1);
        assert_eq!(c.resp_event_loops(1), 1);
        c.resp_threads = 1;
        assert_eq!(c.resp_event_loops(4), 1);
        assert!(c.validate().is_ok());
        c.resp_threads = 5000;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cache.resp_threads"), "{e}");
    }

    #[test]
    fn eviction_policies_parse_and_busy_poll_is_bounded() {
        for (name, policy, redis) in [
            ("tiny_lfu", Policy::TinyLfu, "tinylfu"),
            ("lfu", Policy::Lfu, "allkeys-lfu"),
            ("lru", Policy::Lru, "allkeys-lru"),
        ] {
            let c: CacheConfig =
                serde_json::from_str(&format!(r#"{{"eviction": "{name}"}}"#)).unwrap();
            assert_eq!((c.eviction, c.eviction.redis_name()), (policy, redis));
        }
        assert!(serde_json::from_str::<CacheConfig>(r#"{"eviction": "random"}"#).is_err());
        let mut c = CacheConfig::default();
        assert_eq!(c.resp_busy_poll(), std::time::Duration::from_micros(200));
        c.resp_busy_poll_us = 0;
        assert!(c.resp_busy_poll().is_zero() && c.validate().is_ok());
        c.resp_busy_poll_us = 20_000;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("cache.resp_busy_poll_us"), "{e}");
    }
}
