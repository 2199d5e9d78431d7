//! The memory-bounded local store: a sharded hash table of our own, bounded in bytes, with
//! Redis-style sampled eviction (approximated LRU, or TinyLFU admission), per-entry TTLs, and
//! the counters INFO and /metrics report.
//!
//! ## Layout
//!
//! * Up to `MAX_SHARDS` (64; fewer for small bounds) shards, each a `hashbrown::HashTable<Entry>`
//!   behind a `parking_lot::RwLock`. A key is hashed once with foldhash (keyed per process); the
//!   hash picks the shard (bits 40..) and the bucket.
//! * An entry is 48 bytes in the table: one allocation holding `key ++ value` (a [`Bytes`], so a
//!   read hands out the value as a slice of it without copying), the expiry (epoch ms, 0 =
//!   never), the key length and a 32-bit access stamp. Keys and values are always copied into
//!   that allocation, so nothing keeps a connection's read buffer alive.
//! * The bound is global: `used_memory` (one atomic) counts `key + value + ENTRY_OVERHEAD` per
//!   entry. A write that takes it past `max_memory` evicts from its own shard (and, if that shard
//!   has nothing left to give, from others) until it is back under.
//!
//! ## Eviction (sampled, as Redis does: `evict.rs`)
//!
//! A victim is the worst of `SAMPLES` random entries of the shard. Expired entries found in a
//! sample are reclaimed first (counted in `expired`, not `evicted`).
//!
//! * [`Policy::Lru`]: approximated LRU. Each shard has a logical clock that every insert
//!   advances; a read copies the clock into the entry's stamp (a relaxed atomic store under the
//!   read lock, skipped when unchanged). The victim is the sampled entry with the oldest stamp.
//! * [`Policy::TinyLfu`]: each shard has a count-min sketch (4-bit counters, halved every
//!   10 × its width recordings: [`sketch`]) that every read, hit or miss, and every write
//!   records, lock-free. The victim is the sampled entry with the lowest estimated frequency
//!   (the oldest stamp among equals), and a *new* key is admitted only if its own estimate is at
//!   least the victim's (Ristretto's rule); a rejected key is not stored and counts as evicted.
//!   There is no admission window (Caffeine's W-TinyLFU has one): a brand-new key competes with
//!   the frequency of its first write (plus any earlier misses on it).
//! * [`Policy::Lfu`]: the same sketch and the same victim (lowest estimated frequency, oldest
//!   among equals), but every new key is admitted, as Redis's `allkeys-lfu` does: the sketch's
//!   halving is the decay that lets yesterday's popular keys go.
//!
//! ## TTLs (the sweep: `sweep.rs`)
//!
//! An entry past its expiry is invisible at once (every access compares it with the clock).
//! Memory comes back without access: a background thread (started with the first entry that has
//! a TTL, gone when the store is dropped) walks each shard with TTL'd entries ten times a second,
//! a few hundred buckets at a time and more while it keeps finding expired ones (Redis's active
//! expiry cycle), and eviction samples reclaim expired entries first. `stats.expired` counts
//! every reclaimed expired entry (by the sweep, by eviction, or by a write that found one).

mod evict;
mod sketch;
mod sweep;
#[cfg(test)]
mod tests;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use hashbrown::HashTable;
use hashbrown::hash_table::OccupiedEntry;
use parking_lot::RwLock;

use self::sketch::Sketch;

/// Bytes counted per entry beyond its key and value: the 48-byte slot plus its control byte in
/// a table kept between 7/16 and 7/8 full (≈ 70 bytes on average), and the allocator's header
/// and rounding of the key-and-value allocation (≈ 16). Measured: see bench/RESULTS.md.
pub const ENTRY_OVERHEAD: usize = 86;

/// Most shards (fewer for small bounds, so each shard holds enough entries to sample from).
const MAX_SHARDS: usize = 64;
/// The smallest per-shard budget that earns another shard.
const MIN_SHARD_BYTES: u64 = 64 * 1024;

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
    /// TinyLFU admission with sampled least-frequent eviction (the best hit ratio for most
    /// workloads: one-hit keys do not push out popular ones).
    TinyLfu,
    /// Sampled approximated LRU (Redis's `allkeys-lru`).
    Lru,
    /// Sampled least-frequently-used eviction without admission (Redis's `allkeys-lfu`).
    Lfu,
}

impl Policy {
    /// The policy's name in Redis's `maxmemory-policy` terms (INFO, CONFIG GET).
    pub fn redis_name(self) -> &'static str {
        match self {
            Policy::TinyLfu => "tinylfu",
            Policy::Lru => "allkeys-lru",
            Policy::Lfu => "allkeys-lfu",
        }
    }
}

/// Counters for INFO and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Expired entries reclaimed.
    pub expired: AtomicU64,
    /// Entries evicted (or new keys refused by TinyLFU admission) to stay under `max_memory`.
    pub evicted: AtomicU64,
    /// Invalidation messages from other nodes applied to this node's near-cache (cluster
    /// mode); a client that saw it grow knows the writes behind it reached this node.
    pub invalidations: AtomicU64,
}

/// Wall-clock epoch milliseconds (TTLs are absolute so EXPIREAT and PXAT mean what they say).
pub fn now_ms() -> u64 {
    mortar_core::clock::unix_time().as_millis() as u64
}

/// One stored key and value.
struct Entry {
    /// `key ++ value`, one allocation.
    buf: Bytes,
    /// Epoch ms; 0 = never.
    expires_at_ms: u64,
    klen: u32,
    /// The shard clock at the last access.
    stamp: AtomicU32,
}

impl Entry {
    fn new(key: &[u8], data: &[u8], expires_at_ms: Option<u64>, stamp: u32) -> Self {
        let mut buf = Vec::with_capacity(key.len() + data.len());
        buf.extend_from_slice(key);
        buf.extend_from_slice(data);
        Self {
            buf: Bytes::from(buf),
            // Some(0) would read as "never": 1 ms after the epoch has passed just the same.
            expires_at_ms: expires_at_ms.map_or(0, |at| at.max(1)),
            klen: key.len() as u32,
            stamp: AtomicU32::new(stamp),
        }
    }

    #[inline]
    fn key(&self) -> &[u8] {
        &self.buf[..self.klen as usize]
    }

    #[inline]
    fn value(&self) -> Value {
        Value {
            data: self.buf.slice(self.klen as usize..),
            expires_at_ms: (self.expires_at_ms != 0).then_some(self.expires_at_ms),
        }
    }

    #[inline]
    fn size(&self) -> u64 {
        (self.buf.len() + ENTRY_OVERHEAD) as u64
    }

    #[inline]
    fn expired(&self, now: &mut Now) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now.get()
    }
}

/// The clock, read at most once per operation and only when an entry has a TTL.
struct Now(u64);

impl Now {
    fn new() -> Self {
        Self(0)
    }

    #[inline]
    fn get(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now_ms();
        }
        self.0
    }
}

struct Table {
    map: HashTable<Entry>,
    /// Entries with a TTL (expired or not).
    volatile: usize,
    /// Where the TTL sweep goes on.
    cursor: usize,
}

/// Padded so neighbouring shards' locks do not share a cache line.
#[repr(align(128))]
struct Shard {
    table: RwLock<Table>,
    /// Logical LRU clock: advanced by every insert, copied into an entry's stamp on access.
    clock: AtomicU32,
    sketch: Option<Sketch>,
}

struct Inner {
    shards: Box<[Shard]>,
    /// `shards.len() - 1`.
    shard_mask: usize,
    hasher: foldhash::fast::RandomState,
    used: AtomicU64,
    max_memory: u64,
    policy: Policy,
    stats: Arc<Stats>,
    sweeper: AtomicBool,
    /// Itself, for the sweep thread.
    me: Weak<Inner>,
}

/// The local cache.
pub struct Store {
    inner: Arc<Inner>,
    pub stats: Arc<Stats>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("max_memory", &self.inner.max_memory)
            .field("policy", &self.inner.policy)
            .field("shards", &self.inner.shards.len())
            .finish_non_exhaustive()
    }
}

impl Store {
    pub fn new(max_memory: u64, policy: Policy) -> Self {
        let shards = (max_memory / MIN_SHARD_BYTES)
            .clamp(1, MAX_SHARDS as u64)
            .next_power_of_two()
            .min(MAX_SHARDS as u64) as usize;
        // About one sketch word per entry of a typical size (a short key, a ~100-byte value).
        let per_shard_entries = (max_memory / 256 / shards as u64) as usize;
        let stats = Arc::new(Stats::default());
        let inner = Arc::new_cyclic(|me| Inner {
            shards: (0..shards)
                .map(|_| Shard {
                    table: RwLock::new(Table {
                        map: HashTable::new(),
                        volatile: 0,
                        cursor: 0,
                    }),
                    clock: AtomicU32::new(0),
                    sketch: (policy != Policy::Lru).then(|| Sketch::new(per_shard_entries)),
                })
                .collect(),
            shard_mask: shards - 1,
            hasher: foldhash::fast::RandomState::default(),
            used: AtomicU64::new(0),
            max_memory,
            policy,
            stats: stats.clone(),
            sweeper: AtomicBool::new(false),
            me: me.clone(),
        });
        Self { inner, stats }
    }

    pub fn max_memory(&self) -> u64 {
        self.inner.max_memory
    }

    pub fn policy(&self) -> Policy {
        self.inner.policy
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

    /// A live value without touching the hit counters (still an access for eviction).
    pub fn peek(&self, key: &[u8]) -> Option<Value> {
        let inner = &*self.inner;
        let hash = inner.hash(key);
        let shard = inner.shard(hash);
        let v = {
            let t = shard.table.read();
            t.map.find(hash, |e| e.key() == key).and_then(|e| {
                if e.expired(&mut Now::new()) {
                    return None;
                }
                let clock = shard.clock.load(Ordering::Relaxed);
                if e.stamp.load(Ordering::Relaxed) != clock {
                    e.stamp.store(clock, Ordering::Relaxed);
                }
                Some(e.value())
            })
        };
        if let Some(s) = &shard.sketch {
            s.increment(hash);
        }
        v
    }

    /// Stores owned copies of `key` and the value.
    pub fn set(&self, key: &[u8], value: &Value) {
        let old = self.inner.write(key, |_| Some(Write::Borrowed(value)));
        drop(old);
    }

    pub fn remove(&self, key: &[u8]) -> Option<Value> {
        self.update(key, |v| (None, v))
    }

    /// Atomically replaces a key's value: `f` sees the live value (or `None`) and returns the
    /// new value (`None` deletes) and a result. `f` runs under the shard's write lock: it must
    /// not call back into the store.
    pub fn update<R>(&self, key: &[u8], f: impl FnOnce(Option<Value>) -> (Option<Value>, R)) -> R {
        let mut f = Some(f);
        let mut out = None;
        self.inner.write(key, |cur| {
            let f = f.take().expect("called once");
            let (next, r) = f(cur.map(Entry::value));
            out = Some(r);
            next.map(Write::Owned)
        });
        out.expect("update ran")
    }

    /// Live keys (a snapshot; KEYS and SCAN walk it).
    pub fn keys(&self) -> Vec<Bytes> {
        let mut now = Now::new();
        let mut out = Vec::new();
        for shard in &self.inner.shards {
            let t = shard.table.read();
            out.reserve(t.map.len());
            out.extend(
                t.map
                    .iter()
                    .filter(|e| !e.expired(&mut now))
                    .map(|e| e.buf.slice(..e.klen as usize)),
            );
        }
        out
    }

    /// (live keys, live keys with a TTL).
    pub fn counts(&self) -> (u64, u64) {
        let mut now = Now::new();
        let (mut keys, mut volatile) = (0, 0);
        for shard in &self.inner.shards {
            let t = shard.table.read();
            if t.volatile == 0 {
                keys += t.map.len() as u64;
            } else {
                for e in &t.map {
                    if !e.expired(&mut now) {
                        keys += 1;
                        volatile += u64::from(e.expires_at_ms != 0);
                    }
                }
            }
        }
        (keys, volatile)
    }

    /// Bytes accounted to stored entries (keys, values and [`ENTRY_OVERHEAD`] each; expired
    /// entries count until reclaimed).
    pub fn used_memory(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    pub fn clear(&self) {
        for shard in &self.inner.shards {
            let old = {
                let mut t = shard.table.write();
                t.volatile = 0;
                t.cursor = 0;
                std::mem::take(&mut t.map)
            };
            let freed: u64 = old.iter().map(Entry::size).sum();
            self.inner.used.fetch_sub(freed, Ordering::Relaxed);
            if let Some(s) = &shard.sketch {
                s.clear();
            }
        }
    }

    /// Bytes of the frequency sketches (fixed, allocated up front; not in `used_memory`).
    pub fn sketch_bytes(&self) -> usize {
        self.inner
            .shards
            .iter()
            .filter_map(|s| s.sketch.as_ref().map(Sketch::bytes))
            .sum()
    }

    /// One pass of the TTL sweep over every shard (the background thread runs it ten times a
    /// second); returns the expired entries reclaimed.
    pub fn reclaim_expired(&self) -> u64 {
        self.inner.sweep()
    }
}

/// What a write stores.
enum Write<'a> {
    Borrowed(&'a Value),
    Owned(Value),
}

impl Write<'_> {
    fn value(&self) -> &Value {
        match self {
            Write::Borrowed(v) => v,
            Write::Owned(v) => v,
        }
    }
}

impl Inner {
    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        // Bits the table does not use for its bucket (low bits) or tag (top 7).
        &self.shards[(hash >> 40) as usize & self.shard_mask]
    }

    fn rehash(&self) -> impl Fn(&Entry) -> u64 + '_ {
        move |e| self.hash(e.key())
    }

    /// The one write path: `decide` sees the live entry (or `None`) under the shard's write
    /// lock and says what to store (`None` deletes). Returns the replaced or removed buffer,
    /// which the caller drops after the lock is released.
    fn write<'v>(
        &self,
        key: &[u8],
        decide: impl FnOnce(Option<&Entry>) -> Option<Write<'v>>,
    ) -> Option<Bytes> {
        let hash = self.hash(key);
        let si = (hash >> 40) as usize & self.shard_mask;
        let shard = &self.shards[si];
        let mut now = Now::new();
        let mut freed_total = 0u64;
        let mut added = 0u64;
        let mut old_buf = None;
        let mut spill = false;
        {
            let mut guard = shard.table.write();
            let t = &mut *guard;
            let mut slot = t.map.find_entry(hash, |e| e.key() == key).ok();
            // An expired entry is gone: reclaim it before anyone sees it.
            if slot.as_ref().is_some_and(|o| o.get().expired(&mut now)) {
                let (e, _) = slot.take().expect("checked").remove();
                t.volatile -= 1;
                freed_total += e.size();
                self.stats.expired.fetch_add(1, Ordering::Relaxed);
                old_buf = Some(e.buf);
            }
            let next = decide(slot.as_ref().map(OccupiedEntry::get));
            match (slot, next) {
                (None, None) => {}
                (Some(o), None) => {
                    let (e, _) = o.remove();
                    t.volatile -= usize::from(e.expires_at_ms != 0);
                    freed_total += e.size();
                    old_buf = Some(e.buf);
                }
                (slot, Some(w)) => {
                    let v = w.value();
                    let size = (key.len() + v.data.len() + ENTRY_OVERHEAD) as u64;
                    let stamp = shard.clock.load(Ordering::Relaxed).wrapping_add(1);
                    shard.clock.store(stamp, Ordering::Relaxed);
                    if let Some(s) = &shard.sketch {
                        s.increment(hash);
                    }
                    let entry = Entry::new(key, &v.data, v.expires_at_ms, stamp);
                    let ttl = entry.expires_at_ms != 0;
                    let index = if size > self.max_memory {
                        // Never fits: the key ends up absent, as if evicted at once.
                        self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                        if let Some(o) = slot {
                            let (e, _) = o.remove();
                            t.volatile -= usize::from(e.expires_at_ms != 0);
                            freed_total += e.size();
                            old_buf = Some(e.buf);
                        }
                        None
                    } else if let Some(mut o) = slot {
                        let e = o.get_mut();
                        t.volatile =
                            t.volatile + usize::from(ttl) - usize::from(e.expires_at_ms != 0);
                        freed_total += e.size();
                        added += size;
                        old_buf = Some(std::mem::replace(e, entry).buf);
                        Some(o.bucket_index())
                    } else if self.admit(shard, t, hash, size, &mut now, &mut freed_total) {
                        t.volatile += usize::from(ttl);
                        added += size;
                        Some(
                            t.map
                                .insert_unique(hash, entry, self.rehash())
                                .bucket_index(),
                        )
                    } else {
                        self.stats.evicted.fetch_add(1, Ordering::Relaxed);
                        None
                    };
                    self.account(added, &mut freed_total);
                    added = 0;
                    if let Some(index) = index {
                        // Make room in this shard, never evicting what was just written.
                        while self.used.load(Ordering::Relaxed) > self.max_memory {
                            match self.evict_one(shard, t, Some(index), &mut now) {
                                Some(freed) => self.used.fetch_sub(freed, Ordering::Relaxed),
                                None => {
                                    spill = true;
                                    break;
                                }
                            };
                        }
                    }
                    if ttl {
                        self.start_sweeper();
                    }
                }
            }
            self.account(added, &mut freed_total);
            shrink_if_sparse(t, self.rehash());
        }
        if spill {
            self.evict_elsewhere(si);
        }
        old_buf
    }

    /// Applies a write's net change to `used`.
    #[inline]
    fn account(&self, added: u64, freed: &mut u64) {
        let f = std::mem::take(freed);
        if added > f {
            self.used.fetch_add(added - f, Ordering::Relaxed);
        } else if f > added {
            self.used.fetch_sub(f - added, Ordering::Relaxed);
        }
    }
}

/// A table left mostly empty gives its memory back (and keeps sampling short: a sample walks
/// from a random bucket to the next occupied one).
#[inline]
fn shrink_if_sparse(table: &mut Table, rehash: impl Fn(&Entry) -> u64) {
    let (len, cap) = (table.map.len(), table.map.capacity());
    if cap > 256 && len * 8 < cap {
        table.map.shrink_to(len * 2, rehash);
        table.cursor = 0;
    }
}
