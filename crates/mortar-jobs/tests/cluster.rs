//! Jobs across real nodes: 3 nodes on PostgreSQL with 20 workers, and kill -9 of a node during
//! a steady enqueue load (embedded and cluster).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use mortar_testkit::{Cluster, Node, NodeConfig};
use serde_json::{Value, json};

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let r = http.post(url).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Every job of `queue` as (id, state, priority, attempt, started_at), paging through the list.
async fn all_jobs(http: &reqwest::Client, node: &Node, queue: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = node.url(&format!(
            "/v1/jobs?queue={queue}&limit=1000&cursor={cursor}"
        ));
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => c.clone_into(&mut cursor),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_twenty_workers_twenty_thousand_jobs_each_exactly_once() {
    let Some(cluster) = Cluster::start(3).await.unwrap() else {
        return;
    };
    let http = reqwest::Client::new();
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    // 20 000 jobs in batches through every node: a tenth urgent (priority 0).
    for b in 0..10 {
        let jobs: Vec<Value> = (0..2000)
            .map(|i| {
                json!({"queue": "bulk", "kind": "noop", "payload": {"n": b * 2000 + i},
                "priority": if i % 10 == 0 { 0 } else { 10 }, "timeout_ms": 120_000})
            })
            .collect();
        let (s, _) = post(
            &http,
            format!("{}/v1/jobs/batch", urls[b % 3]),
            json!({"jobs": jobs}),
        )
        .await;
        assert_eq!(s, 201);
    }
    // A capped queue: concurrency 4 across all nodes and workers.
    let r = http
        .put(format!("{}/v1/jobs/queues/capped", urls[1]))
        .json(&json!({"concurrency": 4}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let capped: Vec<Value> = (0..300)
        .map(|_| json!({"queue": "capped", "kind": "slow"}))
        .collect();
    assert_eq!(
        post(
            &http,
            format!("{}/v1/jobs/batch", urls[2]),
            json!({"jobs": capped})
        )
        .await
        .0,
        201
    );

    let running = Arc::new(AtomicI64::new(0));
    let max_running = Arc::new(AtomicI64::new(0));
    let workers: Vec<_> = (0..20)
        .map(|w| {
            let (http, base) = (http.clone(), urls[w % 3].clone());
            let (running, max_running) = (running.clone(), max_running.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                // Priorities of the bulk jobs this worker got, in lease order.
                let mut priorities = Vec::new();
                let mut idle = 0;
                while idle < 3 {
                    let (s, got) = post(&http, format!("{base}/v1/jobs/lease"),
                        json!({"queues": ["capped", "bulk"], "max": 25, "wait_ms": 300, "worker": format!("w{w}")})).await;
                    assert_eq!(s, 200, "{got}");
                    let items = got["items"].as_array().unwrap().clone();
                    if items.is_empty() {
                        idle += 1;
                        continue;
                    }
                    idle = 0;
                    let slow: Vec<&Value> = items.iter().filter(|j| j["queue"] == "capped").collect();
                    if !slow.is_empty() {
                        // Observed inside the server's running window (after the lease, before
                        // the completion), so the count never over-states the real overlap.
                        let now = running.fetch_add(slow.len() as i64, Ordering::SeqCst) + slow.len() as i64;
                        max_running.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        running.fetch_sub(slow.len() as i64, Ordering::SeqCst);
                    }
                    let completions: Vec<Value> =
                        items.iter().map(|j| json!({"id": j["id"], "lease_id": j["lease_id"]})).collect();
                    let (s, c) = post(&http, format!("{base}/v1/jobs/complete"), json!({"items": completions})).await;
                    assert_eq!((s, c["rejected"].as_array().unwrap().len()), (200, 0), "{c}");
                    done.extend(items.iter().map(|j| j["id"].as_str().unwrap().to_owned()));
                    priorities.extend(items.iter().filter(|j| j["queue"] == "bulk").map(|j| j["priority"].as_i64().unwrap()));
                }
                (done, priorities)
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut per_worker = Vec::new();
    for w in workers {
        let (done, priorities) = w.await.unwrap();
        per_worker.push(done.len());
        ids.extend(done);
        // All urgent jobs existed before any worker started, so once a lease hands a worker an
        // ordinary job no urgent one was left to take: no worker may get an urgent job after
        // an ordinary one.
        assert!(
            priorities.windows(2).all(|w| w[0] <= w[1]),
            "a worker got an urgent job after an ordinary one: {priorities:?}"
        );
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), unique.len()),
        (20_300, 20_300),
        "each job completed exactly once"
    );
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "every worker got work: {per_worker:?}"
    );
    let max = max_running.load(Ordering::SeqCst);
    assert!(
        max <= 4,
        "the queue's concurrency limit was exceeded: {max} running at once"
    );
    assert!(
        max >= 2,
        "the limit was never even approached ({max}): the test proves nothing"
    );

    let jobs = all_jobs(&http, &cluster.nodes[0], "bulk").await;
    assert_eq!(jobs.len(), 20_000);
    assert!(
        jobs.iter()
            .all(|j| j["state"] == "completed" && j["attempt"] == 1),
        "no job ran twice"
    );
}

/// Enqueues from 4 clients until stopped; returns the ids acknowledged with a 2xx.
fn steady_enqueue(
    http: &reqwest::Client,
    url: &str,
    stop: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..4)
        .map(|c| {
            let (http, url, stop) = (http.clone(), url.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while stop.load(Ordering::SeqCst) == 0 {
                    i += 1;
                    let r = http
                        .post(format!("{url}/v1/jobs"))
                        .json(&json!({"queue": "steady", "kind": "k", "payload": {"client": c, "i": i}}))
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().await.unwrap();
                            acked.push(v["id"].as_str().unwrap().to_owned());
                        }
                        // The node is gone: wait for the stop.
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                acked
            })
        })
        .collect()
}

async fn kill_during_enqueue_loses_nothing(node: &mut Node) {
    let http = reqwest::Client::new();
    let stop = Arc::new(AtomicUsize::new(0));
    let clients = steady_enqueue(&http, &node.url(""), &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(1, Ordering::SeqCst);
    let mut acked = Vec::new();
    for c in clients {
        acked.extend(c.await.unwrap());
    }
    assert!(acked.len() > 50, "the load ran ({} acked)", acked.len());
    node.restart().await.unwrap();
    let present: HashSet<String> = all_jobs(&http, node, "steady")
        .await
        .into_iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !present.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged jobs lost: {lost:?}",
        lost.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_enqueue_loses_no_acknowledged_job_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::named("jobs-kill");
    cfg.data_dir = Some(dir.path().join("data"));
    let mut node = Node::start(cfg).await.unwrap();
    kill_during_enqueue_loses_nothing(&mut node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_enqueue_loses_no_acknowledged_job_cluster() {
    let Some(mut cluster) = Cluster::start(1).await.unwrap() else {
        return;
    };
    kill_during_enqueue_loses_nothing(cluster.node(0)).await;
}
