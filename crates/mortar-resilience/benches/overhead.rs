//! Overhead of a circuit breaker + bulkhead around a no-op call, next to the bare call:
//! uncontended (one thread) and contended (two threads on the same breaker and bulkhead).
//! The futures complete without waiting, so they are polled once with `now_or_never`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use mortar_resilience::{Breaker, BreakerConfig, Bulkhead, BulkheadConfig};

async fn noop() -> Result<u64, ()> {
    Ok(black_box(1))
}

fn guarded(breaker: &Breaker, bulkhead: &Bulkhead) -> u64 {
    let out = async {
        let _permit = bulkhead.acquire(1).await.unwrap();
        breaker.call(noop).await.unwrap()
    }
    .now_or_never()
    .expect("completes without waiting");
    black_box(out)
}

fn setup() -> (Arc<Breaker>, Arc<Bulkhead>) {
    let breaker = Breaker::new("bench", BreakerConfig::default());
    let bulkhead = Arc::new(Bulkhead::new(
        "bench",
        BulkheadConfig {
            max_permits: 1024,
            max_queue: 0,
            queue_timeout_ms: 1,
        },
    ));
    (breaker, bulkhead)
}

fn bench(c: &mut Criterion) {
    let (breaker, bulkhead) = setup();
    let mut g = c.benchmark_group("one_thread");
    g.bench_function("bare_call", |b| {
        b.iter(|| black_box(noop().now_or_never().unwrap().unwrap()));
    });
    g.bench_function("breaker", |b| {
        b.iter(|| black_box(breaker.call(noop).now_or_never().unwrap().unwrap()));
    });
    g.bench_function("bulkhead", |b| {
        b.iter(|| {
            let p = bulkhead.acquire(1).now_or_never().unwrap().unwrap();
            black_box(&p);
        });
    });
    g.bench_function("breaker_and_bulkhead", |b| {
        b.iter(|| guarded(&breaker, &bulkhead));
    });
    g.finish();

    let mut g = c.benchmark_group("two_threads");
    g.bench_function("breaker_and_bulkhead_contended", |b| {
        b.iter_custom(|iters| {
            let (breaker, bulkhead) = setup();
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (breaker, bulkhead, barrier) =
                        (breaker.clone(), bulkhead.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..iters {
                            guarded(&breaker, &bulkhead);
                        }
                        start.elapsed()
                    })
                })
                .collect();
            // Per-call latency as each thread saw it while the other contended.
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .max()
                .unwrap_or(Duration::ZERO)
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
