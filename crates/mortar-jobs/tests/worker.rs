//! The Rust worker library against a real `mortar` process: completions, failures and
//! retries, panics, heartbeats past the job's timeout, graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mortar_jobs::client::{Job, JobsClient};
use mortar_jobs::worker::{JobError, Worker};
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
async fn heartbeats_keep_a_long_job_alive_past_its_timeout() {
    let (_node, client) = node("jobs-worker-heartbeat").await;
    // The lease is 600 ms; the handler runs 2 s. Without heartbeats the lease would run out,
    // the completion would be refused (409) and the job would run again.
    let id = client
        .enqueue(&json!({ "queue": "long", "kind": "k", "timeout_ms": 600 }))
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
