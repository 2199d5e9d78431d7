//! A count-min sketch with 4-bit counters and periodic halving: the frequency estimate TinyLFU
//! admission compares (Caffeine's `FrequencySketch` layout).
//!
//! The table is `u64` words of sixteen 4-bit counters, grouped in 64-byte blocks of eight words.
//! A key picks one block from its hash and four counters inside it (one in each pair of words), so
//! recording or estimating touches a single cache line. The counters are atomics updated with
//! relaxed load + store: two threads bumping the same word at once can lose an increment, which a
//! frequency *estimate* tolerates, and in exchange a read records itself without a lock or a
//! channel. After `period` recordings every counter is halved, so old popularity fades.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const RESET_MASK: u64 = 0x7777_7777_7777_7777;

pub(crate) struct Sketch {
    table: Box<[AtomicU64]>,
    /// Blocks − 1 (the block count is a power of two).
    block_mask: usize,
    additions: AtomicU32,
    period: u32,
}

impl Sketch {
    /// A sketch for about `entries` distinct keys (one word per key, as Caffeine sizes it).
    pub(crate) fn new(entries: usize) -> Self {
        let words = entries.clamp(8, 1 << 24).next_power_of_two();
        Self {
            table: (0..words).map(|_| AtomicU64::new(0)).collect(),
            block_mask: words / 8 - 1,
            additions: AtomicU32::new(0),
            period: (words as u32).saturating_mul(10),
        }
    }

    /// The four (word, shift) counter positions of a hash.
    #[inline]
    fn slots(&self, hash: u64) -> [(usize, u32); 4] {
        let block = (hash as usize & self.block_mask) << 3;
        // A second, independent-looking hash picks the counters inside the block.
        let h = (hash ^ (hash >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        std::array::from_fn(|i| {
            let x = (h >> (i << 3)) as usize;
            let word = block + (x & 1) + (i << 1);
            let counter = (x >> 1) & 15;
            (word, (counter << 2) as u32)
        })
    }

    /// Counts one occurrence of `hash`.
    #[inline]
    pub(crate) fn increment(&self, hash: u64) {
        let mut added = false;
        for (word, shift) in self.slots(hash) {
            let w = &self.table[word];
            let v = w.load(Ordering::Relaxed);
            if (v >> shift) & 0xF < 15 {
                w.store(v + (1 << shift), Ordering::Relaxed);
                added = true;
            }
        }
        if added && self.additions.fetch_add(1, Ordering::Relaxed) + 1 >= self.period {
            self.reset();
        }
    }

    /// The estimated count of `hash` (0..=15).
    #[inline]
    pub(crate) fn frequency(&self, hash: u64) -> u8 {
        self.slots(hash)
            .into_iter()
            .map(|(word, shift)| ((self.table[word].load(Ordering::Relaxed) >> shift) & 0xF) as u8)
            .min()
            .unwrap_or(0)
    }

    /// Halves every counter (ages the history).
    fn reset(&self) {
        // One thread does it; a reader racing past the threshold meanwhile just skips.
        let n = self.additions.load(Ordering::Relaxed);
        if n < self.period
            || self
                .additions
                .compare_exchange(n, self.period / 2, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for w in &self.table {
            let v = w.load(Ordering::Relaxed);
            w.store((v >> 1) & RESET_MASK, Ordering::Relaxed);
        }
    }

    pub(crate) fn clear(&self) {
        for w in &self.table {
            w.store(0, Ordering::Relaxed);
        }
        self.additions.store(0, Ordering::Relaxed);
    }

    /// Bytes of counters.
    pub(crate) fn bytes(&self) -> usize {
        self.table.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> u64 {
        use std::hash::BuildHasher;
        foldhash::fast::FixedState::with_seed(7).hash_one(i)
    }

    #[test]
    fn counts_saturate_at_15_and_halve() {
        let s = Sketch::new(1024);
        for _ in 0..20 {
            s.increment(h(1));
        }
        assert_eq!(s.frequency(h(1)), 15);
        assert_eq!(s.frequency(h(2)), 0);
        for _ in 0..3 {
            s.increment(h(2));
        }
        assert_eq!(s.frequency(h(2)), 3);
        s.additions.store(s.period, Ordering::Relaxed);
        s.reset();
        assert_eq!(s.frequency(h(1)), 7);
        assert_eq!(s.frequency(h(2)), 1);
    }

    #[test]
    fn estimates_rarely_overcount_unseen_keys() {
        let s = Sketch::new(4096);
        for i in 0..4096 {
            s.increment(h(i));
        }
        let over = (10_000..20_000).filter(|&i| s.frequency(h(i)) > 1).count();
        assert!(over < 500, "{over} of 10000 unseen keys estimated > 1");
    }

    #[test]
    fn aging_happens_after_the_period() {
        let s = Sketch::new(64);
        for _ in 0..10 {
            s.increment(h(42));
        }
        assert_eq!(s.frequency(h(42)), 10);
        // Enough other recordings to cross the period at least once.
        for i in 0..u64::from(s.period) {
            s.increment(h(1000 + i));
        }
        assert!(s.frequency(h(42)) < 10);
    }
}
