//! Many threads at once: half-open admits exactly N probes; a bulkhead never exceeds its permits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use mortar_resilience::breaker::{BreakerConfig, Core, State};
use mortar_resilience::{Breaker, Bulkhead, BulkheadConfig};

/// The pure core behind a mutex, hammered by OS threads racing for probe slots.
#[test]
fn half_open_admits_exactly_n_probes_under_a_thread_race() {
    for n in [1u32, 3, 7] {
        let cfg = BreakerConfig {
            minimum_calls: 1,
            wait_open_ms: 10,
            half_open_calls: n,
            ..BreakerConfig::default()
        };
        let core = Arc::new(std::sync::Mutex::new(Core::new(cfg)));
        {
            let mut c = core.lock().unwrap();
            let (t, _) = c.acquire(0);
            c.record(0, t.unwrap(), Some(true), 1);
            assert_eq!(c.state(), State::Open);
        }
        let admitted = Arc::new(AtomicU32::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (core, admitted, barrier) = (core.clone(), admitted.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..1000 {
                        if core.lock().unwrap().acquire(10).0.is_ok() {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            admitted.load(Ordering::SeqCst),
            n,
            "16 threads × 1000 tries"
        );
    }
}

/// The async breaker: many tasks on a multi-threaded runtime call a failing-then-healthy
/// dependency; while half-open, concurrent calls in flight never exceed N.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn async_probes_in_flight_never_exceed_n() {
    let cfg = BreakerConfig {
        minimum_calls: 1,
        wait_open_ms: 0,
        half_open_calls: 2,
        ..BreakerConfig::default()
    };
    let breaker = Breaker::new("race", cfg);
    let _ = breaker.call(|| async { Err::<(), _>("boom") }).await;
    assert_eq!(breaker.state(), State::Open);
    let in_flight = Arc::new(AtomicU32::new(0));
    let max_seen = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (b, in_flight, max_seen) = (breaker.clone(), in_flight.clone(), max_seen.clone());
            tokio::spawn(async move {
                let _ = b
                    .call(|| async {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max_seen.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, &str>(())
                    })
                    .await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        max_seen.load(Ordering::SeqCst),
        2,
        "exactly the 2 probes ran concurrently"
    );
    assert_eq!(
        breaker.state(),
        State::Closed,
        "two successful probes close it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulkhead_never_exceeds_its_permits() {
    let b = Arc::new(Bulkhead::new(
        "db",
        BulkheadConfig {
            max_permits: 5,
            max_queue: 1000,
            queue_timeout_ms: 60_000,
        },
    ));
    let in_use = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (b, in_use, max_seen) = (b.clone(), in_use.clone(), max_seen.clone());
            tokio::spawn(async move {
                let weight = 1 + (i % 3) as u32;
                b.call(weight, || async {
                    let now = in_use.fetch_add(weight as usize, Ordering::SeqCst) + weight as usize;
                    max_seen.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    in_use.fetch_sub(weight as usize, Ordering::SeqCst);
                })
                .await
                .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        max_seen.load(Ordering::SeqCst) <= 5,
        "{} permits in use",
        max_seen.load(Ordering::SeqCst)
    );
    assert_eq!(b.in_use(), 0);
}
