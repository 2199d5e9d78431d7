//! The memory-bounded local store: moka (W-TinyLFU by default, or LRU) weighed in bytes,
//! per-entry TTLs, and the counters INFO and /metrics report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::policy::{EvictionPolicy, Expiry};

/// Bytes counted per entry beyond its key and value (moka's node, our header).
pub const ENTRY_OVERHEAD: usize = 96;

/// A value and when it expires (epoch ms; `None` = never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub data: Bytes,
    pub expires_at_ms: Option<u64>,
}

/// Eviction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Window TinyLFU (admission by frequency, the best hit ratio for most workloads).
    TinyLfu,
    Lru,
}

/// Counters for INFO and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
}

struct Ttl;

impl Expiry<Bytes, Value> for Ttl {
    fn expire_after_create(
        &self,
        _k: &Bytes,
        v: &Value,
        _at: std::time::Instant,
    ) -> Option<Duration> {
        v.expires_at_ms
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
    }

    fn expire_after_update(
        &self,
        _k: &Bytes,
        v: &Value,
        _at: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        v.expires_at_ms
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
    }
}

/// An owned copy. Arguments arrive as slices of a connection's read buffer; storing them as is
/// would keep the whole buffer alive for as long as any value from it lives.
fn compact(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

/// Wall-clock epoch milliseconds (TTLs are absolute so EXPIREAT and PXAT mean what they say).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The local cache.
pub struct Store {
    cache: moka::sync::Cache<Bytes, Value, foldhash::fast::RandomState>,
    pub stats: Arc<Stats>,
    max_memory: u64,
    policy: Policy,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_memory", &self.max_memory)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new(max_memory: u64, policy: Policy) -> Self {
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_memory)
            .weigher(|k: &Bytes, v: &Value| {
                (k.len() + v.data.len() + ENTRY_OVERHEAD)
                    .try_into()
                    .unwrap_or(u32::MAX)
            })
            .expire_after(Ttl)
            .eviction_policy(match policy {
                Policy::TinyLfu => EvictionPolicy::tiny_lfu(),
                Policy::Lru => EvictionPolicy::lru(),
            })
            .eviction_listener(move |_k, _v, cause| match cause {
                RemovalCause::Expired => {
                    s.expired.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Size => {
                    s.evicted.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            // foldhash (keyed per process) instead of SipHash: a hit is mostly hashing the key.
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self {
            cache,
            stats,
            max_memory,
            policy,
        }
    }

    pub fn max_memory(&self) -> u64 {
        self.max_memory
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A live value (counts a hit or a miss).
    pub fn get(&self, key: &[u8]) -> Option<Value> {
        let v = self.peek(key);
        let counter = if v.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        v
    }

    /// A live value without touching the hit counters.
    pub fn peek(&self, key: &[u8]) -> Option<Value> {
        self.cache
            .get(key)
            .filter(|v| v.expires_at_ms.is_none_or(|at| at > now_ms()))
    }

    /// Stores owned copies of `key` and the value (see [`compact`]).
    pub fn set(&self, key: &[u8], value: &Value) {
        let data = compact(&value.data);
        self.cache.insert(
            compact(key),
            Value {
                data,
                expires_at_ms: value.expires_at_ms,
            },
        );
    }

    pub fn remove(&self, key: &[u8]) -> Option<Value> {
        self.cache
            .remove(key)
            .filter(|v| v.expires_at_ms.is_none_or(|at| at > now_ms()))
    }

    /// Atomically replaces a key's value: `f` sees the live value (or `None`) and returns the
    /// new value (`None` deletes) and a result.
    pub fn update<R>(&self, key: &[u8], f: impl FnOnce(Option<Value>) -> (Option<Value>, R)) -> R {
        let mut out = None;
        let _ = self
            .cache
            .entry(Bytes::copy_from_slice(key))
            .and_compute_with(|entry| {
                let now = now_ms();
                let current = entry
                    .map(moka::Entry::into_value)
                    .filter(|v| v.expires_at_ms.is_none_or(|at| at > now));
                let (next, r) = f(current);
                out = Some(r);
                match next {
                    Some(v) => Op::Put(Value {
                        data: compact(&v.data),
                        ..v
                    }),
                    None => Op::Remove,
                }
            });
        out.expect("compute ran")
    }

    /// Live keys (a snapshot; KEYS and SCAN walk it).
    pub fn keys(&self) -> Vec<Bytes> {
        let now = now_ms();
        self.cache
            .iter()
            .filter(|(_, v)| v.expires_at_ms.is_none_or(|at| at > now))
            .map(|(k, _)| Bytes::clone(&k))
            .collect()
    }

    /// (keys, keys with a TTL), after pending maintenance.
    pub fn counts(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        let now = now_ms();
        let mut keys = 0;
        let mut volatile = 0;
        for (_, v) in &self.cache {
            if v.expires_at_ms.is_none_or(|at| at > now) {
                keys += 1;
                volatile += u64::from(v.expires_at_ms.is_some());
            }
        }
        (keys, volatile)
    }

    /// Bytes accounted to live entries (keys, values and per-entry overhead).
    pub fn used_memory(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }
}
