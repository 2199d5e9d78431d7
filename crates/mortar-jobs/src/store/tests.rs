//! The store's PostgreSQL tests (relaxed leases, the insert group, the settings cache, the
//! completion plan), kept apart from `store/mod.rs`.

use mortar_core::storage::Durable;
use sqlx::PgPool;

use super::lifecycle::COMPLETE_MANY_PG;
use super::settings::SETTINGS_TTL;
use super::{Job, JobStore, QueueRow};

/// Worker leases commit without waiting for the WAL flush; everything else waits.
#[tokio::test]
async fn postgres_leases_commit_relaxed_and_the_rest_durably() {
    let Some(services) = mortar_testkit::services("jobs relaxed lease pool") else {
        return;
    };
    let db = services.create_database().await.unwrap();
    let pool = PgPool::connect(&db.url).await.unwrap();
    let store = JobStore::new(Durable::Postgres(pool.clone()));
    let setting = |p: PgPool| async move {
        sqlx::query_scalar::<_, String>("SHOW synchronous_commit")
            .fetch_one(&p)
            .await
            .unwrap()
    };
    assert_eq!(setting(store.relaxed.clone().unwrap()).await, "off");
    assert_eq!(setting(pool.clone()).await, "on");
    pool.close().await;
}

/// A job of queue `q`, kind `k`, with no unique key, as an enqueue prepares it.
fn plain_job(payload: &serde_json::Value) -> Job {
    let new: crate::service::NewJob =
        serde_json::from_value(serde_json::json!({"queue": "q", "kind": "k", "payload": payload}))
            .unwrap();
    crate::service::prepare(&new, "", 1 << 20, 1_000).unwrap()
}

/// A fresh database with the jobs schema, and a pool on it.
async fn with_schema(
    services: &mortar_testkit::Services,
) -> (
    mortar_core::storage::Storage,
    PgPool,
    mortar_testkit::TestDatabase,
    tempfile::TempDir,
) {
    let db = services.create_database().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let migrations = [crate::service::migrations()];
    let storage =
        mortar_testkit::fixture::storage_at(dir.path(), Some(db.url.clone()), &migrations).await;
    let Durable::Postgres(pool) = &storage.durable else {
        unreachable!("a PostgreSQL url")
    };
    let pool = pool.clone();
    (storage, pool, db, dir)
}

/// Small enqueues that meet while one is being written go in together as one statement;
/// each caller gets exactly its own jobs back, and every job is stored.
#[tokio::test]
async fn postgres_concurrent_small_enqueues_are_one_statement() {
    let Some(services) = mortar_testkit::services("jobs grouped insert") else {
        return;
    };
    let (storage, pool, _db, _dir) = with_schema(&services).await;
    let store = JobStore::new(Durable::Postgres(pool.clone()));
    let rows = |caller: usize, n: usize| -> Vec<Job> {
        (0..n)
            .map(|i| plain_job(&serde_json::json!({"caller": caller, "i": i})))
            .collect()
    };
    // On this single-threaded runtime every caller queues before the first write starts.
    let callers: Vec<Vec<Job>> = (0..40).map(|c| rows(c, 1 + c % 3)).collect();
    let answers = futures_util::future::join_all(
        callers
            .iter()
            .map(|jobs| store.insert(jobs.clone(), 1_000, Vec::new())),
    )
    .await;
    for (jobs, answer) in callers.iter().zip(answers) {
        let (out, leased) = answer.unwrap();
        assert!(leased.is_empty());
        let back: Vec<&Job> = out
            .iter()
            .map(|(j, dup)| {
                assert!(!dup);
                j
            })
            .collect();
        assert_eq!(back, jobs.iter().collect::<Vec<_>>());
    }
    assert_eq!(
        store
            .group
            .statements
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    let sent: usize = callers.iter().map(Vec::len).sum();
    assert_eq!(stored as usize, sent);
    // A failing statement fails every enqueue in it, and the next one writes again.
    let dup = callers[0].clone();
    let (a, b) = tokio::join!(
        store.insert(dup.clone(), 1_000, Vec::new()),
        store.insert(rows(99, 1), 1_000, Vec::new())
    );
    assert!(
        a.is_err() && b.is_err(),
        "one statement: both fail on the duplicate id"
    );
    store.insert(rows(100, 2), 1_000, Vec::new()).await.unwrap();
    pool.close().await;
    storage.close().await;
}

/// Leases go by queue settings read at most every SETTINGS_TTL; a node whose copy is stale
/// (here: store `b`, while `a` changes the settings) still never leases from a paused
/// queue or past a concurrency limit, and takes the limited way once its copy is renewed.
#[tokio::test]
async fn postgres_leases_on_stale_settings_keep_pause_and_limits() {
    let Some(services) = mortar_testkit::services("jobs settings cache") else {
        return;
    };
    let (storage, pool, _db, _dir) = with_schema(&services).await;
    let (a, b) = (
        JobStore::new(Durable::Postgres(pool.clone())),
        JobStore::new(Durable::Postgres(pool.clone())),
    );
    let jobs: Vec<Job> = (0..6)
        .map(|i| plain_job(&serde_json::json!({ "i": i })))
        .collect();
    a.insert(jobs, 1_000, Vec::new()).await.unwrap();
    let q = vec!["q".to_owned()];
    assert_eq!(b.lease(&q, 1, "w", 2_000).await.unwrap().jobs.len(), 1); // b reads: q is free
    let put = |paused, concurrency| QueueRow {
        queue: "q".into(),
        paused,
        concurrency,
        ..QueueRow::default()
    };
    a.put_queue(&put(true, None)).await.unwrap();
    assert!(a.lease(&q, 10, "w", 2_000).await.unwrap().jobs.is_empty());
    assert!(
        b.lease(&q, 10, "w", 2_000).await.unwrap().jobs.is_empty(),
        "b's copy says free, but q is paused"
    );
    a.put_queue(&put(false, Some(2))).await.unwrap();
    // b's copy may still say free (then it takes nothing) or be renewed (then it takes the
    // one slot left): never more.
    let mut taken = b.lease(&q, 10, "w", 2_000).await.unwrap().jobs.len();
    assert!(taken <= 1, "concurrency 2 with 1 running, b took {taken}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while taken == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(SETTINGS_TTL / 4).await;
        taken = b.lease(&q, 10, "w", 2_000).await.unwrap().jobs.len();
    }
    assert_eq!(taken, 1, "b's renewed copy leases q within its limit");
    assert!(b.lease(&q, 10, "w", 2_000).await.unwrap().jobs.is_empty());
    pool.close().await;
    storage.close().await;
}

/// A batch completion probes the primary key once per job, whatever the statistics say
/// (here: 2 000 running jobs the planner has not seen), rather than scanning every running
/// job through `jobs_leased`.
#[tokio::test]
async fn postgres_batch_completion_looks_jobs_up_by_id() {
    let Some(services) = mortar_testkit::services("jobs completion plan") else {
        return;
    };
    let (storage, pool, _db, _dir) = with_schema(&services).await;
    sqlx::query(
        "INSERT INTO jobs_jobs (id, queue, kind, payload, priority, run_at_ms, state, attempt, max_attempts, \
         backoff_base_ms, backoff_max_ms, timeout_ms, created_at_ms, lease_id, lease_until_ms) \
         SELECT 'j' || i, 'q', 'k', '{}', 10, 0, 'running', 1, 5, 1000, 60000, 30000, 0, 'l' || i, 9000000000000 \
         FROM generate_series(1, 2000) AS i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {COMPLETE_MANY_PG}")))
            .bind(vec!["j1", "j2", "j3"])
            .bind(vec!["l1", "l2", "l3"])
            .bind(vec![None::<&str>, None, None])
            .bind(1_i64)
            .fetch_all(&pool)
            .await
            .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("jobs_jobs_pkey") && !plan.contains("jobs_leased"),
        "{plan}"
    );
    pool.close().await;
    storage.close().await;
}
