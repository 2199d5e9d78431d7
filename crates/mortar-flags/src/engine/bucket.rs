//! Bucketing: a context's bucket (murmur3 of salt and bucket-by value, 0.01 % resolution), and
//! the split layout mapping buckets to variants so that rollouts are monotone.
//!
//! The layout of a split of `k` variants: the last is the *rest*; each other variant `i` owns
//! the lane `[i·B/(k−1), (i+1)·B/(k−1))` (`B` = [`BUCKETS`]) and takes the first
//! `min(weight, lane)` buckets of it. What a variant wants beyond its lane is taken from the
//! buckets the lanes leave free, from the top of the range down, in variant order; the rest
//! gets what is left. A variant's in-lane buckets therefore depend on its own weight only.

use std::io::Read;

/// Buckets per split: weights are in hundredths of a percent.
pub const BUCKETS: u16 = 10_000;

/// The bucket of `value` under `salt`: `murmur3_x86_32(salt ":" value, 0) × BUCKETS / 2³²`.
pub fn bucket(salt: &str, value: &str) -> u16 {
    let mut input = salt.as_bytes().chain(&b":"[..]).chain(value.as_bytes());
    let hash = murmur3::murmur3_32(&mut input, 0).unwrap_or_default();
    ((u64::from(hash) * u64::from(BUCKETS)) >> 32) as u16
}

/// The bucket → slot map of one split: slots are the split's variants in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Intervals covering `0..BUCKETS` in order: (end, exclusive; slot).
    ends: Vec<(u16, u16)>,
}

impl Layout {
    /// The layout of `weights` (in buckets, summing to [`BUCKETS`]); `None` when they do not.
    pub fn new(weights: &[u16]) -> Option<Self> {
        let total: u32 = weights.iter().map(|&w| u32::from(w)).sum();
        if weights.is_empty()
            || weights.len() > usize::from(u16::MAX)
            || total != u32::from(BUCKETS)
        {
            return None;
        }
        let k = weights.len();
        let rest = (k - 1) as u16;
        if k == 1 {
            return Some(Self {
                ends: vec![(BUCKETS, 0)],
            });
        }
        // (start, end, slot)
        let mut taken: Vec<(u16, u16, u16)> = Vec::with_capacity(2 * k);
        let mut free: Vec<(u16, u16)> = Vec::with_capacity(k);
        let mut overflow: Vec<(u16, u16)> = Vec::new();
        for (i, &w) in weights[..k - 1].iter().enumerate() {
            let lane = Self::lane(k, i);
            let len = lane.1 - lane.0;
            let own = w.min(len);
            if own > 0 {
                taken.push((lane.0, lane.0 + own, i as u16));
            }
            if own < len {
                free.push((lane.0 + own, lane.1));
            }
            if w > len {
                overflow.push((i as u16, w - len));
            }
        }
        for (slot, mut need) in overflow {
            while need > 0 {
                // The weights sum to BUCKETS, so the free space holds every overflow.
                let Some(last) = free.last_mut() else { break };
                let take = need.min(last.1 - last.0);
                taken.push((last.1 - take, last.1, slot));
                last.1 -= take;
                need -= take;
                if last.0 == last.1 {
                    free.pop();
                }
            }
        }
        taken.extend(free.into_iter().map(|(s, e)| (s, e, rest)));
        taken.sort_unstable();
        let mut ends: Vec<(u16, u16)> = Vec::with_capacity(taken.len());
        for (_, end, slot) in taken {
            match ends.last_mut() {
                Some(last) if last.1 == slot => last.0 = end,
                _ => ends.push((end, slot)),
            }
        }
        Some(Self { ends })
    }

    /// Lane `i` of a split of `k` variants (`i < k − 1`): `[start, end)`.
    pub fn lane(k: usize, i: usize) -> (u16, u16) {
        let lanes = (k - 1) as u32;
        let at = |i: usize| (i as u32 * u32::from(BUCKETS) / lanes) as u16;
        (at(i), at(i + 1))
    }

    /// The slot of `bucket` (`< BUCKETS`).
    pub fn slot(&self, bucket: u16) -> usize {
        let i = self.ends.partition_point(|&(end, _)| end <= bucket);
        usize::from(self.ends[i.min(self.ends.len() - 1)].1)
    }
}

#[cfg(test)]
mod tests;
