//! The background TTL sweep: a thread, started with the first TTL'd entry, that reclaims
//! expired entries a few hundred buckets at a time (Redis's active expiry cycle).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::{Entry, Inner, Table, now_ms, shrink_if_sparse};

/// Buckets the TTL sweep looks at per shard per round.
const SWEEP_BUCKETS: usize = 256;
const SWEEP_EVERY: Duration = Duration::from_millis(100);

impl Inner {
    /// Starts the TTL sweep thread once (it stops when the store is dropped).
    pub(super) fn start_sweeper(&self) {
        if self.sweeper.load(Ordering::Relaxed) || self.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("mortar-cache-ttl".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(SWEEP_EVERY);
                    let Some(inner) = weak.upgrade() else { return };
                    inner.sweep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cache: cannot start the TTL sweep thread; expired entries are reclaimed on access and eviction only");
        }
    }

    /// Reclaims expired entries: per shard with TTL'd entries, `SWEEP_BUCKETS` buckets from
    /// where the last pass stopped, and again while more than a quarter of the TTL'd entries
    /// seen had expired (up to a whole table).
    pub(super) fn sweep(&self) -> u64 {
        let mut reclaimed = 0;
        let now = now_ms();
        for shard in &self.shards {
            if shard.table.read().volatile == 0 {
                continue;
            }
            let mut garbage = Vec::new();
            let freed =
                Self::sweep_table(&mut shard.table.write(), now, &mut garbage, self.rehash());
            // The buffers are freed here, after the lock.
            if freed > 0 {
                self.used.fetch_sub(freed, Ordering::Relaxed);
                self.stats
                    .expired
                    .fetch_add(garbage.len() as u64, Ordering::Relaxed);
                reclaimed += garbage.len() as u64;
            }
        }
        reclaimed
    }

    fn sweep_table(
        table: &mut Table,
        now: u64,
        garbage: &mut Vec<Bytes>,
        rehash: impl Fn(&Entry) -> u64,
    ) -> u64 {
        let mut freed = 0;
        let mut scanned = 0;
        loop {
            let buckets = table.map.num_buckets();
            if buckets == 0 || table.volatile == 0 {
                break;
            }
            let (mut seen, mut gone) = (0, 0);
            for _ in 0..SWEEP_BUCKETS.min(buckets) {
                let index = table.cursor & (buckets - 1);
                table.cursor = index + 1;
                let Some(entry) = table.map.get_bucket(index) else {
                    continue;
                };
                if entry.expires_at_ms == 0 {
                    continue;
                }
                seen += 1;
                if entry.expires_at_ms <= now
                    && let Ok(slot) = table.map.get_bucket_entry(index)
                {
                    let (entry, _) = slot.remove();
                    table.volatile -= 1;
                    freed += entry.size();
                    gone += 1;
                    garbage.push(entry.buf);
                }
            }
            scanned += SWEEP_BUCKETS;
            if gone * 4 <= seen || scanned >= buckets {
                break;
            }
        }
        shrink_if_sparse(table, rehash);
        freed
    }
}
