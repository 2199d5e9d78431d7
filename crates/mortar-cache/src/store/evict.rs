//! Sampled eviction (as Redis does): picking the worst of a few random entries of a shard by
//! LRU stamp or sketch frequency, TinyLFU admission, and spilling to other shards.

use std::sync::atomic::Ordering;

use super::{Inner, Now, Policy, Shard, Table, shrink_if_sparse};

/// Entries sampled per eviction (Redis's `maxmemory-samples` default is 5).
const SAMPLES: usize = 8;

impl Inner {
    /// Whether a new key of `size` bytes gets in. TinyLFU frees room in the shard first, only by
    /// evicting keys the sketch says are no more popular than the newcomer; the others say yes.
    pub(super) fn admit(
        &self,
        shard: &Shard,
        t: &mut Table,
        hash: u64,
        size: u64,
        now: &mut Now,
        freed_total: &mut u64,
    ) -> bool {
        let (Policy::TinyLfu, Some(sketch)) = (self.policy, &shard.sketch) else {
            // LRU and LFU admit every key and evict after the insert.
            return true;
        };
        let candidate = sketch.frequency(hash);
        while self.used.load(Ordering::Relaxed) + size > self.max_memory + *freed_total {
            let Some(v) = self.victim(shard, t, None, now) else {
                // Nothing here to evict: room comes from other shards after the insert.
                return true;
            };
            if !v.expired && v.freq > candidate {
                return false;
            }
            *freed_total += self.remove_at(t, v.index, v.expired);
        }
        true
    }

    /// Evicts (or reclaims, if expired) the worst of a sample of the shard; `None` if the shard
    /// has nothing to give (apart from `keep`).
    pub(super) fn evict_one(
        &self,
        shard: &Shard,
        t: &mut Table,
        keep: Option<usize>,
        now: &mut Now,
    ) -> Option<u64> {
        let v = self.victim(shard, t, keep, now)?;
        Some(self.remove_at(t, v.index, v.expired))
    }

    fn remove_at(&self, t: &mut Table, index: usize, expired: bool) -> u64 {
        let Ok(o) = t.map.get_bucket_entry(index) else {
            return 0;
        };
        let (e, _) = o.remove();
        t.volatile -= usize::from(e.expires_at_ms != 0);
        let counter = if expired {
            &self.stats.expired
        } else {
            &self.stats.evicted
        };
        counter.fetch_add(1, Ordering::Relaxed);
        e.size()
    }

    /// The worst of `SAMPLES` random entries (an expired one wins outright).
    fn victim(
        &self,
        shard: &Shard,
        t: &Table,
        keep: Option<usize>,
        now: &mut Now,
    ) -> Option<Victim> {
        let n = t.map.num_buckets();
        if t.map.len() <= usize::from(keep.is_some()) {
            return None;
        }
        let clock = shard.clock.load(Ordering::Relaxed);
        let mut best: Option<Victim> = None;
        for _ in 0..SAMPLES {
            // The first occupied bucket from a random start (Redis samples the same way).
            let mut i = fastrand::usize(..n);
            let mut found = None;
            for _ in 0..n {
                if Some(i) != keep
                    && let Some(e) = t.map.get_bucket(i)
                {
                    found = Some(e);
                    break;
                }
                i = (i + 1) & (n - 1);
            }
            let e = found?;
            if e.expired(now) {
                return Some(Victim {
                    index: i,
                    expired: true,
                    freq: 0,
                    age: 0,
                });
            }
            let age = clock.wrapping_sub(e.stamp.load(Ordering::Relaxed));
            let freq = shard
                .sketch
                .as_ref()
                .map_or(0, |s| s.frequency(self.hash(e.key())));
            let worse = best.as_ref().is_none_or(|b| {
                (freq, std::cmp::Reverse(age)) < (b.freq, std::cmp::Reverse(b.age))
            });
            if worse {
                best = Some(Victim {
                    index: i,
                    expired: false,
                    freq,
                    age,
                });
            }
        }
        best
    }

    /// Evicts from shards other than `skip` until the store is back under its bound.
    pub(super) fn evict_elsewhere(&self, skip: usize) {
        let mut now = Now::new();
        let mut empty_in_a_row = 0;
        let mut si = skip;
        while self.used.load(Ordering::Relaxed) > self.max_memory
            && empty_in_a_row < self.shards.len()
        {
            si = (si + 1) & self.shard_mask;
            if si == skip {
                continue;
            }
            let shard = &self.shards[si];
            let mut t = shard.table.write();
            if let Some(freed) = self.evict_one(shard, &mut t, None, &mut now) {
                self.used.fetch_sub(freed, Ordering::Relaxed);
                shrink_if_sparse(&mut t, self.rehash());
                empty_in_a_row = 0;
            } else {
                empty_in_a_row += 1;
            }
        }
    }
}

struct Victim {
    index: usize,
    expired: bool,
    freq: u8,
    age: u32,
}
