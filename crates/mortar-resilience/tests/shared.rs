//! `shared.lua` against the engine it mirrors: the same random sequence of acquires, records
//! (successes, failures, slow calls, cancellations), clock steps, steering and reconfiguring,
//! applied to a [`Core`] and to a shared breaker in Redis (time pinned), must leave both in the
//! same state with the same window and probes after every step — for count and time windows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mortar_core::storage::Redis;
use mortar_resilience::breaker::{BreakerConfig, Core, Ticket, WindowKind};
use mortar_resilience::shared::{Op, Reply, Shared, Verdict};

async fn shared(url: &str, now: Arc<AtomicU64>) -> Shared {
    let client = redis::Client::open(url).unwrap();
    let conn = client.get_connection_manager().await.unwrap();
    let prefix = format!("mortar-test:{}:", mortar_core::ids::new_id());
    Shared::new(Redis::new(conn, prefix), Duration::from_secs(5)).with_time(now)
}

fn cfg(window: WindowKind) -> BreakerConfig {
    BreakerConfig {
        window,
        window_size: 6,
        window_ms: 2000,
        failure_rate_threshold: 50.0,
        slow_call_rate_threshold: 60.0,
        slow_call_ms: 100,
        minimum_calls: 3,
        wait_open_ms: 500,
        half_open_calls: 2,
        shared: true,
    }
}

/// Checks Redis's view of the breaker against the engine's after one step.
fn same(step: usize, core: &mut Core, now: u64, r: &Reply) {
    let t = core.totals(now);
    assert_eq!(
        (r.state, r.totals, r.probes_in_flight),
        (core.state(), t, core.probes_in_flight()),
        "step {step}: redis and the engine disagree"
    );
}

/// Runs one random sequence; returns the states seen, in order of first sight.
async fn run(window: WindowKind, seed: u64, url: &str) -> Vec<&'static str> {
    let now = Arc::new(AtomicU64::new(1_000_000));
    let lua = shared(url, now.clone()).await;
    let mut cfg = cfg(window);
    let mut core = Core::new(cfg.clone());
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut in_flight: Vec<(Ticket, String)> = Vec::new();
    let mut admitted = 0;
    let mut seen: Vec<&'static str> = Vec::new();
    for step in 0..600 {
        let at = now.load(Ordering::SeqCst);
        match rng.u32(0..100) {
            0..40 => {
                let token = format!("t-{step}");
                let r = lua
                    .run("mirror", &cfg, Op::Acquire { token: &token })
                    .await
                    .unwrap();
                match (core.acquire(at).0, r.verdict) {
                    (Ok(ticket), Verdict::Ok) => {
                        admitted += 1;
                        in_flight.push((ticket, r.member.clone()));
                    }
                    (Err(rej), Verdict::Rejected) => {
                        assert_eq!(rej.state, r.state, "step {step}");
                        assert_eq!(rej.retry_after_ms, r.ms, "step {step}");
                    }
                    (c, v) => panic!("step {step}: engine {c:?}, redis {v:?}"),
                }
            }
            40..85 if !in_flight.is_empty() => {
                let (ticket, member) = in_flight.swap_remove(rng.usize(..in_flight.len()));
                let (failed, outcome) = match rng.u32(0..10) {
                    0 => (None, "cancelled"),
                    1..5 => (Some(true), "failure"),
                    _ => (Some(false), "success"),
                };
                let duration = rng.u64(0..200);
                let counts = failed.is_some() && core.counts(ticket);
                core.record(at, ticket, failed, duration);
                let op = Op::Record {
                    member: &member,
                    outcome,
                    duration_ms: duration,
                };
                let r = lua.run("mirror", &cfg, op).await.unwrap();
                assert_eq!(r.verdict, Verdict::Ok, "step {step}");
                assert_eq!(r.counted, counts, "step {step}");
            }
            85..94 => {
                now.fetch_add(rng.u64(0..700), Ordering::SeqCst);
            }
            94..97 => {
                let op = match rng.u32(0..3) {
                    0 => {
                        core.force_open(at);
                        Op::ForceOpen
                    }
                    1 => {
                        core.disable(at);
                        Op::Disable
                    }
                    _ => {
                        core.reset(at);
                        Op::Reset
                    }
                };
                lua.run("mirror", &cfg, op).await.unwrap();
            }
            97..100 => {
                cfg.half_open_calls = rng.u32(1..4);
                cfg.failure_rate_threshold = [30.0, 50.0, 80.0][rng.usize(..3)];
                if rng.bool() {
                    cfg.window_size = [4, 6][rng.usize(..2)];
                    cfg.window_ms = [1000, 2000][rng.usize(..2)];
                }
                core.reconfigure(cfg.clone(), at);
            }
            _ => {}
        }
        let at = now.load(Ordering::SeqCst);
        let r = lua.run("mirror", &cfg, Op::Status).await.unwrap();
        same(step, &mut core, at, &r);
        if !seen.contains(&r.state.as_str()) {
            seen.push(r.state.as_str());
        }
    }
    assert!(admitted > 50, "{window:?}/{seed}: {admitted} admitted");
    lua.forget("mirror").await.unwrap();
    seen
}

#[tokio::test]
async fn the_lua_breaker_mirrors_the_engine() {
    let Some(url) = mortar_testkit::redis_url("the_lua_breaker_mirrors_the_engine") else {
        return;
    };
    let mut seen = Vec::new();
    for seed in 1..=6 {
        seen.extend(run(WindowKind::Count, seed, &url).await);
        seen.extend(run(WindowKind::Time, seed, &url).await);
    }
    // The sequences went through every state, or the comparison proves little.
    for state in ["closed", "open", "half_open", "forced_open", "disabled"] {
        assert!(seen.contains(&state), "never {state}: {seen:?}");
    }
}

#[tokio::test]
async fn expired_shared_permits_count_nothing_and_free_their_probe_slot() {
    let Some(url) = mortar_testkit::redis_url("expired_shared_permits") else {
        return;
    };
    let now = Arc::new(AtomicU64::new(5_000_000));
    let lua = shared(&url, now.clone()).await;
    let cfg = BreakerConfig {
        minimum_calls: 1,
        window_size: 2,
        wait_open_ms: 0,
        half_open_calls: 1,
        slow_call_ms: 1000,
        ..cfg(WindowKind::Count)
    };
    let acquire = |token: &'static str| lua.run("exp", &cfg, Op::Acquire { token });
    let a = acquire("a").await.unwrap();
    let r = lua
        .run(
            "exp",
            &cfg,
            Op::Record {
                member: &a.member,
                outcome: "failure",
                duration_ms: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(r.state.as_str(), "open");
    let probe = acquire("b").await.unwrap();
    assert_eq!(
        (probe.verdict, probe.state.as_str()),
        (Verdict::Ok, "half_open")
    );
    assert_eq!(acquire("c").await.unwrap().verdict, Verdict::Rejected);
    // Past the permit's lifetime (slow_call_ms 1 s + 60 s): its slot is free, it counts nothing.
    now.fetch_add(61_000, Ordering::SeqCst);
    let again = acquire("d").await.unwrap();
    assert_eq!(
        again.verdict,
        Verdict::Ok,
        "the expired probe's slot is free"
    );
    let late = Op::Record {
        member: &probe.member,
        outcome: "success",
        duration_ms: 1,
    };
    assert_eq!(
        lua.run("exp", &cfg, late).await.unwrap().verdict,
        Verdict::Expired
    );
    let ok = Op::Record {
        member: &again.member,
        outcome: "success",
        duration_ms: 1,
    };
    let r = lua.run("exp", &cfg, ok).await.unwrap();
    assert_eq!(
        (r.verdict, r.counted, r.state.as_str()),
        (Verdict::Ok, true, "closed")
    );
    let twice = Op::Record {
        member: &again.member,
        outcome: "success",
        duration_ms: 1,
    };
    assert_eq!(
        lua.run("exp", &cfg, twice).await.unwrap().verdict,
        Verdict::Used
    );
    lua.forget("exp").await.unwrap();
}
