//! Unit tests of the service: metric grouping and handing jobs to a lease that is gone.

use super::lease::Waiting;
use super::telemetry::per_kind;
use super::*;
use crate::store::LeaseAsk;
use tokio::sync::oneshot;

#[test]
fn per_kind_visits_each_run_of_equal_queue_and_kind_once() {
    let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    let items = vec![
        s("q", "a"),
        s("q", "a"),
        s("q", "b"),
        s("r", "b"),
        s("q", "a"),
    ];
    let mut seen = Vec::new();
    per_kind(
        &items,
        |(q, k)| (q, k),
        |q, k, g| seen.push(format!("{q}/{k}x{}", g.len())),
    );
    assert_eq!(seen, ["q/ax2", "q/bx1", "r/bx1", "q/ax1"]);
    let none: Vec<(String, String)> = Vec::new();
    per_kind(
        &none,
        |(q, k)| (q, k),
        |_, _, _| panic!("called for no items"),
    );
}

#[tokio::test]
async fn jobs_handed_to_a_lease_that_is_gone_go_back_at_once() {
    let storage = mortar_testkit::fixture::embedded(&[migrations()]).await;
    let clock = mortar_core::clock::ManualClock::at(1_800_000_000_000);
    let svc = JobsService::start(&storage, &JobsConfig::default(), Arc::new(clock));
    // A lease taken off the waiting list by an enqueue whose long-poll ended meanwhile.
    let (reply, handed) = oneshot::channel();
    drop(handed);
    // Its place is never dropped: the enqueue finds it on the list.
    std::mem::forget(svc.waiting.join(
        (),
        Waiting {
            ask: LeaseAsk {
                queues: vec!["q".into()],
                max: 1,
                worker: "gone".into(),
            },
            reply,
        },
    ));
    let job: NewJob =
        serde_json::from_value(serde_json::json!({"queue": "q", "kind": "k"})).unwrap();
    let id = svc.enqueue(&[job]).await.unwrap().remove(0).job.id;
    assert_eq!(
        svc.waiting_leases(),
        0,
        "the enqueue took the waiting lease"
    );
    let (j, _) = svc.get(&id).await.unwrap();
    assert_eq!(
        (j.state.as_str(), j.attempt, j.lease_id),
        ("available", 0, None),
        "leased for the gone lease, then released without counting the attempt"
    );
}
