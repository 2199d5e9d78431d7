//! The Rust worker library against a real `mortar` process: completions, failures and
//! retries, panics, heartbeats past the lease, timeouts enforced, cancellation of a running
//! job, graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mortar_jobs::client::{Job, JobsClient};
use mortar_jobs::worker::{JobError, Outcome, Report, Worker};
use mortar_testkit::{Node, NodeConfig};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

async fn node(name: &str) -> (Node, JobsClient) {
    let node = Node::start(NodeConfig::named(name)).await.unwrap();
    let client = JobsClient::connect(&node.url(""));
    (node, client)
}

/// Waits (polling the server) until every job is completed, dead or cancelled.
async fn settled(client: &JobsClient, ids: &[String]) -> Vec<Job> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut jobs = Vec::new();
        for id in ids {
            jobs.push(client.get(id).await.unwrap());
        }
        if jobs
            .iter()
            .all(|j| matches!(j.state.as_str(), "completed" | "dead" | "cancelled"))
        {
            return jobs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs never settled: {jobs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn handlers_complete_fail_retry_and_panic_without_stopping_the_worker() {
    let (_node, client) = node("jobs-worker").await;
    let fast = json!({ "base_ms": 10, "max_ms": 20 });
    let mut ids = Vec::new();
    for (kind, payload) in [
        ("double", json!({ "n": 21 })),
        ("flaky", json!({})),
        ("bad", json!({})),
        ("explode", json!({})),
        ("nobody-handles-this", json!({})),
    ] {
        let body = json!({ "queue": "work", "kind": kind, "payload": payload, "backoff": fast, "max_attempts": 3 });
        ids.push(client.enqueue(&body).await.unwrap().id);
    }
    let worker = Worker::new(client.clone())
        .queue("work")
        .concurrency(4)
        .register("double", |job: Job| async move {
            let n = job.payload["n"]
                .as_i64()
                .ok_or_else(|| JobError::fatal("no n"))?;
            Ok(Some(json!({ "doubled": n * 2 })))
        })
        .register("flaky", |job: Job| async move {
            if job.attempt == 1 {
                return Err(JobError::retryable("smtp timeout").retry_in(Duration::from_millis(5)));
            }
            Ok(None)
        })
        .register("bad", |_job: Job| async move {
            // `?` on any std error is a retryable failure; here it is fatal on purpose.
            let _: serde_json::Value = serde_json::from_str("{")?;
            Ok(None)
        })
        .register("explode", |job: Job| async move {
            assert!(job.attempt > 1, "kaboom on attempt {}", job.attempt);
            Ok(Some(json!("survived")))
        });
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let jobs = settled(&client, &ids[..4]).await;
    // The kind nobody handles keeps failing (retryable) until its attempts run out.
    let orphan = settled(&client, &ids[4..]).await;
    stop.send(()).unwrap();
    let stats = run.await.unwrap().unwrap();

    let [double, flaky, bad, explode] = &jobs[..] else {
        unreachable!()
    };
    assert_eq!(double.state, "completed");
    assert_eq!(double.result, Some(json!({ "doubled": 42 })));
    assert_eq!((flaky.state.as_str(), flaky.attempt), ("completed", 2));
    assert_eq!(flaky.errors[0].error, "smtp timeout");
    // A std error through `?` is retryable: three attempts, then dead.
    assert_eq!((bad.state.as_str(), bad.attempt), ("dead", 3), "{bad:#?}");
    assert!(bad.errors[0].error.contains("EOF"), "{bad:#?}");
    assert_eq!((explode.state.as_str(), explode.attempt), ("completed", 2));
    assert!(
        explode.errors[0]
            .error
            .contains("handler panicked: kaboom on attempt 1"),
        "{explode:#?}"
    );
    assert_eq!(explode.result, Some(json!("survived")));
    assert_eq!(orphan[0].state, "dead");
    assert!(
        orphan[0].errors[0].error.contains("no handler for kind"),
        "{orphan:#?}"
    );
    assert_eq!(stats.completed, 3);
    assert_eq!(stats.panicked, 1);
    assert_eq!(stats.failed, 1 + 3 + 1 + 3, "{stats:?}");
    assert_eq!(stats.lost, 0);
}

#[tokio::test]
async fn a_fatal_error_sends_the_job_to_the_dlq_at_once() {
    let (_node, client) = node("jobs-worker-fatal").await;
    let id = client
        .enqueue(&json!({ "queue": "q", "kind": "k", "max_attempts": 5 }))
        .await
        .unwrap()
        .id;
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(client.clone())
        .queue("q")
        .register("k", |_job: Job| async move {
            Err(JobError::fatal("user deleted"))
        });
    let run = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let job = settled(&client, std::slice::from_ref(&id)).await.remove(0);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!((job.state.as_str(), job.attempt), ("dead", 1));
    assert_eq!(job.errors[0].error, "user deleted");
}

#[tokio::test]
async fn heartbeats_keep_a_long_job_alive_past_its_lease() {
    // Leases of 600 ms; the job may run 10 s and its handler runs 2 s. Without heartbeats the
    // lease would run out, the completion would be refused (409) and the job would run again.
    let node =
        Node::start(NodeConfig::named("jobs-worker-heartbeat").env("MORTAR_JOBS__LEASE_MS", "600"))
            .await
            .unwrap();
    let client = JobsClient::connect(&node.url(""));
    let id = client
        .enqueue(&json!({ "queue": "long", "kind": "k", "timeout_ms": 10_000 }))
        .await
        .unwrap()
        .id;
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(client.clone())
        .queue("long")
        .concurrency(2)
        .register("k", move |_job: Job| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(Some(json!("done")))
            }
        });
    let run = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let job = settled(&client, std::slice::from_ref(&id)).await.remove(0);
    stop.send(()).unwrap();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt),
        ("completed", 1),
        "{job:#?}"
    );
    assert_eq!(job.result, Some(json!("done")));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "ran once");
    assert_eq!((stats.completed, stats.lost), (1, 0));
}

/// Sends on drop: a handler's future was dropped.
struct Dropped(mpsc::UnboundedSender<&'static str>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

/// A handler that never returns by itself: it says it started, hands its cancellation token
/// to a task of its own (which says when it fires), and says when its future is dropped.
fn stuck(
    tx: mpsc::UnboundedSender<&'static str>,
) -> impl Fn(
    Job,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = mortar_jobs::worker::HandlerResult> + Send>,
> + Send
+ Sync
+ 'static {
    move |_job: Job| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send("started");
            let token = mortar_jobs::worker::cancellation().expect("inside a handler");
            let seen = tx.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                let _ = seen.send("token");
            });
            let _guard = Dropped(tx);
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(None)
        })
    }
}

/// Reads `rx` until it said each of `want` that many times (within 30 s).
async fn until_said(rx: &mut mpsc::UnboundedReceiver<&'static str>, want: &[(&str, usize)]) {
    let mut said: Vec<&str> = Vec::new();
    while want
        .iter()
        .any(|(w, n)| said.iter().filter(|s| *s == w).count() < *n)
    {
        let m = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("not {want:?} within 30 s, only {said:?}"))
            .unwrap();
        said.push(m);
    }
}

#[tokio::test]
async fn a_handler_past_its_timeout_is_cancelled_and_the_attempt_fails_as_timed_out() {
    let (_node, client) = node("jobs-worker-timeout").await;
    let id = client
        .enqueue(
            &json!({ "queue": "slow", "kind": "k", "timeout_ms": 500, "max_attempts": 2,
            "backoff": { "base_ms": 10, "max_ms": 20 } }),
        )
        .await
        .unwrap()
        .id;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = outcomes.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(client.clone())
        .queue("slow")
        .on_report(move |r| {
            if let Report::Ended { outcome, ran, .. } = r {
                seen.lock().unwrap().push((outcome.clone(), ran));
            }
        })
        .register("k", stuck(tx));
    let started = std::time::Instant::now();
    let run = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let job = settled(&client, std::slice::from_ref(&id)).await.remove(0);
    // Both attempts' handlers were told (their token) and dropped.
    until_said(&mut rx, &[("started", 2), ("token", 2), ("dropped", 2)]).await;
    stop.send(()).unwrap();
    let stats = run.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "stopped at the deadline, not after the handler's 600 s"
    );
    assert_eq!((job.state.as_str(), job.attempt), ("dead", 2), "{job:#?}");
    let errors: Vec<(i32, &str)> = job
        .errors
        .iter()
        .map(|e| (e.attempt, e.error.as_str()))
        .collect();
    assert_eq!(
        errors,
        [(1, "timed out after 500 ms"), (2, "timed out after 500 ms")]
    );
    assert_eq!(
        (stats.timed_out, stats.completed, stats.lost),
        (2, 0, 0),
        "{stats:?}"
    );
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    for (outcome, ran) in &outcomes {
        assert_eq!(*outcome, Outcome::TimedOut(Duration::from_millis(500)));
        assert!(*ran < Duration::from_secs(10), "{ran:?}");
    }
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_handler_and_ends_it_cancelled() {
    // Leases of 600 ms: the worker heartbeats every 200 ms, and learns of the cancellation then.
    let node =
        Node::start(NodeConfig::named("jobs-worker-cancel").env("MORTAR_JOBS__LEASE_MS", "600"))
            .await
            .unwrap();
    let client = JobsClient::connect(&node.url(""));
    let id = client
        .enqueue(&json!({ "queue": "c", "kind": "k", "timeout_ms": 60_000 }))
        .await
        .unwrap()
        .id;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(client.clone())
        .queue("c")
        .register("k", stuck(tx));
    let run = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    until_said(&mut rx, &[("started", 1)]).await;
    let asked = client.cancel(&id).await.unwrap();
    assert_eq!(
        (asked.state.as_str(), asked.cancel_requested),
        ("running", true),
        "{asked:#?}"
    );
    let job = settled(&client, std::slice::from_ref(&id)).await.remove(0);
    until_said(&mut rx, &[("token", 1), ("dropped", 1)]).await;
    stop.send(()).unwrap();
    let stats = run.await.unwrap().unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt),
        ("cancelled", 1),
        "{job:#?}"
    );
    assert!(
        job.errors[0].error.starts_with("cancelled while running"),
        "{job:#?}"
    );
    assert_eq!(
        (stats.cancelled, stats.completed, stats.failed, stats.lost),
        (1, 0, 0, 0),
        "{stats:?}"
    );
    // Not retried.
    let again = client
        .lease(&["c".into()], 1, Duration::ZERO, "t")
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test]
async fn graceful_shutdown_finishes_running_jobs_and_releases_unstarted_ones() {
    let (_node, client) = node("jobs-worker-shutdown").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let body = json!({ "queue": "s", "kind": "slow", "payload": { "i": i } });
        ids.push(client.enqueue(&body).await.unwrap().id);
    }
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    // One handler at a time, four jobs leased ahead (two leases of at most two in flight).
    let worker = Worker::new(client.clone())
        .queue("s")
        .concurrency(1)
        .prefetch(4)
        .shutdown_timeout(Duration::from_secs(10))
        .register("slow", move |job: Job| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(job.id.clone());
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(None)
            }
        });
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    let first = started.recv().await.unwrap();
    stop.send(()).unwrap();
    let stats = run.await.unwrap().unwrap();
    // Every job leased either ran (the first) or was released; some were leased ahead.
    assert_eq!(stats.completed, 1, "{stats:?}");
    assert_eq!(stats.leased, stats.completed + stats.released, "{stats:?}");
    assert!(stats.released >= 2, "{stats:?}");
    assert!(started.try_recv().is_err(), "no job started after shutdown");
    for id in &ids {
        let job = client.get(id).await.unwrap();
        if *id == first {
            assert_eq!((job.state.as_str(), job.attempt), ("completed", 1));
        } else {
            // Released: available again at once, the attempt not counted.
            assert_eq!(
                (job.state.as_str(), job.attempt),
                ("available", 0),
                "{job:#?}"
            );
        }
    }
}

#[tokio::test]
async fn shutdown_deadline_cancels_a_stuck_handler_and_releases_its_job() {
    let (_node, client) = node("jobs-worker-deadline").await;
    let id = client
        .enqueue(&json!({ "queue": "stuck", "kind": "k" }))
        .await
        .unwrap()
        .id;
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let worker = Worker::new(client.clone())
        .queue("stuck")
        .shutdown_timeout(Duration::from_millis(200))
        .register("k", move |_job: Job| {
            let started_tx = started_tx.clone();
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_secs(600)).await;
                Ok(None)
            }
        });
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    started.recv().await.unwrap();
    stop.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the shutdown deadline holds")
        .unwrap()
        .unwrap();
    assert_eq!((stats.completed, stats.released), (0, 1), "{stats:?}");
    let job = client.get(&id).await.unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempt),
        ("available", 0),
        "{job:#?}"
    );
}

#[tokio::test]
async fn a_worker_with_a_bad_queue_name_stops_with_the_servers_reason() {
    let (_node, client) = node("jobs-worker-bad").await;
    let err = Worker::new(client.clone())
        .queue("no spaces allowed")
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("queues"), "{err}");
    let err = Worker::new(client)
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least one queue"), "{err}");
}
