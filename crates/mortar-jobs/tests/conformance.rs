//! The same job-queue behaviour on SQLite (embedded) and PostgreSQL (cluster), on injected time.

use std::sync::Arc;

use mortar_core::clock::{Clock, ManualClock};
use mortar_core::storage::Storage;
use mortar_jobs::error::JobsError;
use mortar_jobs::service::{QueueRate, QueueSettings};
use mortar_jobs::state::State;
use mortar_jobs::state::UniqueWhile;
use mortar_jobs::store::{Completion, Filter};
use mortar_jobs::{JobsConfig, JobsService, NewJob};
use mortar_testkit::fixture;

fn filter(state: &str, queue: &str) -> Filter {
    Filter {
        state: state.into(),
        queue: queue.into(),
        kind: String::new(),
    }
}

fn unique(queue: &str, key: &str, w: UniqueWhile) -> NewJob {
    let mut j = job(queue, 10);
    j.unique_key = Some(key.into());
    j.unique_while = Some(w);
    if w == UniqueWhile::ForMs {
        j.unique_for_ms = Some(60_000);
    }
    j
}

async fn lease_one(svc: &JobsService, queue: &str) -> mortar_jobs::store::Job {
    svc.lease(&[queue.into()], 1, 0, "w")
        .await
        .unwrap()
        .remove(0)
}

fn job(queue: &str, priority: i32) -> NewJob {
    serde_json::from_value(serde_json::json!({"queue": queue, "kind": "email", "payload": {"to": "a@b"}, "priority": priority, "timeout_ms": 10_000})).unwrap()
}

async fn service(
    database_url: Option<String>,
) -> (Arc<JobsService>, ManualClock, tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let migrations = [mortar_jobs::service::migrations()];
    let storage = fixture::storage_at(dir.path(), database_url, &migrations).await;
    let clock = ManualClock::at(1_800_000_000_000);
    let svc = JobsService::start(&storage, &JobsConfig::default(), Arc::new(clock.clone()));
    (svc, clock, dir, storage)
}

async fn ordering_by_priority_then_run_at_then_fifo(svc: &JobsService, clock: &ManualClock) {
    let a = svc.enqueue(&[job("q1", 10)]).await.unwrap().remove(0).job;
    let b = svc.enqueue(&[job("q1", 10)]).await.unwrap().remove(0).job;
    let urgent = svc.enqueue(&[job("q1", 1)]).await.unwrap().remove(0).job;
    let mut later = job("q1", 0);
    later.delay_ms = 5_000;
    let later = svc.enqueue(&[later]).await.unwrap().remove(0).job;
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
    let id = svc.enqueue(&[j]).await.unwrap().remove(0).job.id;
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
    let dlq = svc.list(&filter("dead", "q2"), "", 100).await.unwrap();
    assert_eq!(dlq.len(), 1);
    let revived = svc.retry(&id).await.unwrap();
    assert_eq!(
        (
            revived.state.as_str(),
            revived.attempt,
            revived.attempt_base
        ),
        ("available", 2, 2),
        "a fresh budget; attempt numbers keep counting"
    );
    let third = svc
        .lease(&["q2".into()], 1, 0, "w")
        .await
        .unwrap()
        .remove(0);
    assert_eq!(third.attempt, 3);
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
    let id = enqueue_one(svc, "q2").await;
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
    let id = enqueue_one(svc, "q3").await;
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
    // A lease that runs out on the last attempt: dead, with the lost attempt as its error.
    // Here the lease (jobs.lease_ms, 30 s) reaches the job's 10 s timeout: it timed out.
    let mut last = job("q3", 10);
    last.max_attempts = 1;
    let id = svc.enqueue(&[last]).await.unwrap().remove(0).job.id;
    lease_one(svc, "q3").await;
    clock.advance(10_000);
    assert!(
        svc.lease(&["q3".into()], 1, 0, "w")
            .await
            .unwrap()
            .is_empty()
    );
    let (dead, errors) = svc.get(&id).await.unwrap();
    assert_eq!(dead.state(), State::Dead);
    assert_eq!(errors[0].error, "timed out after 10000 ms", "{errors:?}");
}

async fn cancel_and_bad_input(svc: &JobsService) {
    let id = enqueue_one(svc, "q4").await;
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
    let before = svc.list(&filter("", "q4"), "", 1000).await.unwrap().len();
    assert!(svc.enqueue(&[job("q4", 1), job("", 1)]).await.is_err());
    assert_eq!(
        svc.list(&filter("", "q4"), "", 1000).await.unwrap().len(),
        before
    );
    assert!(matches!(
        svc.lease(&[], 1, 0, "w").await,
        Err(JobsError::Invalid(_))
    ));
    assert!(matches!(
        svc.lease(&["q4".into()], 0, 0, "w").await,
        Err(JobsError::Invalid(_))
    ));
}

#[allow(clippy::many_single_char_names)]
async fn unique_keys_for_each_unique_while(svc: &JobsService, clock: &ManualClock) {
    // queued: a duplicate until the job starts.
    let first = svc
        .enqueue(&[unique("u1", "k", UniqueWhile::Queued)])
        .await
        .unwrap()
        .remove(0);
    assert!(!first.duplicate);
    let again = svc
        .enqueue(&[unique("u1", "k", UniqueWhile::Queued)])
        .await
        .unwrap()
        .remove(0);
    assert!(again.duplicate);
    assert_eq!(
        again.job.id, first.job.id,
        "the duplicate answers with the holder"
    );
    let other_queue = svc
        .enqueue(&[unique("u1b", "k", UniqueWhile::Queued)])
        .await
        .unwrap()
        .remove(0);
    assert!(!other_queue.duplicate, "keys are per queue");
    let running = lease_one(svc, "u1").await;
    let after_start = svc
        .enqueue(&[unique("u1", "k", UniqueWhile::Queued)])
        .await
        .unwrap()
        .remove(0);
    assert!(
        !after_start.duplicate,
        "queued uniqueness ends when the job starts"
    );
    svc.complete(&running.id, running.lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();

    // active: a duplicate while queued, running or waiting to retry; not once finished.
    let a = svc
        .enqueue(&[unique("u2", "k", UniqueWhile::Active)])
        .await
        .unwrap()
        .remove(0)
        .job;
    let l = lease_one(svc, "u2").await;
    assert!(
        svc.enqueue(&[unique("u2", "k", UniqueWhile::Active)])
            .await
            .unwrap()[0]
            .duplicate,
        "running blocks"
    );
    svc.fail(&a.id, l.lease_id.as_deref().unwrap(), "x", true, Some(10))
        .await
        .unwrap();
    assert!(
        svc.enqueue(&[unique("u2", "k", UniqueWhile::Active)])
            .await
            .unwrap()[0]
            .duplicate,
        "retryable blocks"
    );
    clock.advance(10);
    let l = lease_one(svc, "u2").await;
    svc.complete(&a.id, l.lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();
    let b = svc
        .enqueue(&[unique("u2", "k", UniqueWhile::Active)])
        .await
        .unwrap()
        .remove(0);
    assert!(!b.duplicate, "a completed job no longer blocks");
    svc.cancel(&b.job.id).await.unwrap();
    assert!(
        !svc.enqueue(&[unique("u2", "k", UniqueWhile::Active)])
            .await
            .unwrap()[0]
            .duplicate,
        "nor a cancelled one"
    );
    // Unset unique_while means active.
    let mut plain = job("u2d", 10);
    plain.unique_key = Some("d".into());
    let d = svc.enqueue(&[plain.clone()]).await.unwrap().remove(0).job;
    assert_eq!(d.unique_while.as_deref(), Some("active"));

    // for_ms: a duplicate for the window whatever the state, then not.
    let c = svc
        .enqueue(&[unique("u3", "k", UniqueWhile::ForMs)])
        .await
        .unwrap()
        .remove(0)
        .job;
    let l = lease_one(svc, "u3").await;
    svc.complete(&c.id, l.lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();
    assert!(
        svc.enqueue(&[unique("u3", "k", UniqueWhile::ForMs)])
            .await
            .unwrap()[0]
            .duplicate,
        "completed, still in the window"
    );
    clock.advance(60_000);
    assert!(
        !svc.enqueue(&[unique("u3", "k", UniqueWhile::ForMs)])
            .await
            .unwrap()[0]
            .duplicate,
        "window over"
    );

    // Within one batch, the second of a pair is the first's duplicate.
    let pair = svc
        .enqueue(&[
            unique("u4", "same", UniqueWhile::Active),
            unique("u4", "same", UniqueWhile::Active),
        ])
        .await
        .unwrap();
    assert_eq!((pair[0].duplicate, pair[1].duplicate), (false, true));
    assert_eq!(pair[0].job.id, pair[1].job.id);

    // Bad unique options.
    let mut bad = job("u5", 10);
    bad.unique_while = Some(UniqueWhile::Queued);
    assert!(
        matches!(svc.enqueue(&[bad]).await, Err(JobsError::Invalid(_))),
        "unique_while without a key"
    );
    let mut bad = unique("u5", "k", UniqueWhile::ForMs);
    bad.unique_for_ms = None;
    assert!(
        matches!(svc.enqueue(&[bad]).await, Err(JobsError::Invalid(_))),
        "for_ms without a window"
    );
}

async fn queue_pause_concurrency_and_rate_limits(svc: &JobsService, clock: &ManualClock) {
    let jobs: Vec<NewJob> = (0..10).map(|_| job("lim", 10)).collect();
    svc.enqueue(&jobs).await.unwrap();
    svc.set_paused("lim", true).await.unwrap();
    assert!(
        svc.lease(&["lim".into()], 10, 0, "w")
            .await
            .unwrap()
            .is_empty(),
        "paused"
    );
    svc.set_paused("lim", false).await.unwrap();
    svc.put_queue(
        "lim",
        &QueueSettings {
            concurrency: Some(2),
            ..QueueSettings::default()
        },
    )
    .await
    .unwrap();
    let got = svc.lease(&["lim".into()], 10, 0, "w").await.unwrap();
    assert_eq!(got.len(), 2, "concurrency 2");
    assert!(
        svc.lease(&["lim".into()], 10, 0, "w")
            .await
            .unwrap()
            .is_empty()
    );
    svc.complete(&got[0].id, got[0].lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        svc.lease(&["lim".into()], 10, 0, "w").await.unwrap().len(),
        1,
        "a slot opened"
    );
    // An expired lease frees its slot (the job is leasable again).
    clock.advance(10_000);
    assert_eq!(
        svc.lease(&["lim".into()], 10, 0, "w").await.unwrap().len(),
        2
    );

    let q = svc
        .put_queue(
            "lim",
            &QueueSettings {
                rate: Some(QueueRate {
                    limit: 3,
                    period_ms: 1000,
                }),
                ..QueueSettings::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(q.settings.concurrency, None, "PUT replaces every setting");
    let got = svc.lease(&["lim".into()], 10, 0, "w").await.unwrap();
    assert_eq!(got.len(), 3, "a full bucket of 3");
    assert!(
        svc.lease(&["lim".into()], 10, 0, "w")
            .await
            .unwrap()
            .is_empty(),
        "bucket empty"
    );
    clock.advance(500);
    assert_eq!(
        svc.lease(&["lim".into()], 10, 0, "w").await.unwrap().len(),
        1,
        "1.5 tokens refilled"
    );
    clock.advance(500);
    assert_eq!(
        svc.lease(&["lim".into()], 10, 0, "w").await.unwrap().len(),
        2
    );

    let bad = QueueSettings {
        concurrency: Some(0),
        target_url: Some("ftp://x".into()),
        ..QueueSettings::default()
    };
    let Err(JobsError::Invalid(errors)) = svc.put_queue("lim", &bad).await else {
        panic!()
    };
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["concurrency", "target_url"]);
    svc.put_queue("lim", &QueueSettings::default())
        .await
        .unwrap();
    let info = svc.queue("lim").await.unwrap();
    assert!(
        info.counts
            .by_state
            .iter()
            .any(|(s, n)| s == "completed" && *n == 1),
        "{info:?}"
    );
}

async fn batch_complete_release_bulk_and_retention(svc: &JobsService, clock: &ManualClock) {
    let jobs: Vec<NewJob> = (0..3).map(|_| job("bc", 10)).collect();
    svc.enqueue(&jobs).await.unwrap();
    let got = svc.lease(&["bc".into()], 3, 0, "w").await.unwrap();
    let released = svc
        .release(&got[2].id, got[2].lease_id.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (released.state.as_str(), released.attempt),
        ("available", 0),
        "release does not count the attempt"
    );
    let items = vec![
        Completion {
            id: got[0].id.clone(),
            lease_id: got[0].lease_id.clone().unwrap(),
            result: Some("{\"n\":1}".into()),
        },
        Completion {
            id: got[1].id.clone(),
            lease_id: "not-mine".into(),
            result: None,
        },
        Completion {
            id: "missing".into(),
            lease_id: "x".into(),
            result: None,
        },
    ];
    let done = svc.complete_batch(items).await.unwrap();
    assert_eq!(done.completed, 1);
    assert_eq!(done.rejected, [got[1].id.clone(), "missing".to_owned()]);
    assert_eq!(
        svc.get(&got[0].id).await.unwrap().0.result.as_deref(),
        Some("{\"n\":1}")
    );

    // Three dead jobs: bulk retry by filter, then bulk discard.
    let mut dying: Vec<NewJob> = (0..3).map(|_| job("dlq", 10)).collect();
    for j in &mut dying {
        j.max_attempts = 1;
    }
    svc.enqueue(&dying).await.unwrap();
    for l in svc.lease(&["dlq".into()], 3, 0, "w").await.unwrap() {
        svc.fail(&l.id, l.lease_id.as_deref().unwrap(), "boom", true, None)
            .await
            .unwrap();
    }
    assert_eq!(
        svc.list(&filter("dead", "dlq"), "", 10)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(svc.retry_where(&filter("dead", "dlq")).await.unwrap(), 3);
    for l in svc.lease(&["dlq".into()], 3, 0, "w").await.unwrap() {
        svc.fail(&l.id, l.lease_id.as_deref().unwrap(), "boom", false, None)
            .await
            .unwrap();
    }
    assert_eq!(svc.discard_where(&filter("dead", "dlq")).await.unwrap(), 3);
    assert!(
        svc.list(&filter("", "dlq"), "", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        svc.retry_where(&filter("nonsense", "")).await,
        Err(JobsError::Invalid(_))
    ));

    // Retention: completed jobs go after jobs.retention_ms (24 h), a queue's own sooner;
    // dead ones stay for dead_retention_ms.
    svc.put_queue(
        "short",
        &QueueSettings {
            retention_ms: Some(1000),
            ..QueueSettings::default()
        },
    )
    .await
    .unwrap();
    let mut short = job("short", 10);
    short.max_attempts = 1;
    svc.enqueue(&[short.clone(), short]).await.unwrap();
    let l = svc.lease(&["short".into()], 2, 0, "w").await.unwrap();
    svc.complete(&l[0].id, l[0].lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();
    svc.fail(
        &l[1].id,
        l[1].lease_id.as_deref().unwrap(),
        "x",
        false,
        None,
    )
    .await
    .unwrap();
    clock.advance(1001);
    svc.prune().await.unwrap();
    assert!(
        svc.get(&l[0].id).await.is_err(),
        "past the queue's retention"
    );
    assert!(svc.get(&l[1].id).await.is_ok(), "dead jobs are kept longer");
    assert!(svc.get(&got[0].id).await.is_ok(), "within the default 24 h");
    clock.advance(24 * 3_600_000);
    svc.prune().await.unwrap();
    assert!(svc.get(&got[0].id).await.is_err(), "past 24 h");
    assert!(svc.get(&l[1].id).await.is_ok());
    clock.advance(7 * 24 * 3_600_000);
    svc.prune().await.unwrap();
    assert!(svc.get(&l[1].id).await.is_err(), "past the DLQ's retention");
}

async fn backoff_on_injected_time(svc: &JobsService, clock: &ManualClock) {
    let mut j = job("bo", 10);
    j.backoff =
        serde_json::from_value(serde_json::json!({"base_ms": 1000, "max_ms": 4000})).unwrap();
    let id = svc.enqueue(&[j]).await.unwrap().remove(0).job.id;
    // Attempt n waits within [d/2, d) for d = min(1000 * 2^(n-1), 4000).
    for d in [1000u64, 2000, 4000, 4000] {
        let l = lease_one(svc, "bo").await;
        let failed = svc
            .fail(&id, l.lease_id.as_deref().unwrap(), "x", true, None)
            .await
            .unwrap();
        let wait = failed.run_at_ms as u64 - clock.now_ms();
        assert!(
            (d / 2..d).contains(&wait),
            "attempt {}: waits {wait} of {d}",
            l.attempt
        );
        clock.advance(wait - 1);
        assert!(
            svc.lease(&["bo".into()], 1, 0, "w")
                .await
                .unwrap()
                .is_empty(),
            "not before its time"
        );
        clock.advance(1);
    }
}

/// Enqueues one job on `queue`; its id.
async fn enqueue_one(svc: &JobsService, queue: &str) -> String {
    svc.enqueue(&[job(queue, 10)])
        .await
        .unwrap()
        .remove(0)
        .job
        .id
}

/// Drives `lease` until `n` leases wait on this node (panics if it returns first).
async fn until_waiting<F: std::future::Future>(
    svc: &JobsService,
    lease: std::pin::Pin<&mut F>,
    n: usize,
) {
    tokio::select! {
        _ = lease => panic!("the lease returned instead of waiting"),
        () = async {
            while svc.waiting_leases() < n {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        } => {}
    }
}

async fn a_waiting_lease_gets_new_jobs_within_the_enqueue(svc: &JobsService) {
    // A waiting lease is served inside the enqueue's transaction: the job is running when the
    // enqueue returns, before the lease is polled again.
    let ho = ["ho".to_owned()];
    let lease = svc.lease(&ho, 5, 30_000, "w1");
    tokio::pin!(lease);
    until_waiting(svc, lease.as_mut(), 1).await;
    let id = enqueue_one(svc, "ho").await;
    let (stored, _) = svc.get(&id).await.unwrap();
    assert_eq!(
        (
            stored.state.as_str(),
            stored.attempt,
            stored.worker.as_deref()
        ),
        ("running", 1, Some("w1")),
        "leased by the enqueue"
    );
    assert_eq!(svc.waiting_leases(), 0);
    let got = lease.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0], stored,
        "the lease's copy is the stored row, field for field"
    );
    assert_eq!(
        stored.lease_until_ms,
        Some(stored.started_at_ms.unwrap() + stored.timeout_ms)
    );
    svc.complete(&id, stored.lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();

    // An enqueue dropped right after it took a waiting lease (its request cancelled) still
    // commits and answers that lease.
    let lease = svc.lease(&ho, 5, 30_000, "w2");
    tokio::pin!(lease);
    until_waiting(svc, lease.as_mut(), 1).await;
    let jobs = [job("ho", 10)];
    let mut enqueue = Box::pin(svc.enqueue(&jobs));
    tokio::select! {
        biased;
        _ = &mut enqueue => panic!("the enqueue finished in one poll"),
        () = std::future::ready(()) => {}
    }
    assert_eq!(svc.waiting_leases(), 0, "the enqueue took the lease");
    drop(enqueue);
    let got = lease.await.unwrap();
    assert_eq!(got.len(), 1, "the dropped enqueue's job reached the lease");
    svc.complete(&got[0].id, got[0].lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();

    // The oldest waiting lease is served first and only as many as the new jobs need.
    let first = svc.lease(&ho, 1, 30_000, "first");
    let mut second = Box::pin(svc.lease(&ho, 1, 30_000, "second"));
    tokio::pin!(first);
    until_waiting(svc, first.as_mut(), 1).await;
    until_waiting(svc, second.as_mut(), 2).await;
    let id = enqueue_one(svc, "ho").await;
    assert_eq!(svc.waiting_leases(), 1, "one job takes one waiting lease");
    let got = first.await.unwrap();
    assert_eq!(
        (got[0].id.as_str(), got[0].worker.as_deref()),
        (id.as_str(), Some("first"))
    );
    // A dropped long-poll leaves the list.
    drop(second);
    assert_eq!(svc.waiting_leases(), 0, "the dropped lease left the list");
    svc.complete(&id, got[0].lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();

    // The hand-off keeps the queue's rules: a paused queue's job stays available.
    svc.set_paused("ho-paused", true).await.unwrap();
    let ho_paused = ["ho-paused".to_owned()];
    let mut paused = Box::pin(svc.lease(&ho_paused, 5, 30_000, "w"));
    until_waiting(svc, paused.as_mut(), 1).await;
    let id = enqueue_one(svc, "ho-paused").await;
    assert_eq!(svc.get(&id).await.unwrap().0.state, "available");
    until_waiting(svc, paused.as_mut(), 1).await; // answered empty, it waits again
    drop(paused);
    svc.cancel(&id).await.unwrap();

    // A limited queue's job is leased under the queue's lock: the waiting lease gets it, within
    // the limit, and a second job waits for the slot.
    svc.put_queue(
        "ho-limited",
        &QueueSettings {
            concurrency: Some(1),
            ..QueueSettings::default()
        },
    )
    .await
    .unwrap();
    let ho_limited = ["ho-limited".to_owned()];
    let mut limited = Box::pin(svc.lease(&ho_limited, 5, 30_000, "w"));
    until_waiting(svc, limited.as_mut(), 1).await;
    let jobs = [job("ho-limited", 10), job("ho-limited", 10)];
    let ids: Vec<String> = svc
        .enqueue(&jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    let got = limited.await.unwrap();
    assert_eq!(got.len(), 1, "concurrency 1");
    assert_eq!(got[0].id, ids[0]);
    assert_eq!(svc.get(&ids[1]).await.unwrap().0.state, "available");
    svc.complete(&ids[0], got[0].lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();
    svc.cancel(&ids[1]).await.unwrap();
}

#[tokio::test]
async fn sqlite() {
    let (svc, clock, _dir, _st) = service(None).await;
    ordering_by_priority_then_run_at_then_fifo(&svc, &clock).await;
    complete_fail_retry_and_the_dlq(&svc, &clock).await;
    an_expired_lease_returns_the_job_and_fences_the_old_holder(&svc, &clock).await;
    cancel_and_bad_input(&svc).await;
    unique_keys_for_each_unique_while(&svc, &clock).await;
    queue_pause_concurrency_and_rate_limits(&svc, &clock).await;
    batch_complete_release_bulk_and_retention(&svc, &clock).await;
    backoff_on_injected_time(&svc, &clock).await;
    a_waiting_lease_gets_new_jobs_within_the_enqueue(&svc).await;
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
    unique_keys_for_each_unique_while(&svc, &clock).await;
    queue_pause_concurrency_and_rate_limits(&svc, &clock).await;
    batch_complete_release_bulk_and_retention(&svc, &clock).await;
    backoff_on_injected_time(&svc, &clock).await;
    a_waiting_lease_gets_new_jobs_within_the_enqueue(&svc).await;
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

#[tokio::test]
async fn transactional_enqueue_exists_only_if_the_transaction_commits() {
    let Some(services) = mortar_testkit::services("jobs transactional enqueue") else {
        return;
    };
    let db = services.create_database().await.unwrap();
    let (svc, _clock, _dir, st) = service(Some(db.url.clone())).await;
    // Mortar keeps its tables (and migrations table) in its own schema; the application's
    // connection has the default search path and its tables in `public`.
    let app = sqlx::PgPool::connect(&db.url).await.unwrap();
    let pool = &app;
    let placed: (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('mortar.jobs_jobs') IS NOT NULL, \
                to_regclass('public._sqlx_migrations') IS NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(placed, (true, true));
    // The application's own table, written in the same transaction.
    sqlx::query("CREATE TABLE orders (id INT PRIMARY KEY)")
        .execute(pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rolled = mortar_jobs::service::enqueue_in_tx(&mut tx, &job("outbox", 10))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        matches!(svc.get(&rolled.job.id).await, Err(JobsError::NotFound(_))),
        "rolled back: no job"
    );

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO orders VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = mortar_jobs::service::enqueue_in_tx(&mut tx, &job("outbox", 10))
        .await
        .unwrap();
    // The transaction's search path is the application's again.
    sqlx::query("INSERT INTO orders VALUES (3)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut bad = job("outbox", 10);
    bad.max_attempts = 0;
    assert!(matches!(
        mortar_jobs::service::enqueue_in_tx(&mut tx, &bad).await,
        Err(JobsError::Invalid(_))
    ));
    // A waiting worker is woken by the commit (NOTIFY), well before its long-poll ends.
    let waiter = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.lease(&["outbox".into()], 1, 10_000, "w").await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    tx.commit().await.unwrap();
    let started = std::time::Instant::now();
    let got = waiter.await.unwrap();
    assert_eq!(got[0].id, kept.job.id, "committed: processed");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // The plain-SQL form, for any language.
    let mut tx = pool.begin().await.unwrap();
    let id: String = sqlx::query_scalar(
        "SELECT mortar.mortar_jobs_enqueue('outbox', 'email', '{\"to\": \"x\"}'::jsonb)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let sql_job = svc.get(&id).await.unwrap().0;
    assert_eq!(
        (sql_job.state.as_str(), sql_job.payload.as_str()),
        ("available", "{\"to\": \"x\"}")
    );
    assert_eq!(lease_one(&svc, "outbox").await.id, id);
    assert!(
        sqlx::query("SELECT mortar.mortar_jobs_enqueue('outbox', 'email', '{}'::jsonb, 500)")
            .execute(pool)
            .await
            .is_err()
    );
    st.close().await;
}
