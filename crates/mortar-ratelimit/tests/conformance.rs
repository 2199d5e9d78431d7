//! The backend conformance suite: the same tests against every `RateLimitStore`.

use std::sync::Arc;

use mortar_core::clock::ManualClock;
use mortar_ratelimit::engine::{self, Algorithm, Decision, Limit, State};
use mortar_ratelimit::store::memory::MemoryStore;
use mortar_ratelimit::store::redis::RedisStore;
use mortar_ratelimit::store::{Check, RateLimitStore};

const T0: u64 = 1_800_000_000_000;

fn lim(algorithm: Algorithm, limit: u64, window_ms: u64) -> Limit {
    Limit {
        algorithm,
        limit,
        window_ms,
        burst: None,
    }
}

async fn one(
    store: &dyn RateLimitStore,
    policy: &str,
    limit: Limit,
    key: &str,
    cost: u64,
) -> Decision {
    store
        .check(&[Check { policy, limit, key }], cost)
        .await
        .unwrap()[0]
}

/// The store decides exactly as the engine does, for every algorithm, over a long
/// pseudo-random sequence of checks and peeks.
async fn matches_the_engine(store: &dyn RateLimitStore, clock: &ManualClock) {
    let mut rng = fastrand::Rng::with_seed(7);
    for alg in Algorithm::ALL {
        let limit = Limit {
            algorithm: alg,
            limit: 7,
            window_ms: 1000,
            burst: Some(5).filter(|_| alg == Algorithm::TokenBucket),
        };
        clock.set(T0 + 123);
        let mut state: Option<State> = None;
        for step in 0..400 {
            clock.advance(rng.u64(0..120));
            let cost = if rng.u8(0..10) == 0 { 0 } else { rng.u64(1..4) };
            let got = one(store, "p", limit, "k", cost).await;
            let (want, next) = engine::decide(&limit, state.as_ref(), clock_now(clock), cost);
            assert_eq!(got, want, "{alg:?} step {step} cost {cost}");
            if want.allowed && cost > 0 {
                state = Some(next);
            }
        }
    }
}

fn clock_now(c: &ManualClock) -> u64 {
    use mortar_core::clock::Clock;
    c.now_ms()
}

async fn several_policies_are_all_or_nothing(store: &dyn RateLimitStore, clock: &ManualClock) {
    clock.set(T0);
    let wide = lim(Algorithm::FixedWindow, 5, 60_000);
    let narrow = lim(Algorithm::SlidingLog, 2, 60_000);
    let both = [
        Check {
            policy: "wide",
            limit: wide,
            key: "u",
        },
        Check {
            policy: "narrow",
            limit: narrow,
            key: "u",
        },
    ];
    for _ in 0..2 {
        let d = store.check(&both, 1).await.unwrap();
        assert!(d.iter().all(|d| d.allowed));
    }
    let d = store.check(&both, 1).await.unwrap();
    assert!(d[0].allowed && !d[1].allowed, "{d:?}");
    // The denied check took nothing from the policy that allowed.
    assert_eq!(one(store, "wide", wide, "u", 0).await.remaining, 3);
}

async fn peeking_consumes_nothing(store: &dyn RateLimitStore, clock: &ManualClock) {
    clock.set(T0);
    for alg in Algorithm::ALL {
        let l = lim(alg, 3, 10_000);
        one(store, "peek", l, alg.as_str(), 1).await;
        for _ in 0..5 {
            assert_eq!(
                one(store, "peek", l, alg.as_str(), 0).await.remaining,
                2,
                "{alg:?}"
            );
        }
    }
}

async fn reset_forgets_one_policy_of_a_key(store: &dyn RateLimitStore, clock: &ManualClock) {
    clock.set(T0);
    let l = lim(Algorithm::FixedWindow, 1, 60_000);
    one(store, "a", l, "key", 1).await;
    one(store, "b", l, "key", 1).await;
    assert!(!one(store, "a", l, "key", 1).await.allowed);
    store.reset("a", "key").await.unwrap();
    assert!(one(store, "a", l, "key", 1).await.allowed);
    assert!(
        !one(store, "b", l, "key", 1).await.allowed,
        "other policies keep their state"
    );
}

async fn keys_and_policies_are_independent(store: &dyn RateLimitStore, clock: &ManualClock) {
    clock.set(T0);
    let l = lim(Algorithm::TokenBucket, 1, 60_000);
    assert!(one(store, "p", l, "user:1", 1).await.allowed);
    assert!(one(store, "p", l, "user:2", 1).await.allowed);
    assert!(one(store, "q", l, "user:1", 1).await.allowed);
    assert!(!one(store, "p", l, "user:1", 1).await.allowed);
    // Keys are opaque bytes: braces, colons, slashes, unicode.
    for key in ["{x}", "a}b{c", "user:42:endpoint:/search", "ключ"] {
        assert!(one(store, "p", l, key, 1).await.allowed, "{key}");
        assert!(!one(store, "p", l, key, 1).await.allowed, "{key}");
    }
}

async fn concurrent_checks_never_overshoot(store: Arc<dyn RateLimitStore>, clock: &ManualClock) {
    clock.set(T0);
    for alg in [
        Algorithm::FixedWindow,
        Algorithm::SlidingLog,
        Algorithm::TokenBucket,
        Algorithm::SlidingCounter,
    ] {
        let l = lim(alg, 100, 60_000);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut n = 0;
                    for _ in 0..15 {
                        let a = [
                            Check {
                                policy: "c",
                                limit: l,
                                key: "hot",
                            },
                            Check {
                                policy: "c2",
                                limit: l,
                                key: "hot",
                            },
                        ];
                        if store.check(&a, 1).await.unwrap().iter().all(|d| d.allowed) {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        assert_eq!(total, 100, "{alg:?}");
    }
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn matches_the_engine() {
                let Some((store, clock)) = $make.await else {
                    return;
                };
                super::matches_the_engine(&*store, &clock).await;
            }

            #[tokio::test]
            async fn several_policies_are_all_or_nothing() {
                let Some((store, clock)) = $make.await else {
                    return;
                };
                super::several_policies_are_all_or_nothing(&*store, &clock).await;
            }

            #[tokio::test]
            async fn peeking_consumes_nothing() {
                let Some((store, clock)) = $make.await else {
                    return;
                };
                super::peeking_consumes_nothing(&*store, &clock).await;
            }

            #[tokio::test]
            async fn reset_forgets_one_policy_of_a_key() {
                let Some((store, clock)) = $make.await else {
                    return;
                };
                super::reset_forgets_one_policy_of_a_key(&*store, &clock).await;
            }

            #[tokio::test]
            async fn keys_and_policies_are_independent() {
                let Some((store, clock)) = $make.await else {
                    return;
                };
                super::keys_and_policies_are_independent(&*store, &clock).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_checks_never_overshoot() {
                let Some((store, clock)) = $make.await else {
                    return;
                };
                super::concurrent_checks_never_overshoot(store, &clock).await;
            }
        }
    };
}

#[allow(clippy::unused_async)] // the same shape as the other backends
async fn memory() -> Option<(Arc<dyn RateLimitStore>, ManualClock)> {
    let clock = ManualClock::at(T0);
    Some((Arc::new(MemoryStore::new(Arc::new(clock.clone()))), clock))
}

async fn redis_store() -> Option<(Arc<dyn RateLimitStore>, ManualClock)> {
    let url = mortar_testkit::redis_url("ratelimit redis conformance")?;
    let redis = redis_handle(&url).await;
    let clock = ManualClock::at(T0);
    Some((
        Arc::new(RedisStore::new(redis).with_clock(Arc::new(clock.clone()))),
        clock,
    ))
}

async fn redis_handle(url: &str) -> mortar_core::storage::Redis {
    let client = redis::Client::open(url).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!("mortar-test:{}:", mortar_core::ids::new_id());
    mortar_core::storage::Redis::new(conn, prefix)
}

conformance!(memory_backend, memory());
conformance!(redis_backend, redis_store());

#[tokio::test]
async fn redis_keys_expire_by_themselves() {
    let Some(url) = mortar_testkit::redis_url("redis_keys_expire_by_themselves") else {
        return;
    };
    let redis = redis_handle(&url).await;
    let prefix = redis.prefix.clone();
    let mut conn = redis.conn.clone();
    let store = RedisStore::new(redis);
    for alg in Algorithm::ALL {
        one(&store, "ttl", lim(alg, 10, 5_000), "k", 1).await;
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
    for k in keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
        // -2: gone already (a fixed window's key lives to the window's end, which can be
        // a few ms away); -1 (no expiry) is what this test exists to catch.
        assert!(ttl == -2 || (ttl > 0 && ttl <= 10_000), "{k}: {ttl}");
    }
}

#[test]
fn memory_entries_are_swept_once_expired() {
    let clock = ManualClock::at(T0);
    let store = MemoryStore::new(Arc::new(clock.clone()));
    for i in 0..100 {
        store.check_now(
            &[Check {
                policy: "p",
                limit: lim(Algorithm::FixedWindow, 5, 1000),
                key: &format!("k{i}"),
            }],
            1,
        );
    }
    assert_eq!(store.len(), 100);
    clock.advance(1000);
    store.sweep();
    assert!(store.is_empty());
}
