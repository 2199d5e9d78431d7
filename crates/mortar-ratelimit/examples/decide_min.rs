//! The `decide` bench's comparison timed as the **minimum** over 300 rounds of 20 000 calls,
//! not criterion's mean: on a machine shared with other work, preemption inflates means (and
//! not equally for the two libraries, which run at different moments), while the fastest round
//! is one that ran undisturbed. Same quota, same keys, same checks as `benches/decide.rs`.
//!
//! Two threads are also run on one store with keys chosen so the threads use disjoint shards,
//! and on a store each: the difference from the shared case is what cache lines moving between
//! the cores (shard locks, entries) cost.
//!
//! Run: `cargo run --profile bench -p mortar-ratelimit --example decide_min` (~30 s).
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use governor::{Quota, RateLimiter};
use mortar_core::clock::{Clock, FastClock, ManualClock, SystemClock};
use mortar_ratelimit::engine::{Algorithm, Limit};
use mortar_ratelimit::store::Check;
use mortar_ratelimit::store::memory::MemoryStore;

const LIMIT: Limit = Limit {
    algorithm: Algorithm::TokenBucket,
    limit: 1_000_000_000,
    window_ms: 1000,
    burst: None,
};

fn min_ns(mut f: impl FnMut(usize)) -> f64 {
    let n = 20_000;
    let mut best = f64::MAX;
    for _ in 0..300 {
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    best
}

fn two<S: Sync>(
    shared: &S,
    keys: &[Vec<String>; 2],
    check: impl Fn(&S, &String) -> bool + Sync,
) -> f64 {
    let n = 20_000usize;
    let mut best = f64::MAX;
    for _ in 0..300 {
        let barrier = std::sync::Barrier::new(2);
        let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
            let hs: Vec<_> = keys
                .iter()
                .map(|ks| {
                    let (barrier, check) = (&barrier, &check);
                    s.spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        for i in 0..n {
                            black_box(check(shared, black_box(&ks[i % 1000])));
                        }
                        (start, Instant::now())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let start = spans.iter().map(|s| s.0).min().unwrap();
        let end = spans.iter().map(|s| s.1).max().unwrap();
        best = best.min((end - start).as_nanos() as f64 / n as f64);
    }
    best
}

/// One allowed-or-not check of `key` against the bench policy.
#[inline]
fn allow(store: &MemoryStore, key: &str) -> bool {
    store
        .check_one(
            &Check {
                policy: "bench",
                limit: LIMIT,
                key,
            },
            1,
        )
        .allowed
}

fn main() {
    let per: [Vec<String>; 2] =
        [0, 1].map(|t| (0..1000).map(|i| format!("t{t}:user:{i}")).collect());
    let keys: Vec<String> = (0..1000).map(|i| format!("user:{i}")).collect();
    let key = String::from("user:42");
    for round in 0..2 {
        let store = MemoryStore::new(Arc::new(SystemClock));
        let m_same = min_ns(|_| {
            black_box(allow(&store, black_box(&key)));
        });
        let m_1000 = min_ns(|i| {
            black_box(allow(&store, black_box(&keys[i % 1000])));
        });
        let ms = MemoryStore::new(Arc::new(ManualClock::at(1_800_000_000_000)));
        let m_man = min_ns(|_| {
            black_box(allow(&ms, black_box(&key)));
        });
        let lim = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
        let g_same = min_ns(|_| {
            black_box(lim.check_key(black_box(&key)).is_ok());
        });
        let g_1000 = min_ns(|i| {
            black_box(lim.check_key(black_box(&keys[i % 1000])).is_ok());
        });
        let fc = FastClock::new();
        let c_fast = min_ns(|_| {
            black_box(black_box(&fc).now_ms());
        });
        let quanta_clock = governor::clock::DefaultClock::default();
        let c_q = min_ns(|_| {
            black_box(governor::clock::Clock::now(black_box(&quanta_clock)));
        });
        println!(
            "round {round}: mortar same {m_same:.1} 1000 {m_1000:.1} manual {m_man:.1} | governor same {g_same:.1} 1000 {g_1000:.1} | ratio same {:.2} 1000 {:.2} | fastclock {c_fast:.1} quanta {c_q:.1}",
            m_same / g_same,
            m_1000 / g_1000
        );
        let store = MemoryStore::new(Arc::new(SystemClock));
        let shared = two(&store, &per, |s, k| allow(s, k));
        let lim = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
        let g = two(&lim, &per, |l, k| l.check_key(k).is_ok());
        println!(
            "  two threads: mortar {shared:.1} ns/iter (scaling {:.2}x) governor {g:.1} (scaling {:.2}x)",
            2.0 * m_1000 / shared,
            2.0 * g_1000 / g
        );
        // Reference: what the machine gives two threads that share nothing (a store each).
        let stores = [
            MemoryStore::new(Arc::new(SystemClock)),
            MemoryStore::new(Arc::new(SystemClock)),
        ];
        let apart = two(&stores, &per, |s, k| {
            let store = &s[usize::from(k.starts_with("t1"))];
            allow(store, k)
        });
        let store = MemoryStore::new(Arc::new(SystemClock));
        let mut split: [Vec<String>; 2] = [Vec::new(), Vec::new()];
        for (t, keys) in split.iter_mut().enumerate() {
            let mut i = 0;
            while keys.len() < 1000 {
                let k = format!("t{t}:user:{i}");
                if store.shard_index("bench", &k) % 2 == t {
                    keys.push(k);
                }
                i += 1;
            }
        }
        let disjoint = two(&store, &split, |s, k| allow(s, k));
        println!(
            "  two threads, one store, disjoint shards: {disjoint:.1} ns/iter (scaling {:.2}x)",
            2.0 * m_1000 / disjoint
        );
        println!(
            "  two threads, a store each (nothing shared): {apart:.1} ns/iter (scaling {:.2}x)",
            2.0 * m_1000 / apart
        );
    }
}
