//! In-process state. The embedded default.
//!
//! Every (policy, key) has a **slot**: its state behind a mutex of its own. Slots are indexed by
//! 64 shards, each a mutex over one flat hash table (`hashbrown::HashTable`, one foldhash of
//! (policy, key) per check picks the shard and finds the slot, compared by `&str`). Each thread
//! also keeps a **cache** of the slots it used (a thread-local table of `Arc`s), so a check for a
//! key the thread has seen locks nothing but that key's slot: two threads working on different
//! keys write no common cache line and scale. A miss goes through the shard, under its lock.
//!
//! Reclaiming: every [`SWEEP_EVERY`] checks on a thread, one shard (in turn) drops its expired
//! slots (or [`MemoryStore::sweep`] does all). A dropped slot is marked dead under its lock; a
//! thread whose cache still holds it sees the mark, forgets it and goes through the shard again,
//! so it never acts on state the store has let go. Caches are bounded ([`THREAD_CACHE_MAX`]).
//!
//! Several checks at once (all or nothing) lock their shards in index order, then their slots,
//! decide, and write only if all allow. Lock order is always shard before slot; a single check on
//! the cached path holds one slot lock only.
//!
//! Time: with the system clock the store reads a [`FastClock`] (the same time, a third of the
//! cost, monotonic); any other clock (a `ManualClock` in tests) is read as injected.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::future::{BoxFuture, FutureExt};
use hashbrown::HashTable;
use mortar_core::clock::{Clock, FastClock};

use super::{Check, RateLimitStore, StoreError};
use crate::engine::{self, Decision, State};

const SHARDS: usize = 64;
/// Every this many checks on a thread, one shard drops its expired slots.
pub const SWEEP_EVERY: u32 = 4096;
/// Most slots a thread's cache holds; beyond, dead ones are dropped, then all if still too many.
pub const THREAD_CACHE_MAX: usize = 16_384;

static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(1);

/// What a slot's lock guards.
struct Held {
    expires_at_ms: u64,
    state: State,
}

/// One policy's state for one key.
struct Slot {
    /// The full (policy, key) hash, kept for the tables' growth.
    hash: u64,
    /// The policy's name followed by the key: one allocation per slot.
    name: Box<str>,
    policy_len: u32,
    /// Set (under `held`'s lock and the shard's) when the store drops the slot.
    dead: AtomicBool,
    held: Mutex<Held>,
}

impl Slot {
    fn new(hash: u64, policy: &str, key: &str, state: State, expires_at_ms: u64) -> Arc<Self> {
        let mut name = String::with_capacity(policy.len() + key.len());
        name.push_str(policy);
        name.push_str(key);
        Arc::new(Self {
            hash,
            name: name.into_boxed_str(),
            policy_len: policy.len() as u32,
            dead: AtomicBool::new(false),
            held: Mutex::new(Held {
                expires_at_ms,
                state,
            }),
        })
    }

    #[inline]
    fn is(&self, policy: &str, key: &str) -> bool {
        let (p, k) = self.name.split_at(self.policy_len as usize);
        p == policy && k == key
    }

    #[inline]
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Decides one check against a slot's state (expired state counts as none) and keeps the result.
#[inline]
fn decide_in(held: &mut Held, c: &Check<'_>, now: u64, cost: u64) -> Decision {
    let current = (held.expires_at_ms > now).then_some(&held.state);
    let (d, state) = engine::decide(&c.limit, current, now, cost);
    if d.allowed && cost > 0 {
        held.expires_at_ms = now + engine::ttl_ms(&c.limit, &state, now);
        held.state = state;
    }
    d
}

#[derive(Default)]
struct Table {
    slots: HashTable<Arc<Slot>>,
}

impl Table {
    #[inline]
    fn find(&self, hash: u64, c: &Check<'_>) -> Option<&Arc<Slot>> {
        self.slots.find(hash, |s| s.is(c.policy, c.key))
    }

    fn insert(&mut self, slot: Arc<Slot>) {
        self.slots.insert_unique(slot.hash, slot, |s| s.hash);
    }

    fn sweep(&mut self, now: u64) {
        self.slots.retain(|s| {
            let held = s.lock();
            let live = held.expires_at_ms > now;
            if !live {
                s.dead.store(true, Ordering::Relaxed);
            }
            live
        });
        // Give memory back after a burst of keys has gone (keep room to grow again).
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to(self.slots.len() * 2, |s| s.hash);
        }
    }
}

/// A shard on cache lines of its own (no false sharing between threads on different shards).
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Table>);

impl Shard {
    #[inline]
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A thread's slots, of every store (told apart by store id).
struct ThreadCache {
    slots: HashTable<(u64, Arc<Slot>)>,
    ops: u32,
}

thread_local! {
    static CACHE: RefCell<ThreadCache> = const {
        RefCell::new(ThreadCache {
            slots: HashTable::new(),
            ops: 0,
        })
    };
}

/// Where the store reads the time.
enum Time {
    /// The system clock, read through the TSC.
    Fast(FastClock),
    Injected(Arc<dyn Clock>),
}

impl Time {
    #[inline]
    fn now_ms(&self) -> u64 {
        match self {
            Time::Fast(c) => c.now_ms(),
            Time::Injected(c) => c.now_ms(),
        }
    }
}

/// Sharded in-memory store. Time comes from the injected clock.
pub struct MemoryStore {
    id: u64,
    shards: Box<[Shard]>,
    hasher: foldhash::fast::RandomState,
    time: Time,
    /// The next shard a thread's periodic sweep takes.
    sweep_next: AtomicUsize,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.len())
            .finish()
    }
}

impl Drop for MemoryStore {
    /// Threads' caches may still hold this store's slots: mark them dead so the caches drop them.
    fn drop(&mut self) {
        for shard in &*self.shards {
            for s in &shard.lock().slots {
                s.dead.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl MemoryStore {
    /// A store reading `clock`; the system clock is read through a [`FastClock`] anchored to it.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        let time = if clock.is_system() {
            Time::Fast(FastClock::new())
        } else {
            Time::Injected(clock)
        };
        Self {
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hasher: foldhash::fast::RandomState::default(),
            time,
            sweep_next: AtomicUsize::new(0),
        }
    }

    /// The store's current time, epoch milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.time.now_ms()
    }

    /// Live (policy, key) entries, expired ones included until swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired entry now.
    pub fn sweep(&self) {
        let now = self.time.now_ms();
        for shard in &*self.shards {
            shard.lock().sweep(now);
        }
    }

    /// The (policy, key) hash and its shard. The shard takes bits 40.. of the hash: hashbrown
    /// uses the low bits for the bucket and the top 7 for its tags, which must stay varied
    /// within a shard.
    #[inline]
    fn locate(&self, policy: &str, key: &str) -> (u64, usize) {
        // Two writes, no `str` terminators: foldhash mixes each write's length in.
        let mut h = self.hasher.build_hasher();
        h.write(policy.as_bytes());
        h.write(key.as_bytes());
        let hash = h.finish();
        (hash, (hash >> 40) as usize % SHARDS)
    }

    /// Which of the 64 shards holds (policy, key) (benchmarks: `examples/decide_min.rs`).
    #[doc(hidden)]
    pub fn shard_index(&self, policy: &str, key: &str) -> usize {
        self.locate(policy, key).1
    }

    /// The common case, one policy: one hash; for a key this thread has seen, one lookup in the
    /// thread's cache and the key's own lock, the state updated in place; no allocation unless
    /// the key is new.
    #[inline]
    pub fn check_one(&self, c: &Check<'_>, cost: u64) -> Decision {
        let now = self.time.now_ms();
        let (hash, i) = self.locate(c.policy, c.key);
        // The closure writes the decision in place and says whether it found a live slot (an
        // `Option<Decision>` return costs extra copies on this path).
        let mut decision = Decision {
            allowed: false,
            limit: 0,
            remaining: 0,
            reset_ms: 0,
            retry_after_ms: 0,
        };
        let mut sweep = false;
        let hit = CACHE
            .try_with(|cache| {
                let mut cache = cache.borrow_mut();
                cache.ops = cache.ops.wrapping_add(1);
                sweep = cache.ops.is_multiple_of(SWEEP_EVERY);
                let Ok(entry) = cache
                    .slots
                    .find_entry(hash, |(id, s)| *id == self.id && s.is(c.policy, c.key))
                else {
                    return false;
                };
                let slot = &entry.get().1;
                let mut held = slot.lock();
                if slot.dead.load(Ordering::Relaxed) {
                    drop(held);
                    entry.remove();
                    return false;
                }
                decision = decide_in(&mut held, c, now, cost);
                true
            })
            // No cache (the thread is exiting): through the shard, every time.
            .unwrap_or(false);
        if !hit {
            decision = self.check_through_shard(hash, i, c, now, cost);
        }
        if sweep {
            self.sweep_one(now);
        }
        decision
    }

    /// The periodic sweep: the next shard in turn drops its expired slots.
    fn sweep_one(&self, now: u64) {
        let i = self.sweep_next.fetch_add(1, Ordering::Relaxed) % SHARDS;
        self.shards[i].lock().sweep(now);
    }

    /// A key this thread has no live slot for: the shard's table, under its lock (slots in it
    /// are live while it is held); the slot found or created goes into the thread's cache.
    #[cold]
    fn check_through_shard(
        &self,
        hash: u64,
        i: usize,
        c: &Check<'_>,
        now: u64,
        cost: u64,
    ) -> Decision {
        let mut table = self.shards[i].lock();
        let (decision, slot) = match table.find(hash, c) {
            Some(slot) => (decide_in(&mut slot.lock(), c, now, cost), slot.clone()),
            None => {
                let (d, state) = engine::decide(&c.limit, None, now, cost);
                if !(d.allowed && cost > 0) {
                    return d;
                }
                let expires_at_ms = now + engine::ttl_ms(&c.limit, &state, now);
                let slot = Slot::new(hash, c.policy, c.key, state, expires_at_ms);
                table.insert(slot.clone());
                (d, slot)
            }
        };
        drop(table);
        let _exiting = CACHE.try_with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.slots.len() >= THREAD_CACHE_MAX {
                cache.slots.retain(|(_, s)| !s.dead.load(Ordering::Relaxed));
                if cache.slots.len() >= THREAD_CACHE_MAX / 2 {
                    cache.slots = HashTable::new();
                }
            }
            cache
                .slots
                .insert_unique(hash, (self.id, slot), |(_, s)| s.hash);
        });
        decision
    }

    /// Several checks decided at one instant, all or nothing: every shard involved is locked
    /// (in index order, so no deadlock), then every slot involved, for the whole decision. One
    /// check goes to [`check_one`](Self::check_one). (Also what benchmarks call.)
    pub fn check_now(&self, checks: &[Check<'_>], cost: u64) -> Vec<Decision> {
        if let [one] = checks {
            return vec![self.check_one(one, cost)];
        }
        let now = self.time.now_ms();
        let located: Vec<(u64, usize)> = checks
            .iter()
            .map(|c| self.locate(c.policy, c.key))
            .collect();
        let mut order: Vec<usize> = located.iter().map(|&(_, i)| i).collect();
        order.sort_unstable();
        order.dedup();
        let mut tables: Vec<(usize, MutexGuard<'_, Table>)> =
            order.iter().map(|&i| (i, self.shards[i].lock())).collect();
        let table_of = |tables: &[(usize, MutexGuard<'_, Table>)], i: usize| {
            tables
                .iter()
                .position(|(t, _)| *t == i)
                .expect("shard locked")
        };
        // The live slots involved (each once, even if two checks name the same one).
        let found: Vec<Option<Arc<Slot>>> = checks
            .iter()
            .zip(&located)
            .map(|(c, &(hash, i))| tables[table_of(&tables, i)].1.find(hash, c).cloned())
            .collect();
        let mut unique: Vec<&Arc<Slot>> = Vec::with_capacity(checks.len());
        for s in found.iter().flatten() {
            if !unique.iter().any(|u| Arc::ptr_eq(u, s)) {
                unique.push(s);
            }
        }
        let mut held: Vec<MutexGuard<'_, Held>> = unique.iter().map(|s| s.lock()).collect();
        let held_of = |s: &Arc<Slot>| {
            unique
                .iter()
                .position(|u| Arc::ptr_eq(u, s))
                .expect("slot locked")
        };
        let mut decisions = Vec::with_capacity(checks.len());
        let mut next = Vec::with_capacity(checks.len());
        for (c, slot) in checks.iter().zip(&found) {
            let current = slot
                .as_ref()
                .map(|s| &*held[held_of(s)])
                .filter(|h| h.expires_at_ms > now)
                .map(|h| &h.state);
            let (d, s) = engine::decide(&c.limit, current, now, cost);
            decisions.push(d);
            next.push(s);
        }
        if cost > 0 && decisions.iter().all(|d| d.allowed) {
            for (((c, &(hash, i)), slot), state) in
                checks.iter().zip(&located).zip(&found).zip(next)
            {
                let expires_at_ms = now + engine::ttl_ms(&c.limit, &state, now);
                if let Some(s) = slot {
                    let h = &mut held[held_of(s)];
                    h.state = state;
                    h.expires_at_ms = expires_at_ms;
                } else {
                    let t = table_of(&tables, i);
                    let table = &mut tables[t].1;
                    // Two checks of one new (policy, key): the second updates the first's slot.
                    match table.find(hash, c) {
                        Some(s) => {
                            let mut h = s.lock();
                            h.state = state;
                            h.expires_at_ms = expires_at_ms;
                        }
                        None => {
                            table.insert(Slot::new(hash, c.policy, c.key, state, expires_at_ms));
                        }
                    }
                }
            }
        }
        drop(held);
        drop(tables);
        let sweep = CACHE
            .try_with(|cache| {
                let mut cache = cache.borrow_mut();
                cache.ops = cache.ops.wrapping_add(1);
                cache.ops.is_multiple_of(SWEEP_EVERY)
            })
            .unwrap_or(false);
        if sweep {
            self.sweep_one(now);
        }
        decisions
    }
}

impl RateLimitStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn check<'a>(
        &'a self,
        checks: &'a [Check<'a>],
        cost: u64,
    ) -> BoxFuture<'a, Result<Vec<Decision>, StoreError>> {
        let decisions = self.check_now(checks, cost);
        async move { Ok(decisions) }.boxed()
    }

    fn check_one_now(&self, check: &Check<'_>, cost: u64) -> Option<Decision> {
        Some(self.check_one(check, cost))
    }

    fn reset<'a>(&'a self, policy: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let (hash, i) = self.locate(policy, key);
        let mut table = self.shards[i].lock();
        if let Ok(e) = table.slots.find_entry(hash, |s| s.is(policy, key)) {
            let held = e.get().lock();
            e.get().dead.store(true, Ordering::Relaxed);
            drop(held);
            e.remove();
        }
        async { Ok(()) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use mortar_core::clock::{ManualClock, SystemClock};

    use super::*;
    use crate::engine::{Algorithm, Limit};

    const T0: u64 = 1_800_000_000_000;

    fn lim(algorithm: Algorithm, limit: u64, window_ms: u64) -> Limit {
        Limit {
            algorithm,
            limit,
            window_ms,
            burst: None,
        }
    }

    fn check<'a>(policy: &'a str, limit: Limit, key: &'a str) -> Check<'a> {
        Check { policy, limit, key }
    }

    #[test]
    fn the_system_clock_is_read_fast_and_injected_clocks_as_they_are() {
        let store = MemoryStore::new(Arc::new(SystemClock));
        assert!(matches!(store.time, Time::Fast(_)));
        assert!(store.now_ms().abs_diff(SystemClock.now_ms()) <= 20);
        let clock = ManualClock::at(T0);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        assert_eq!(store.now_ms(), T0);
        clock.advance(7);
        assert_eq!(store.now_ms(), T0 + 7);
    }

    /// N threads × M checks against a limit of K < N × M on one key, every algorithm:
    /// exactly K allowed, whatever the interleaving.
    #[test]
    fn concurrent_single_checks_admit_exactly_the_limit() {
        const THREADS: usize = 4;
        const CHECKS: usize = 2_000;
        const K: u64 = 3_000;
        for alg in Algorithm::ALL {
            let store = MemoryStore::new(Arc::new(ManualClock::at(T0)));
            let l = lim(alg, K, 60_000);
            let barrier = Barrier::new(THREADS);
            let allowed: usize = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|_| {
                        let (store, barrier) = (&store, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            (0..CHECKS)
                                .filter(|_| store.check_one(&check("p", l, "hot"), 1).allowed)
                                .count()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(allowed as u64, K, "{alg:?}");
        }
    }

    /// Multi-policy checks racing single checks on the same keys: a multi-check takes from
    /// both policies or from neither, so the counts stay tied.
    #[test]
    fn concurrent_multi_checks_stay_all_or_nothing() {
        const THREADS: usize = 4;
        let store = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        let (a, b) = (
            lim(Algorithm::FixedWindow, 500, 60_000),
            lim(Algorithm::TokenBucket, 300, 60_000),
        );
        let barrier = Barrier::new(THREADS);
        let (both, only_b): (u64, u64) = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (store, barrier) = (&store, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let (mut both, mut only_b) = (0, 0);
                        for n in 0..1_000 {
                            if (t + n) % 3 == 0 {
                                only_b +=
                                    u64::from(store.check_one(&check("b", b, "k"), 1).allowed);
                            } else {
                                let d =
                                    store.check_now(&[check("a", a, "k"), check("b", b, "k")], 1);
                                assert_eq!(d.len(), 2);
                                both += u64::from(d.iter().all(|d| d.allowed));
                            }
                        }
                        (both, only_b)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold((0, 0), |(x, y), (p, q)| (x + p, y + q))
        });
        // b admitted exactly 300 in total; a exactly as many as the multi-checks that passed.
        assert_eq!(both + only_b, 300);
        let peek_a = store.check_one(&check("a", a, "k"), 0);
        assert_eq!(peek_a.remaining, 500 - both);
        assert!(!store.check_one(&check("b", b, "k"), 1).allowed);
    }

    #[test]
    fn a_denied_multi_check_takes_nothing_even_across_shards() {
        let store = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        let l = lim(Algorithm::FixedWindow, 2, 1000);
        // Many keys: the policies of one key land on different shards for most of them.
        for i in 0..200 {
            let key = format!("k{i}");
            assert!(
                store
                    .check_one(
                        &check("tight", lim(Algorithm::FixedWindow, 1, 1000), &key),
                        1
                    )
                    .allowed
            );
            let d = store.check_now(
                &[
                    check("loose", l, &key),
                    check("tight", lim(Algorithm::FixedWindow, 1, 1000), &key),
                ],
                1,
            );
            assert!(d[0].allowed && !d[1].allowed, "{key}: {d:?}");
            assert_eq!(
                store.check_one(&check("loose", l, &key), 0).remaining,
                2,
                "{key}"
            );
        }
    }

    #[test]
    fn policies_and_keys_do_not_collide_on_their_concatenation() {
        let store = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        let l = lim(Algorithm::FixedWindow, 1, 1000);
        assert!(store.check_one(&check("ab", l, "c"), 1).allowed);
        assert!(store.check_one(&check("a", l, "bc"), 1).allowed);
        assert!(!store.check_one(&check("ab", l, "c"), 1).allowed);
        assert!(!store.check_one(&check("a", l, "bc"), 1).allowed);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn expired_entries_are_swept_by_traffic_alone() {
        let clock = ManualClock::at(T0);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let l = lim(Algorithm::TokenBucket, 10, 1000);
        for i in 0..10_000 {
            store.check_one(&check("p", l, &format!("old{i}")), 1);
        }
        assert_eq!(store.len(), 10_000);
        clock.advance(1_000);
        // Enough operations on live keys for every shard to reach its sweep.
        let hot: Vec<String> = (0..1_000).map(|i| format!("new{i}")).collect();
        let mut n = 0;
        while !store.is_empty() {
            for _ in 0..10_000 {
                store.check_one(&check("p", l, &hot[n % hot.len()]), 0);
                n += 1;
            }
            assert!(
                n < SHARDS * SWEEP_EVERY as usize * 8,
                "not swept after {n} operations"
            );
        }
        // One shard is swept per 4096 checks on a thread: all 64 take about 64 × 4096.
        assert!(
            n >= (SHARDS - 1) * SWEEP_EVERY as usize,
            "swept after only {n} operations"
        );
        let capacity: usize = store.shards.iter().map(|s| s.lock().slots.capacity()).sum();
        assert!(capacity < 10_000, "tables shrank: {capacity}");
        // Still-live entries survive a sweep.
        store.check_one(&check("p", l, "live"), 1);
        clock.advance(50);
        store.sweep();
        assert_eq!(store.len(), 1);
        clock.advance(100);
        store.sweep();
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn reset_forgets_only_that_policy_and_key() {
        let store = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        let l = lim(Algorithm::FixedWindow, 1, 1000);
        for (p, k) in [("p", "k"), ("p", "k2"), ("q", "k")] {
            assert!(store.check_one(&check(p, l, k), 1).allowed);
        }
        futures_util::FutureExt::now_or_never(store.reset("p", "k"))
            .unwrap()
            .unwrap();
        assert_eq!(store.len(), 2);
        assert!(store.check_one(&check("p", l, "k"), 1).allowed);
        assert!(!store.check_one(&check("p", l, "k2"), 1).allowed);
        assert!(!store.check_one(&check("q", l, "k"), 1).allowed);
    }

    /// A slot cached by another thread is not used once the store has let it go (reset or
    /// sweep): that thread starts from fresh state, and the store holds one entry, not two.
    #[test]
    fn a_cached_slot_is_dropped_by_reset_and_sweep_for_every_thread() {
        let clock = ManualClock::at(T0);
        let store = MemoryStore::new(Arc::new(clock.clone()));
        let l = lim(Algorithm::FixedWindow, 1, 1000);
        let other = |f: &(dyn Fn(&MemoryStore) + Sync)| {
            std::thread::scope(|s| s.spawn(|| f(&store)).join().unwrap());
        };
        // Both threads have the slot cached.
        assert!(store.check_one(&check("p", l, "k"), 1).allowed);
        other(&|st| assert!(!st.check_one(&check("p", l, "k"), 1).allowed));
        assert!(!store.check_one(&check("p", l, "k"), 1).allowed);
        futures_util::FutureExt::now_or_never(store.reset("p", "k"))
            .unwrap()
            .unwrap();
        assert!(
            store.check_one(&check("p", l, "k"), 1).allowed,
            "fresh after reset"
        );
        assert!(!store.check_one(&check("p", l, "k"), 1).allowed);
        assert_eq!(store.len(), 1);
        // Expire it, sweep; the other thread's cached slot is dead, its next check starts over.
        clock.advance(1000);
        store.sweep();
        assert!(store.is_empty());
        clock.advance(1); // a new aligned window, but state is what is tested: the entry is gone
        other(&|st| assert!(st.check_one(&check("p", l, "k"), 1).allowed));
        assert!(
            !store.check_one(&check("p", l, "k"), 1).allowed,
            "this thread sees the other's new slot"
        );
        assert_eq!(store.len(), 1);
    }

    /// Two stores used by one thread share its cache, never their state.
    #[test]
    fn stores_are_independent_through_the_thread_cache() {
        let l = lim(Algorithm::FixedWindow, 1, 1000);
        let a = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        let b = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        assert!(a.check_one(&check("p", l, "k"), 1).allowed);
        assert!(b.check_one(&check("p", l, "k"), 1).allowed);
        assert!(!a.check_one(&check("p", l, "k"), 1).allowed);
        assert!(!b.check_one(&check("p", l, "k"), 1).allowed);
        drop(a);
        let c = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        assert!(c.check_one(&check("p", l, "k"), 1).allowed);
        assert!(!b.check_one(&check("p", l, "k"), 1).allowed);
    }

    /// More keys than a thread's cache holds: decisions stay exact as the cache is emptied.
    #[test]
    fn the_thread_cache_is_bounded() {
        let store = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        let l = lim(Algorithm::FixedWindow, 1, 60_000);
        let n = THREAD_CACHE_MAX + THREAD_CACHE_MAX / 2;
        let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        for k in &keys {
            assert!(store.check_one(&check("p", l, k), 1).allowed, "{k}");
        }
        let cached = CACHE.with(|c| c.borrow().slots.len());
        assert!(cached <= THREAD_CACHE_MAX, "{cached}");
        for k in &keys {
            assert!(!store.check_one(&check("p", l, k), 1).allowed, "{k}");
        }
        assert_eq!(store.len(), n);
    }

    /// A multi-check naming the same (policy, key) twice neither deadlocks nor double-creates.
    #[test]
    fn a_multi_check_may_name_one_slot_twice() {
        let store = MemoryStore::new(Arc::new(ManualClock::at(T0)));
        let l = lim(Algorithm::FixedWindow, 3, 1000);
        let twice = [check("p", l, "k"), check("p", l, "k")];
        assert!(store.check_now(&twice, 1).iter().all(|d| d.allowed));
        assert_eq!(store.len(), 1);
        assert!(store.check_now(&twice, 1).iter().all(|d| d.allowed));
        assert_eq!(store.check_one(&check("p", l, "k"), 0).remaining, 1);
    }
}
