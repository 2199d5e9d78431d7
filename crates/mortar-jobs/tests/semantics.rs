//! An attempt's limits and ends, the same on SQLite (embedded) and PostgreSQL (cluster), on
//! injected time: timeouts are enforced (heartbeats never reach past the deadline), a running
//! job's cancellation reaches its worker at its heartbeat and ends it `cancelled`, and attempt
//! numbers stay unique across retries from the DLQ.

use std::sync::Arc;
use std::time::Duration;

use mortar_core::clock::{Clock, ManualClock};
use mortar_core::storage::Storage;
use mortar_jobs::error::JobsError;
use mortar_jobs::events::JobEvent;
use mortar_jobs::state::State;
use mortar_jobs::store::{Filter, Job};
use mortar_jobs::{JobsConfig, JobsService, NewJob};
use mortar_testkit::fixture;

/// The lease these tests' services give (a job's `timeout_ms` may be longer).
const LEASE_MS: u64 = 5_000;

async fn service(
    database_url: Option<String>,
) -> (Arc<JobsService>, ManualClock, tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let migrations = [mortar_jobs::service::migrations()];
    let storage = fixture::storage_at(dir.path(), database_url, &migrations).await;
    let clock = ManualClock::at(1_800_000_000_000);
    let cfg = JobsConfig {
        lease_ms: LEASE_MS,
        ..JobsConfig::default()
    };
    let svc = JobsService::start(&storage, &cfg, Arc::new(clock.clone()));
    (svc, clock, dir, storage)
}

fn job(queue: &str, timeout_ms: u64, max_attempts: i32) -> NewJob {
    serde_json::from_value(
        serde_json::json!({"queue": queue, "kind": "k", "timeout_ms": timeout_ms,
        "max_attempts": max_attempts, "backoff": {"base_ms": 1000, "max_ms": 1000}}),
    )
    .unwrap()
}

async fn enqueue(svc: &JobsService, j: NewJob) -> String {
    svc.enqueue(&[j]).await.unwrap().remove(0).job.id
}

async fn lease(svc: &JobsService, queue: &str) -> Job {
    let mut got = svc.lease(&[queue.into()], 1, 0, "w").await.unwrap();
    assert_eq!(got.len(), 1, "one job due on {queue}");
    got.remove(0)
}

fn lease_of(j: &Job) -> String {
    j.lease_id.clone().unwrap()
}

async fn errors(svc: &JobsService, id: &str) -> Vec<(i32, String)> {
    let (_, errors) = svc.get(id).await.unwrap();
    errors.into_iter().map(|e| (e.attempt, e.error)).collect()
}

async fn heartbeats_never_reach_past_the_deadline(svc: &JobsService, clock: &ManualClock) {
    // A 12 s timeout with 5 s leases: heartbeats renew the lease, up to the deadline.
    let id = enqueue(svc, job("t1", 12_000, 2)).await;
    let l = lease(svc, "t1").await;
    let start = l.started_at_ms.unwrap();
    assert_eq!(
        l.lease_until_ms,
        Some(start + LEASE_MS as i64),
        "a lease is jobs.lease_ms"
    );
    clock.advance(4_000);
    let hb = svc.heartbeat(&id, &lease_of(&l), None).await.unwrap();
    assert_eq!(
        hb.lease_until_ms,
        Some(start + 9_000),
        "renewed by lease_ms"
    );
    clock.advance(4_000);
    let hb = svc
        .heartbeat(&id, &lease_of(&l), Some(3_600_000))
        .await
        .unwrap();
    assert_eq!(
        hb.lease_until_ms,
        Some(start + 12_000),
        "never past the deadline, however long the extension asked"
    );
    clock.advance(4_000);
    // At the deadline: refused as timed out, and the attempt failed as such.
    let e = svc.heartbeat(&id, &lease_of(&l), None).await.unwrap_err();
    assert!(
        matches!(&e, JobsError::TimedOut(d) if d.contains("timed out after 12000 ms")),
        "{e:?}"
    );
    let (j, _) = svc.get(&id).await.unwrap();
    assert_eq!(j.state(), State::Retryable, "retried with the backoff");
    let wait = j.run_at_ms - clock.now_ms() as i64;
    assert!((500..1000).contains(&wait), "backoff {wait}");
    assert_eq!(
        errors(svc, &id).await,
        [(1, "timed out after 12000 ms".into())]
    );
    // The late holder keeps hearing why, whatever it calls.
    for refused in [
        svc.complete(&id, &lease_of(&l), None).await.map(drop),
        svc.fail(&id, &lease_of(&l), "x", true, None)
            .await
            .map(drop),
        svc.release(&id, &lease_of(&l)).await.map(drop),
    ] {
        assert!(
            matches!(refused, Err(JobsError::TimedOut(_))),
            "{refused:?}"
        );
    }
    // A worker that heartbeats until its lease reaches the deadline, then hangs and says no
    // more: maintenance fails the attempt as timed out, and the second was the last: dead.
    clock.advance(1_000);
    let l2 = lease(svc, "t1").await;
    assert_eq!(l2.attempt, 2);
    for _ in 0..2 {
        clock.advance(4_000);
        svc.heartbeat(&id, &lease_of(&l2), None).await.unwrap();
    }
    clock.advance(4_000);
    assert!(
        svc.lease(&["t1".into()], 1, 0, "w")
            .await
            .unwrap()
            .is_empty()
    );
    let (j, _) = svc.get(&id).await.unwrap();
    assert_eq!(j.state(), State::Dead);
    assert_eq!(
        errors(svc, &id).await,
        [
            (1, "timed out after 12000 ms".into()),
            (2, "timed out after 12000 ms".into())
        ]
    );
    assert!(matches!(
        svc.heartbeat(&id, &lease_of(&l2), None).await,
        Err(JobsError::TimedOut(_))
    ));

    // A worker that stops heartbeating before the deadline lost its lease: the job is
    // available again at once (no backoff), the lost attempt recorded and counted.
    let id = enqueue(svc, job("t1", 60_000, 3)).await;
    let l = lease(svc, "t1").await;
    clock.advance(LEASE_MS);
    let again = lease(svc, "t1").await;
    assert_eq!((again.id.as_str(), again.attempt), (id.as_str(), 2));
    let errs = errors(svc, &id).await;
    assert!(
        errs.len() == 1 && errs[0].0 == 1 && errs[0].1.starts_with("lease expired after 5000 ms"),
        "{errs:?}"
    );
    assert!(
        matches!(
            svc.heartbeat(&id, &lease_of(&l), None).await,
            Err(JobsError::Conflict(_))
        ),
        "a lost lease is a 409, not a timeout"
    );
    svc.complete(&id, &lease_of(&again), None).await.unwrap();

    // A timeout shorter than jobs.lease_ms is the lease.
    let id = enqueue(svc, job("t1", 2_000, 1)).await;
    let l = lease(svc, "t1").await;
    assert_eq!(l.lease_until_ms, Some(l.started_at_ms.unwrap() + 2_000));
    clock.advance(2_000);
    assert!(matches!(
        svc.complete(&id, &lease_of(&l), None).await,
        Err(JobsError::TimedOut(_))
    ));
    assert_eq!(svc.get(&id).await.unwrap().0.state(), State::Dead);
}

async fn cancelling_a_running_job_reaches_its_worker(svc: &Arc<JobsService>, clock: &ManualClock) {
    let mut events = svc.hub().subscribe::<JobEvent>();
    let id = enqueue(svc, job("c1", 60_000, 5)).await;
    let leased = lease(svc, "c1").await;
    // Asked, not done: the job runs on, marked; asking again changes nothing.
    let asked = svc.cancel(&id).await.unwrap();
    assert_eq!(asked.state(), State::Running);
    let at = asked.cancel_requested_at_ms.expect("marked");
    clock.advance(10);
    assert_eq!(
        svc.cancel(&id).await.unwrap().cancel_requested_at_ms,
        Some(at)
    );
    // The worker learns at its heartbeat: refused as cancelled, and the attempt ends so.
    let refused = svc
        .heartbeat(&id, &lease_of(&leased), None)
        .await
        .unwrap_err();
    assert!(matches!(refused, JobsError::Cancelled(_)), "{refused:?}");
    let (cancelled, errs) = svc.get(&id).await.unwrap();
    assert_eq!(cancelled.state(), State::Cancelled);
    assert!(cancelled.finished_at_ms.is_some());
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].error.starts_with("cancelled while running"),
        "{errs:?}"
    );
    // Not retried; a repeated heartbeat hears the same.
    assert!(
        svc.lease(&["c1".into()], 1, 0, "w")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        svc.heartbeat(&id, &lease_of(&leased), None).await,
        Err(JobsError::Cancelled(_))
    ));
    // The bus saw: enqueued, started, asked, cancelled.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("events come")
            .expect("no reset");
        if e.id == id {
            seen.push(mortar_core::watch::Event::event(&e));
        }
    }
    assert_eq!(
        seen,
        [
            "job.available",
            "job.running",
            "job.cancel_requested",
            "job.cancelled"
        ]
    );
    // A retry clears the request.
    let retried = svc.retry(&id).await.unwrap();
    assert_eq!(
        (retried.state(), retried.cancel_requested_at_ms),
        (State::Available, None)
    );
    let second = lease(svc, "c1").await;
    assert_eq!(second.attempt, 2);

    // A completion that comes before the worker learns wins.
    svc.cancel(&id).await.unwrap();
    let done = svc.complete(&id, &lease_of(&second), None).await.unwrap();
    assert_eq!(done.state(), State::Completed);

    // A failure, a release or a lease that runs out after the request: cancelled, never retried.
    let failing = enqueue(svc, job("c2", 60_000, 5)).await;
    let releasing = enqueue(svc, job("c2", 60_000, 5)).await;
    let silent = enqueue(svc, job("c2", 60_000, 5)).await;
    let leased = svc.lease(&["c2".into()], 3, 0, "w").await.unwrap();
    assert_eq!(leased.len(), 3);
    let lease_for = |id: &str| lease_of(leased.iter().find(|j| j.id == id).unwrap());
    for id in [&failing, &releasing, &silent] {
        assert_eq!(svc.cancel(id).await.unwrap().state(), State::Running);
    }
    let failed = svc
        .fail(&failing, &lease_for(&failing), "boom", true, None)
        .await
        .unwrap();
    assert_eq!(failed.state(), State::Cancelled, "not retried");
    let released = svc
        .release(&releasing, &lease_for(&releasing))
        .await
        .unwrap();
    assert_eq!(
        released.state(),
        State::Cancelled,
        "not given back to the queue"
    );
    clock.advance(LEASE_MS);
    assert!(
        svc.lease(&["c2".into()], 3, 0, "w")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(svc.get(&silent).await.unwrap().0.state(), State::Cancelled);

    // Waiting jobs are cancelled at once; finished ones cannot be.
    let waiting = enqueue(svc, job("c3", 60_000, 5)).await;
    assert_eq!(
        svc.cancel(&waiting).await.unwrap().state(),
        State::Cancelled
    );
    assert!(matches!(
        svc.cancel(&waiting).await,
        Err(JobsError::Conflict(_))
    ));
    assert!(
        matches!(svc.cancel(&id).await, Err(JobsError::Conflict(_))),
        "completed"
    );
}

async fn attempt_numbers_stay_unique_across_retries(svc: &JobsService, clock: &ManualClock) {
    let id = enqueue(svc, job("n1", 60_000, 2)).await;
    let fail_next = async |n: i32| {
        let l = lease(svc, "n1").await;
        assert_eq!(l.attempt, n);
        let j = svc
            .fail(&id, &lease_of(&l), &format!("failure {n}"), true, None)
            .await
            .unwrap();
        clock.advance(1_000);
        j
    };
    assert_eq!(fail_next(1).await.state(), State::Retryable);
    assert_eq!(fail_next(2).await.state(), State::Dead);
    // From the DLQ: a fresh budget of two attempts, numbered on.
    let r = svc.retry(&id).await.unwrap();
    assert_eq!((r.attempt, r.attempt_base, r.max_attempts), (2, 2, 2));
    assert_eq!(
        fail_next(3).await.state(),
        State::Retryable,
        "1 of 2 in this budget"
    );
    assert_eq!(fail_next(4).await.state(), State::Dead);
    // Again, by filter (the bulk retry of the DLQ).
    let n = svc
        .retry_where(&Filter {
            queue: "n1".into(),
            kind: String::new(),
            state: "dead".into(),
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(fail_next(5).await.state(), State::Retryable);
    let numbers: Vec<i32> = errors(svc, &id).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5], "unique and increasing");
}

#[tokio::test]
async fn sqlite() {
    let (svc, clock, _dir, _st) = service(None).await;
    heartbeats_never_reach_past_the_deadline(&svc, &clock).await;
    cancelling_a_running_job_reaches_its_worker(&svc, &clock).await;
    attempt_numbers_stay_unique_across_retries(&svc, &clock).await;
}

#[tokio::test]
async fn postgres() {
    let Some(services) = mortar_testkit::services("jobs postgres semantics") else {
        return;
    };
    let db = services.create_database().await.unwrap();
    let (svc, clock, _dir, st) = service(Some(db.url.clone())).await;
    heartbeats_never_reach_past_the_deadline(&svc, &clock).await;
    cancelling_a_running_job_reaches_its_worker(&svc, &clock).await;
    attempt_numbers_stay_unique_across_retries(&svc, &clock).await;
    st.close().await;
}
