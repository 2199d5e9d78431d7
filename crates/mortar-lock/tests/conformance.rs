//! The backend conformance suite: the same tests on the embedded (memory + SQLite fencing),
//! PostgreSQL and Redis stores.

use std::sync::Arc;

use mortar_core::clock::{Clock, ManualClock, SystemClock};
use mortar_core::storage::Storage;
use mortar_lock::engine::Waiter;
use mortar_lock::service::migrations;
use mortar_lock::store::memory::MemoryStore;
use mortar_lock::store::postgres::PostgresStore;
use mortar_lock::store::redis::RedisStore;
use mortar_lock::store::{AcquireArgs, Acquired, LockStore};
use mortar_testkit::fixture;

fn args<'a>(name: &'a str, ttl_ms: u64, permits: u32, ticket: Option<&'a str>) -> AcquireArgs<'a> {
    AcquireArgs {
        name,
        owner: "t",
        ttl_ms,
        permits,
        ticket,
    }
}

async fn grant(
    s: &dyn LockStore,
    name: &str,
    ttl_ms: u64,
    permits: u32,
) -> Option<mortar_lock::engine::Holder> {
    match s.acquire(args(name, ttl_ms, permits, None)).await.unwrap() {
        Acquired::Granted(h) => Some(h),
        _ => None,
    }
}

async fn mutual_exclusion_and_increasing_tokens(s: &dyn LockStore) {
    let a = grant(s, "m", 60_000, 1).await.expect("free");
    assert!(grant(s, "m", 60_000, 1).await.is_none(), "held");
    match s.acquire(args("m", 60_000, 1, None)).await.unwrap() {
        Acquired::Busy(info) => assert_eq!(info.holders[0].lease_id, a.lease_id),
        other => panic!("{other:?}"),
    }
    assert!(s.release("m", &a.lease_id).await.unwrap());
    assert!(
        !s.release("m", &a.lease_id).await.unwrap(),
        "released twice"
    );
    let b = grant(s, "m", 60_000, 1).await.unwrap();
    assert!(b.token > a.token);
    let other = grant(s, "other", 60_000, 1).await.unwrap();
    assert!(other.token >= 1, "names have their own counters");
    assert!(s.renew("m", &b.lease_id, 120_000).await.unwrap().is_some());
    assert!(
        s.renew("m", "01aaaaaaaaaaaaaaaaaaaaaaaa", 1000)
            .await
            .unwrap()
            .is_none(),
        "unknown lease"
    );
}

async fn semaphores_and_permit_mismatch(s: &dyn LockStore) {
    let holders: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(grant(s, "sem", 60_000, 3).await.expect("3 permits"));
        }
        v
    };
    assert!(grant(s, "sem", 60_000, 3).await.is_none(), "4th waits");
    assert_eq!(
        s.acquire(args("sem", 60_000, 2, None)).await.unwrap(),
        Acquired::PermitsMismatch { existing: 3 }
    );
    let tokens: Vec<u64> = holders.iter().map(|h| h.token).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    let info = s.inspect("sem").await.unwrap().unwrap();
    assert_eq!((info.permits, info.holders.len()), (3, 3));
    for h in &holders {
        assert!(s.release("sem", &h.lease_id).await.unwrap());
    }
    assert!(
        s.inspect("sem").await.unwrap().is_none(),
        "idle locks are not listed"
    );
    assert!(
        grant(s, "sem", 60_000, 1).await.is_some(),
        "idle: the permit count can change"
    );
}

async fn waiters_are_served_first_come_first_served(s: &dyn LockStore) {
    let h = grant(s, "fifo", 60_000, 1).await.unwrap();
    for t in ["w1", "w2"] {
        s.enqueue(
            "fifo",
            Waiter {
                ticket: t.into(),
                owner: t.into(),
                until_ms: 0,
            },
            1,
            60_000,
        )
        .await
        .unwrap();
    }
    s.release("fifo", &h.lease_id).await.unwrap();
    assert!(
        matches!(
            s.acquire(args("fifo", 60_000, 1, Some("w2")))
                .await
                .unwrap(),
            Acquired::Busy(_)
        ),
        "w1 first"
    );
    assert!(
        matches!(
            s.acquire(args("fifo", 60_000, 1, None)).await.unwrap(),
            Acquired::Busy(_)
        ),
        "no jumping the line"
    );
    let w1 = match s
        .acquire(args("fifo", 60_000, 1, Some("w1")))
        .await
        .unwrap()
    {
        Acquired::Granted(h) => h,
        other => panic!("{other:?}"),
    };
    let info = s.inspect("fifo").await.unwrap().unwrap();
    assert_eq!(info.waiters.len(), 1);
    assert_eq!(info.waiters[0].ticket, "w2");
    s.dequeue("fifo", "w2").await.unwrap();
    s.release("fifo", &w1.lease_id).await.unwrap();
    assert!(
        grant(s, "fifo", 60_000, 1).await.is_some(),
        "line empty again"
    );
}

/// An operator's force-release: every live lease or one, the line kept and served next, the
/// evicted leases gone (renew `None`, release `false`), tokens still increasing.
async fn force_release_evicts_and_the_line_moves_on(s: &dyn LockStore) {
    assert!(
        s.force_release("evict", None).await.unwrap().is_empty(),
        "nothing held"
    );
    let a = grant(s, "evict", 60_000, 1).await.unwrap();
    let w = Waiter {
        ticket: "ew1".into(),
        owner: "ew1".into(),
        until_ms: 0,
    };
    s.enqueue("evict", w, 1, 60_000).await.unwrap();
    let evicted = s.force_release("evict", None).await.unwrap();
    assert_eq!(
        evicted,
        std::slice::from_ref(&a),
        "the evicted lease, as granted"
    );
    assert!(s.renew("evict", &a.lease_id, 1000).await.unwrap().is_none());
    assert!(!s.release("evict", &a.lease_id).await.unwrap());
    let info = s
        .inspect("evict")
        .await
        .unwrap()
        .expect("the waiter is still in line");
    assert!(info.holders.is_empty());
    assert_eq!(info.waiters.len(), 1);
    assert!(
        matches!(
            s.acquire(args("evict", 60_000, 1, None)).await.unwrap(),
            Acquired::Busy(_)
        ),
        "a newcomer still waits behind the line"
    );
    let next = match s
        .acquire(args("evict", 60_000, 1, Some("ew1")))
        .await
        .unwrap()
    {
        Acquired::Granted(h) => h,
        other => panic!("the waiter is served next: {other:?}"),
    };
    assert!(next.token > a.token, "{} after {}", next.token, a.token);

    let sem: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(grant(s, "evict-sem", 60_000, 3).await.unwrap());
        }
        v
    };
    let one = s
        .force_release("evict-sem", Some(&sem[1].lease_id))
        .await
        .unwrap();
    assert_eq!(one, std::slice::from_ref(&sem[1]));
    assert!(
        s.force_release("evict-sem", Some(&sem[1].lease_id))
            .await
            .unwrap()
            .is_empty(),
        "gone already"
    );
    let info = s.inspect("evict-sem").await.unwrap().unwrap();
    let left: Vec<&str> = info.holders.iter().map(|h| h.lease_id.as_str()).collect();
    assert_eq!(left, [sem[0].lease_id.as_str(), sem[2].lease_id.as_str()]);
    let d = grant(s, "evict-sem", 60_000, 3)
        .await
        .expect("the freed permit");
    assert!(d.token > sem[2].token);
    let rest = s.force_release("evict-sem", None).await.unwrap();
    let tokens: Vec<u64> = rest.iter().map(|h| h.token).collect();
    assert_eq!(tokens, [sem[0].token, sem[2].token, d.token], "by token");
    assert!(s.inspect("evict-sem").await.unwrap().is_none(), "idle");
    assert!(s.force_release("evict-sem", None).await.unwrap().is_empty());
}

async fn leases_expire_by_themselves(s: &dyn LockStore, advance: &(dyn Fn(u64) + Sync)) {
    let a = grant(s, "ttl", 50, 1).await.unwrap();
    advance(60);
    let b = grant(s, "ttl", 60_000, 1)
        .await
        .expect("the first lease expired");
    assert!(b.token > a.token);
    assert!(
        s.renew("ttl", &a.lease_id, 1000).await.unwrap().is_none(),
        "an expired lease cannot be renewed"
    );
    assert!(!s.release("ttl", &a.lease_id).await.unwrap());
}

async fn list_by_prefix(s: &dyn LockStore) {
    for n in ["jobs/a", "jobs/b", "jobsx"] {
        grant(s, n, 60_000, 1).await.unwrap();
    }
    let names: Vec<String> = s
        .list("jobs/", "", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["jobs/a", "jobs/b"]);
    let names: Vec<String> = s
        .list("jobs/", "jobs/a", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["jobs/b"]);
}

/// A fresh PostgreSQL database with the lock migrations: its handle (dropped with the test),
/// the storage and its pool; `None` when the test skips.
async fn postgres(test: &str) -> Option<(mortar_testkit::TestDatabase, Storage, sqlx::PgPool)> {
    let svc = mortar_testkit::services(test)?;
    let db = svc.create_database().await.unwrap();
    // The data directory is SQLite's; PostgreSQL never touches it.
    let st =
        fixture::storage_at(&std::env::temp_dir(), Some(db.url.clone()), &[migrations()]).await;
    let mortar_core::storage::Durable::Postgres(pool) = &st.durable else {
        panic!("postgres")
    };
    let pool = pool.clone();
    Some((db, st, pool))
}

#[tokio::test]
async fn memory_backend() {
    let st = fixture::embedded(&[migrations()]).await;
    let clock = ManualClock::at(1_000_000);
    let s = MemoryStore::new(st.durable.clone(), Arc::new(clock.clone()));
    mutual_exclusion_and_increasing_tokens(&s).await;
    semaphores_and_permit_mismatch(&s).await;
    waiters_are_served_first_come_first_served(&s).await;
    force_release_evicts_and_the_line_moves_on(&s).await;
    leases_expire_by_themselves(&s, &|ms| clock.advance(ms)).await;
    list_by_prefix(&s).await;
}

#[tokio::test]
async fn memory_tokens_keep_increasing_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let st = fixture::storage_at(dir.path(), None, &[migrations()]).await;
    let first = MemoryStore::new(st.durable.clone(), Arc::new(SystemClock));
    let a = grant(&first, "r", 60_000, 1).await.unwrap();
    drop(first);
    st.close().await;
    // A new process: leases are gone, the counter is not.
    let st = fixture::storage_at(dir.path(), None, &[migrations()]).await;
    let second = MemoryStore::new(st.durable.clone(), Arc::new(SystemClock));
    let b = grant(&second, "r", 60_000, 1)
        .await
        .expect("leases do not survive a restart");
    assert!(b.token > a.token, "{} then {}", a.token, b.token);
}

#[tokio::test]
async fn postgres_backend() {
    let Some((_db, st, pool)) = postgres("lock postgres conformance").await else {
        return;
    };
    let s = PostgresStore::new(pool);
    mutual_exclusion_and_increasing_tokens(&s).await;
    semaphores_and_permit_mismatch(&s).await;
    waiters_are_served_first_come_first_served(&s).await;
    force_release_evicts_and_the_line_moves_on(&s).await;
    // The database's clock drives expiry: wait for real.
    leases_expire_by_themselves(&s, &|ms| {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    })
    .await;
    list_by_prefix(&s).await;
    st.close().await;
}

#[tokio::test]
async fn redis_backend() {
    let Some(url) = mortar_testkit::redis_url("lock redis conformance") else {
        return;
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!("mortar-test:{}:", mortar_core::ids::new_id());
    let s = RedisStore::new(mortar_core::storage::Redis::new(
        conn.clone(),
        prefix.clone(),
    ));
    mutual_exclusion_and_increasing_tokens(&s).await;
    semaphores_and_permit_mismatch(&s).await;
    waiters_are_served_first_come_first_served(&s).await;
    force_release_evicts_and_the_line_moves_on(&s).await;
    leases_expire_by_themselves(&s, &|ms| {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    })
    .await;
    list_by_prefix(&s).await;
    keys_expire_but_counters_stay(&s, &conn, &prefix).await;
    // A Redis that lost everything (restart without persistence) still issues larger tokens.
    let before = grant(&s, "amnesia", 60_000, 1).await.unwrap().token;
    let mut c = conn.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut c)
        .await
        .unwrap();
    let after = grant(&s, "amnesia", 60_000, 1).await.unwrap().token;
    assert!(after > before, "{before} then {after}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// Redis: a lock's lease and line keys carry an expiry (a minute past the last lease or
/// waiter), so abandoned locks leave nothing behind; the fencing and arrival counters never
/// expire (tokens keep increasing).
async fn keys_expire_but_counters_stay(
    s: &RedisStore,
    conn: &redis::aio::ConnectionManager,
    prefix: &str,
) {
    let c = conn.clone();
    let pttls = |mut c: redis::aio::ConnectionManager| async move {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*{{tidy}}*"))
            .query_async(&mut c)
            .await
            .unwrap();
        let mut out = std::collections::BTreeMap::new();
        for k in keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap();
            out.insert(k.rsplit(':').next().unwrap().to_owned(), ttl);
        }
        out
    };
    grant(s, "tidy", 10_000, 1).await.unwrap();
    let t = pttls(c.clone()).await;
    for k in ["h", "permits"] {
        assert!((60_000..=70_000).contains(&t[k]), "{k}: {t:?}");
    }
    assert_eq!(t["fence"], -1, "{t:?}");
    assert!(!t.contains_key("line") && !t.contains_key("w"), "{t:?}");

    let waiter = Waiter {
        ticket: "t1".into(),
        owner: "w".into(),
        until_ms: 0,
    };
    s.enqueue("tidy", waiter, 1, 30_000).await.unwrap();
    let t = pttls(c.clone()).await;
    for k in ["h", "permits", "line", "w"] {
        assert!((60_000..=90_000).contains(&t[k]), "{k}: {t:?}");
    }
    assert_eq!((t["fence"], t["seq"]), (-1, -1), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acquires_never_overlap() {
    let st = fixture::embedded(&[migrations()]).await;
    let s: Arc<dyn LockStore> =
        Arc::new(MemoryStore::new(st.durable.clone(), Arc::new(SystemClock)));
    let holders = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (s, holders) = (s.clone(), holders.clone());
            tokio::spawn(async move {
                let mut tokens = Vec::new();
                for _ in 0..50 {
                    if let Acquired::Granted(h) =
                        s.acquire(args("hot", 60_000, 2, None)).await.unwrap()
                    {
                        let now = holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        assert!(now <= 2, "{now} holders of a 2-permit semaphore");
                        tokio::task::yield_now().await;
                        holders.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        assert!(s.release("hot", &h.lease_id).await.unwrap());
                        tokens.push(h.token);
                    }
                }
                tokens
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "every token is unique");
    let _ = SystemClock.now_ms();
}

/// A live node whose liveness lease lapsed (here: a store whose node never heartbeats, with a
/// 300 ms lease) finds its waiter out of the line and queues it again — its row still stored,
/// filtered out — and is served when the lock frees, instead of failing.
#[tokio::test]
async fn a_waiter_whose_node_lease_lapsed_queues_again_and_is_served() {
    let Some((_db, _st, pool)) = postgres("lock lapsed node lease").await else {
        return;
    };
    let store = Arc::new(PostgresStore::with_node_lease(pool, 300));
    let locks = mortar_lock::LockService::with_store(store, mortar_lock::LockConfig::default());
    let req = |ttl_ms, wait_ms, owner: &str| mortar_lock::service::AcquireRequest {
        ttl_ms,
        owner: owner.into(),
        wait_ms,
        permits: 1,
    };
    let held = locks
        .acquire("lapse", &req(1_500, 0, "holder"))
        .await
        .unwrap();
    let waited = locks
        .acquire("lapse", &req(10_000, 10_000, "waiter"))
        .await
        .expect("served once the holder's lease ran out");
    assert!(waited.token > held.token);
}
