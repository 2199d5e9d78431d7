//! In-process state: sharded maps, no global lock. The embedded default.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::future::{BoxFuture, FutureExt};
use mortar_core::clock::Clock;

use super::{Check, RateLimitStore, StoreError};
use crate::engine::{self, Decision, State};

const SHARDS: usize = 64;
/// Every this many operations on a shard, its expired entries are dropped.
const SWEEP_EVERY: u32 = 4096;

struct Entry {
    state: State,
    expires_at_ms: u64,
}

#[derive(Default)]
struct Shard {
    /// policy → key → state. Nested so lookups by `&str` need no allocation.
    map: HashMap<Box<str>, HashMap<Box<str>, Entry>>,
}

/// Sharded in-memory store. Time comes from the injected clock.
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    ops: Box<[AtomicU32]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.len())
            .finish()
    }
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            ops: (0..SHARDS).map(|_| AtomicU32::new(0)).collect(),
            hasher: RandomState::new(),
            clock,
        }
    }

    /// Live (policy, key) entries, expired ones included until swept.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).map.values().map(HashMap::len).sum::<usize>())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired entry now.
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        for shard in &*self.shards {
            sweep(&mut lock(shard), now);
        }
    }

    fn shard_of(&self, policy: &str, key: &str) -> usize {
        (self.hasher.hash_one((policy, key)) as usize) % SHARDS
    }

    /// The synchronous core (also what benchmarks call).
    pub fn check_now(&self, checks: &[Check<'_>], cost: u64) -> Vec<Decision> {
        if let [one] = checks {
            return vec![self.check_one(one, cost)];
        }
        let now = self.clock.now_ms();
        let idx: Vec<usize> = checks
            .iter()
            .map(|c| self.shard_of(c.policy, c.key))
            .collect();
        let mut order = idx.clone();
        order.sort_unstable();
        order.dedup();
        // Lock every shard involved, in index order (no deadlock), for an atomic decision.
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, lock(&self.shards[i]))).collect();
        let guard_of = |guards: &mut Vec<(usize, MutexGuard<'_, Shard>)>, i: usize| {
            guards
                .iter()
                .position(|(g, _)| *g == i)
                .expect("shard locked")
        };
        let mut decisions = Vec::with_capacity(checks.len());
        let mut next = Vec::with_capacity(checks.len());
        for (c, &i) in checks.iter().zip(&idx) {
            let g = guard_of(&mut guards, i);
            let shard = &guards[g].1;
            let current = shard
                .map
                .get(c.policy)
                .and_then(|m| m.get(c.key))
                .filter(|e| e.expires_at_ms > now)
                .map(|e| &e.state);
            let (d, s) = engine::decide(&c.limit, current, now, cost);
            decisions.push(d);
            next.push(s);
        }
        if cost > 0 && decisions.iter().all(|d| d.allowed) {
            for ((c, &i), state) in checks.iter().zip(&idx).zip(next) {
                let g = guard_of(&mut guards, i);
                let expires_at_ms = now + engine::ttl_ms(&c.limit, &state, now);
                let shard = &mut guards[g].1;
                let per_policy = match shard.map.get_mut(c.policy) {
                    Some(m) => m,
                    None => shard.map.entry(c.policy.into()).or_default(),
                };
                match per_policy.get_mut(c.key) {
                    Some(e) => {
                        *e = Entry {
                            state,
                            expires_at_ms,
                        }
                    }
                    None => {
                        per_policy.insert(
                            c.key.into(),
                            Entry {
                                state,
                                expires_at_ms,
                            },
                        );
                    }
                }
            }
        }
        for (i, guard) in &mut guards {
            if self.ops[*i].fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
                sweep(guard, now);
            }
        }
        decisions
    }
}

impl MemoryStore {
    /// The common case, one policy: one lock, one lookup, the state updated in place.
    pub fn check_one(&self, c: &Check<'_>, cost: u64) -> Decision {
        let now = self.clock.now_ms();
        let i = self.shard_of(c.policy, c.key);
        let mut shard = lock(&self.shards[i]);
        let entry = shard.map.get_mut(c.policy).and_then(|m| m.get_mut(c.key));
        let decision = match entry {
            Some(e) => {
                let current = (e.expires_at_ms > now).then_some(&e.state);
                let (d, state) = engine::decide(&c.limit, current, now, cost);
                if d.allowed && cost > 0 {
                    e.expires_at_ms = now + engine::ttl_ms(&c.limit, &state, now);
                    e.state = state;
                }
                d
            }
            None => {
                let (d, state) = engine::decide(&c.limit, None, now, cost);
                if d.allowed && cost > 0 {
                    let expires_at_ms = now + engine::ttl_ms(&c.limit, &state, now);
                    shard.map.entry(c.policy.into()).or_default().insert(
                        c.key.into(),
                        Entry {
                            state,
                            expires_at_ms,
                        },
                    );
                }
                d
            }
        };
        if self.ops[i].fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            sweep(&mut shard, now);
        }
        decision
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sweep(shard: &mut Shard, now: u64) {
    for keys in shard.map.values_mut() {
        keys.retain(|_, e| e.expires_at_ms > now);
    }
    shard.map.retain(|_, keys| !keys.is_empty());
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

    fn reset<'a>(&'a self, policy: &'a str, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut shard = lock(&self.shards[self.shard_of(policy, key)]);
        if let Some(keys) = shard.map.get_mut(policy) {
            keys.remove(key);
        }
        async { Ok(()) }.boxed()
    }
}
