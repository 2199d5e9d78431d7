//! In-process rate-limit decisions: Mortar's `MemoryStore::check_one` (what the service calls
//! for a one-policy check on the memory backend) vs governor's keyed limiter
//! (`RateLimiter::keyed` + `check_key`), both with `String` keys, both with quotas so large that
//! every call is allowed (the common, hot path).
//!
//! Groups:
//! * `single/*` — one thread; the same key every call, and 1000 distinct keys round-robin.
//! * `two_threads/*` — two std threads at once, each with its own 1000 keys (distinct between
//!   threads); one iteration = one decision on **each** thread, timed by wall clock from the
//!   first thread's start to the last one's end. Perfect scaling shows the same time per
//!   iteration as `single/*/1000_keys`.
//! * `single/mortar_check_now/same_key` — the same through `check_now` (the `&[Check]` API,
//!   which returns a `Vec`).
//! * `clock/*` — what the clocks cost alone (`SystemClock`; the `FastClock` the store reads in
//!   its place; governor's quanta clock).
//!
//! Run: `cargo bench -p mortar-ratelimit --bench decide` (under a minute on 2 cores).
//! Results and the mortar/governor ratio are recorded in `bench/RESULTS.md`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mortar_core::clock::{Clock, FastClock, ManualClock, SystemClock};
use mortar_ratelimit::engine::{Algorithm, Limit};
use mortar_ratelimit::store::Check;
use mortar_ratelimit::store::memory::MemoryStore;

const POLICY: &str = "bench";
const KEYS: usize = 1000;

/// 10⁹ per second, the largest limit Mortar accepts. GCRA adds one emission interval
/// (clamped to 1 µs) per call to a key's TAT against a bucket of 10⁹ µs (1000 s), so a key
/// stays allowed for far longer than any run here; each benchmark checks that it did.
const LIMIT: Limit = Limit {
    algorithm: Algorithm::TokenBucket,
    limit: 1_000_000_000,
    window_ms: 1000,
    burst: None,
};

/// Governor's equivalent: 10⁹ per second, burst 10⁹ (1 ns emission interval).
fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(1_000_000_000).expect("non-zero"))
}

fn mortar(clock: Arc<dyn Clock>) -> MemoryStore {
    MemoryStore::new(clock)
}

fn governor() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(quota())
}

fn keys(prefix: &str) -> Vec<String> {
    (0..KEYS).map(|i| format!("{prefix}user:{i}")).collect()
}

#[inline]
fn mortar_check(store: &MemoryStore, key: &str) -> bool {
    let check = Check {
        policy: POLICY,
        limit: LIMIT,
        key,
    };
    store.check_one(&check, 1).allowed
}

#[inline]
fn mortar_check_now(store: &MemoryStore, key: &str) -> bool {
    let checks = [Check {
        policy: POLICY,
        limit: LIMIT,
        key,
    }];
    store.check_now(&checks, 1)[0].allowed
}

#[inline]
fn governor_check(lim: &DefaultKeyedRateLimiter<String>, key: &String) -> bool {
    lim.check_key(key).is_ok()
}

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("single");
    g.throughput(Throughput::Elements(1));

    // Same key every call.
    let key = String::from("user:42");
    {
        let store = mortar(Arc::new(SystemClock));
        g.bench_function("mortar/same_key", |b| {
            b.iter(|| mortar_check(&store, black_box(&key)));
        });
        assert!(mortar_check(&store, &key), "mortar denied: quota too small");
    }
    {
        let lim = governor();
        g.bench_function("governor/same_key", |b| {
            b.iter(|| governor_check(&lim, black_box(&key)));
        });
        assert!(
            governor_check(&lim, &key),
            "governor denied: quota too small"
        );
    }
    {
        let store = mortar(Arc::new(SystemClock));
        g.bench_function("mortar_check_now/same_key", |b| {
            b.iter(|| mortar_check_now(&store, black_box(&key)));
        });
        assert!(mortar_check_now(&store, &key), "mortar denied");
    }
    // Mortar with a clock that costs an atomic load: how much of the time is the clock.
    {
        let store = mortar(Arc::new(ManualClock::at(1_800_000_000_000)));
        g.bench_function("mortar_manual_clock/same_key", |b| {
            b.iter(|| mortar_check(&store, black_box(&key)));
        });
        assert!(mortar_check(&store, &key), "mortar denied: quota too small");
    }

    // 1000 distinct keys, round-robin (entries created during warm-up, then updated).
    let ks = keys("");
    {
        let store = mortar(Arc::new(SystemClock));
        let mut i = 0;
        g.bench_function("mortar/1000_keys", |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                mortar_check(&store, black_box(&ks[i]))
            });
        });
        assert!(ks.iter().all(|k| mortar_check(&store, k)), "mortar denied");
    }
    {
        let lim = governor();
        let mut i = 0;
        g.bench_function("governor/1000_keys", |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                governor_check(&lim, black_box(&ks[i]))
            });
        });
        assert!(
            ks.iter().all(|k| governor_check(&lim, k)),
            "governor denied"
        );
    }
    g.finish();
}

/// Runs `iters` decisions on each of two threads at once (own keys per thread); wall time from
/// the first thread's start to the last one's end (each thread reads the clock itself, so a
/// descheduled main thread cannot shorten the span).
fn two_threads<S: Sync>(
    shared: &S,
    per_thread: &[Vec<String>; 2],
    iters: u64,
    check: impl Fn(&S, &String) -> bool + Sync,
) -> Duration {
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = per_thread
            .iter()
            .map(|ks| {
                let (barrier, check) = (&barrier, &check);
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    let mut allowed = 0u64;
                    for n in 0..iters {
                        allowed += u64::from(check(shared, black_box(&ks[n as usize % KEYS])));
                    }
                    let end = Instant::now();
                    assert_eq!(allowed, iters, "a check was denied: quota too small");
                    (start, end)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread"))
            .collect()
    });
    let start = spans.iter().map(|s| s.0).min().expect("two spans");
    let end = spans.iter().map(|s| s.1).max().expect("two spans");
    end - start
}

fn scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads");
    // One iteration = one decision on each thread.
    g.throughput(Throughput::Elements(2));
    let per_thread = [keys("t0:"), keys("t1:")];

    let store = mortar(Arc::new(SystemClock));
    g.bench_function("mortar/1000_keys_each", |b| {
        b.iter_custom(|iters| two_threads(&store, &per_thread, iters, |s, k| mortar_check(s, k)));
    });
    let lim = governor();
    g.bench_function("governor/1000_keys_each", |b| {
        b.iter_custom(|iters| two_threads(&lim, &per_thread, iters, governor_check));
    });
    g.finish();
}

fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    let sys = SystemClock;
    g.bench_function("mortar_system_clock_now_ms", |b| {
        b.iter(|| black_box(&sys).now_ms());
    });
    let fast = FastClock::new();
    g.bench_function("mortar_fast_clock_now_ms", |b| {
        b.iter(|| black_box(&fast).now_ms());
    });
    let q = governor::clock::DefaultClock::default();
    g.bench_function("governor_default_clock_now", |b| {
        b.iter(|| governor::clock::Clock::now(black_box(&q)));
    });
    g.finish();
}

fn config() -> Criterion {
    // 9 benchmarks × (1 s warm-up + 3 s measurement) + 3 clock ones: ~50 s plus analysis.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = single, scaling, clocks
}
criterion_main!(benches);
