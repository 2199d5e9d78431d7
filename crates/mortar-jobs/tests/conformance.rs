//! The same job-queue behaviour on SQLite (embedded) and PostgreSQL (cluster), on injected time.

use std::sync::Arc;

use mortar_core::clock::ManualClock;
use mortar_core::storage::{Storage, StorageConfig};
use mortar_jobs::engine::State;
use mortar_jobs::error::JobsError;
use mortar_jobs::{JobsConfig, JobsService, NewJob};

fn job(queue: &str, priority: i32) -> NewJob {
    serde_json::from_value(serde_json::json!({"queue": queue, "kind": "email", "payload": {"to": "a@b"}, "priority": priority, "timeout_ms": 10_000})).unwrap()
}

async fn service(
    database_url: Option<String>,
) -> (Arc<JobsService>, ManualClock, tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::connect(&StorageConfig {
        data_dir: dir.path().into(),
        database_url,
        redis_url: None,
        redis_prefix: "m:".into(),
    })
    .await
    .unwrap();
    storage
        .migrate(&mortar_jobs::service::migrations())
        .await
        .unwrap();
    let clock = ManualClock::at(1_800_000_000_000);
    let svc = JobsService::start(&storage, &JobsConfig::default(), Arc::new(clock.clone()));
    (svc, clock, dir, storage)
}

async fn ordering_by_priority_then_run_at_then_fifo(svc: &JobsService, clock: &ManualClock) {
    let a = svc.enqueue(&[job("q1", 10)]).await.unwrap().remove(0);
    let b = svc.enqueue(&[job("q1", 10)]).await.unwrap().remove(0);
    let urgent = svc.enqueue(&[job("q1", 1)]).await.unwrap().remove(0);
    let mut later = job("q1", 0);
    later.delay_ms = 5_000;
    let later = svc.enqueue(&[later]).await.unwrap().remove(0);
    assert_eq!(later.state, "scheduled");
    let leased = svc.lease(&["q1".into()], 10, 0, "w").await.unwrap();
    let ids: Vec<&str> = leased.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        [urgent.id.as_str(), a.id.as_str(), b.id.as_str()],
        "the delayed job is not due"
    );
    clock.advance(5_000);
    let leased = svc.lease(&["q1".into()], 10, 0, "w").await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, later.id);
}

async fn complete_fail_retry_and_the_dlq(svc: &JobsService, clock: &ManualClock) {
    let mut j = job("q2", 10);
    j.max_attempts = 2;
    j.backoff =
        serde_json::from_value(serde_json::json!({"base_ms": 1000, "max_ms": 1000})).unwrap();
    let id = svc.enqueue(&[j]).await.unwrap().remove(0).id;
    let leased = svc
        .lease(&["q2".into()], 1, 0, "w")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(leased.attempt, 1);
    let lease = leased.lease_id.clone().unwrap();
    let failed = svc
        .fail(&id, &lease, "smtp down", true, None)
        .await
        .unwrap();
    assert_eq!(failed.state, "retryable");
    assert!(
        svc.lease(&["q2".into()], 1, 0, "w")
            .await
            .unwrap()
            .is_empty(),
        "backing off"
    );
    clock.advance(1_000);
    let second = svc
        .lease(&["q2".into()], 1, 0, "w")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.attempt, 2);
    let dead = svc
        .fail(
            &id,
            second.lease_id.as_deref().unwrap(),
            "still down",
            true,
            None,
        )
        .await
        .unwrap();
    assert_eq!(dead.state, "dead", "max_attempts reached");
    let (_, errors) = svc.get(&id).await.unwrap();
    let texts: Vec<&str> = errors.iter().map(|e| e.error.as_str()).collect();
    assert_eq!(
        texts,
        ["smtp down", "still down"],
        "every attempt's error is kept"
    );
    let dlq = svc.list("dead", "q2", "", 100).await.unwrap();
    assert_eq!(dlq.len(), 1);
    let revived = svc.retry(&id).await.unwrap();
    assert_eq!((revived.state.as_str(), revived.attempt), ("available", 0));
    let third = svc
        .lease(&["q2".into()], 1, 0, "w")
        .await
        .unwrap()
        .remove(0);
    let done = svc
        .complete(
            &id,
            third.lease_id.as_deref().unwrap(),
            Some(&serde_json::json!({"ok": true})),
        )
        .await
        .unwrap();
    assert_eq!(done.state(), State::Completed);
    assert!(
        matches!(svc.retry(&id).await, Err(JobsError::Conflict(_))),
        "a completed job is not retried"
    );
    // Non-retryable failures go straight to the DLQ.
    let id = svc.enqueue(&[job("q2", 10)]).await.unwrap().remove(0).id;
    let l = svc
        .lease(&["q2".into()], 1, 0, "w")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        svc.fail(
            &id,
            l.lease_id.as_deref().unwrap(),
            "bad address",
            false,
            None
        )
        .await
        .unwrap()
        .state,
        "dead"
    );
}

async fn an_expired_lease_returns_the_job_and_fences_the_old_holder(
    svc: &JobsService,
    clock: &ManualClock,
) {
    let id = svc.enqueue(&[job("q3", 10)]).await.unwrap().remove(0).id;
    let first = svc
        .lease(&["q3".into()], 1, 0, "crashed-worker")
        .await
        .unwrap()
        .remove(0);
    let old = first.lease_id.clone().unwrap();
    svc.heartbeat(&id, &old, Some(5_000)).await.unwrap();
    clock.advance(5_000);
    let second = svc
        .lease(&["q3".into()], 1, 0, "w2")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.id, id);
    assert_eq!(second.attempt, 2, "the lost attempt counts");
    assert!(
        matches!(
            svc.complete(&id, &old, None).await,
            Err(JobsError::Conflict(_))
        ),
        "the late holder is refused"
    );
    assert!(matches!(
        svc.heartbeat(&id, &old, None).await,
        Err(JobsError::Conflict(_))
    ));
    svc.complete(&id, second.lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();
}

async fn cancel_and_bad_input(svc: &JobsService) {
    let id = svc.enqueue(&[job("q4", 10)]).await.unwrap().remove(0).id;
    assert_eq!(svc.cancel(&id).await.unwrap().state, "cancelled");
    assert!(
        svc.lease(&["q4".into()], 1, 0, "w")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(svc.cancel(&id).await, Err(JobsError::Conflict(_))));
    assert!(matches!(
        svc.cancel("nope").await,
        Err(JobsError::NotFound(_))
    ));
    let mut bad = job("bad queue", 500);
    bad.max_attempts = 0;
    let Err(JobsError::Invalid(errors)) = svc.enqueue(&[bad]).await else {
        panic!()
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["queue", "priority", "max_attempts"]);
    let mut big = job("q4", 1);
    big.payload = serde_json::json!("x".repeat(2 * 1024 * 1024));
    assert!(matches!(
        svc.enqueue(&[big]).await,
        Err(JobsError::Invalid(_))
    ));
    // A batch with one bad job enqueues nothing.
    let before = svc.list("", "q4", "", 1000).await.unwrap().len();
    assert!(svc.enqueue(&[job("q4", 1), job("", 1)]).await.is_err());
    assert_eq!(svc.list("", "q4", "", 1000).await.unwrap().len(), before);
    assert!(matches!(
        svc.lease(&[], 1, 0, "w").await,
        Err(JobsError::Invalid(_))
    ));
    assert!(matches!(
        svc.lease(&["q4".into()], 0, 0, "w").await,
        Err(JobsError::Invalid(_))
    ));
}

#[tokio::test]
async fn sqlite() {
    let (svc, clock, _dir, _st) = service(None).await;
    ordering_by_priority_then_run_at_then_fifo(&svc, &clock).await;
    complete_fail_retry_and_the_dlq(&svc, &clock).await;
    an_expired_lease_returns_the_job_and_fences_the_old_holder(&svc, &clock).await;
    cancel_and_bad_input(&svc).await;
}

#[tokio::test]
async fn postgres() {
    let Some(services) = mortar_testkit::services("jobs postgres conformance") else {
        return;
    };
    let db = services.create_database().await.unwrap();
    let (svc, clock, _dir, st) = service(Some(db.url.clone())).await;
    ordering_by_priority_then_run_at_then_fifo(&svc, &clock).await;
    complete_fail_retry_and_the_dlq(&svc, &clock).await;
    an_expired_lease_returns_the_job_and_fences_the_old_holder(&svc, &clock).await;
    cancel_and_bad_input(&svc).await;
    st.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_workers_each_job_once_on_postgres() {
    let Some(services) = mortar_testkit::services("jobs postgres concurrency") else {
        return;
    };
    let db = services.create_database().await.unwrap();
    let (svc, _clock, _dir, st) = service(Some(db.url.clone())).await;
    let jobs: Vec<NewJob> = (0..500).map(|_| job("hot", 10)).collect();
    svc.enqueue(&jobs).await.unwrap();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let batch = svc
                        .lease(&["hot".into()], 7, 0, &format!("w{w}"))
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return done;
                    }
                    for j in batch {
                        svc.complete(&j.id, j.lease_id.as_deref().unwrap(), None)
                            .await
                            .unwrap();
                        done.push(j.id);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        (n, all.len()),
        (500, 500),
        "each job leased and completed exactly once"
    );
    st.close().await;
}
