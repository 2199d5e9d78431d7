//! Real `mortar` processes: three nodes on one PostgreSQL, SSE watchers on every node receive
//! every revision written on any node, in order, none missing — also after a watcher drops and
//! resumes on another node with `Last-Event-ID`; and kill -9 during writes loses nothing
//! acknowledged.

use std::time::Duration;

use mortar_testkit::{Cluster, Node, NodeConfig};
use serde_json::{Value, json};

/// One SSE event.
#[derive(Debug, Clone)]
struct Sse {
    id: i64,
    event: String,
    data: Value,
}

/// Reads SSE events from `url` (resuming after `last_id` if given) into `tx` until `stop`.
async fn follow(url: String, last_id: Option<i64>, tx: tokio::sync::mpsc::UnboundedSender<Sse>) {
    let mut req = reqwest::Client::new().get(&url);
    if let Some(id) = last_id {
        req = req.header("last-event-id", id.to_string());
    }
    let mut res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    let mut buf = String::new();
    while let Ok(Some(chunk)) = res.chunk().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    v.trim().clone_into(&mut event);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if let Some(id) = id
                && tx
                    .send(Sse {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap_or(Value::Null),
                    })
                    .is_err()
            {
                return;
            }
        }
    }
}

async fn put(http: &reqwest::Client, url: String, value: Value) -> i64 {
    let res = http.put(&url).json(&value).send().await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    res.json::<Value>().await.unwrap()["revision"]
        .as_i64()
        .unwrap()
}

/// Collects events from `rx` until one at or past `until`.
async fn collect_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Sse>,
    until: i64,
    into: &mut Vec<Sse>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while into.last().is_none_or(|e| e.id < until) {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "watcher stuck at {:?}, waiting for {until}",
                    into.last().map(|e| e.id)
                )
            })
            .expect("stream open");
        into.push(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_every_node_see_every_revision_in_order() {
    let Some(mut cluster) = Cluster::start(3).await.unwrap() else {
        return;
    };
    let http = reqwest::Client::new();
    put(
        &http,
        cluster.node(0).url("/v1/config/c/base/seed"),
        json!(0),
    )
    .await;
    let first = put(
        &http,
        cluster.node(0).url("/v1/config/c/prod/seed"),
        json!(1),
    )
    .await;

    let mut rxs = Vec::new();
    for i in 0..3 {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(follow(
            cluster.node(i).url("/v1/config/c/prod/watch"),
            None,
            tx,
        ));
        rxs.push(rx);
    }
    // Each starts with a snapshot at or after the seed.
    let mut seen: Vec<Vec<Sse>> = vec![Vec::new(); 3];
    for (rx, s) in rxs.iter_mut().zip(&mut seen) {
        collect_until(rx, first, s).await;
        assert_eq!(s[0].event, "snapshot");
    }

    // 150 writes, 50 through each node, concurrently; prod and base keys never shadow each other.
    let urls: Vec<String> = (0..3)
        .map(|i| cluster.node(i).url("/v1/config/c"))
        .collect();
    let mut writers = Vec::new();
    for (n, base) in urls.iter().enumerate() {
        let (http, base) = (http.clone(), base.clone());
        writers.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                let (env, key) = if i % 2 == 0 {
                    ("prod", format!("p{n}-{i}"))
                } else {
                    ("base", format!("b{n}-{i}"))
                };
                revs.push(put(&http, format!("{base}/{env}/{key}"), json!(i)).await);
            }
            revs
        }));
    }
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    written.sort_unstable();
    let head = *written.last().unwrap();

    // Watcher 2 drops half-way and resumes on node 0 with Last-Event-ID.
    let (tx, mut resumed) = tokio::sync::mpsc::unbounded_channel();
    let cut = seen[2].last().unwrap().id;
    drop(rxs.pop());
    tokio::spawn(follow(
        cluster.node(0).url("/v1/config/c/prod/watch"),
        Some(cut),
        tx,
    ));
    let mut rest = Vec::new();
    collect_until(&mut resumed, head, &mut rest).await;
    seen[2].extend(rest);

    for (i, rx) in rxs.iter_mut().enumerate() {
        collect_until(rx, head, &mut seen[i]).await;
    }
    for (i, s) in seen.iter().enumerate() {
        let got: Vec<i64> = s
            .iter()
            .filter(|e| e.event == "change")
            .map(|e| e.id)
            .filter(|r| *r > s[0].id)
            .collect();
        let want: Vec<i64> = written.iter().copied().filter(|r| *r > s[0].id).collect();
        assert_eq!(
            got, want,
            "watcher {i}: every revision after its snapshot, in order, once"
        );
        assert!(s.iter().all(|e| e.event != "reset"), "watcher {i}");
        assert!(
            s.iter()
                .filter(|e| e.event == "change")
                .all(|e| e.data["changes"].as_array().is_some_and(|c| c.len() == 1)),
            "watcher {i}: each change names its key"
        );
    }
    // Checked against the history as well.
    let h: Value = http
        .get(cluster.node(1).url("/v1/config/c/prod/history?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["items"].as_array().unwrap().len(), 76);
}

#[tokio::test]
async fn kill_9_during_writes_loses_nothing_acknowledged() {
    let mut node = Node::start(NodeConfig::named("config-crash"))
        .await
        .unwrap();
    let base = node.url("/v1/config/crash/base");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, i64)>();
    let writer = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("k{i}");
                let Ok(res) = http
                    .put(format!("{base}/{key}"))
                    .json(&json!(i))
                    .send()
                    .await
                else {
                    return;
                };
                if res.status() != 200 {
                    return;
                }
                let _ = tx.send((key, i));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    node.kill();
    let _ = writer.await;
    let mut acked = Vec::new();
    while let Ok(a) = rx.try_recv() {
        acked.push(a);
    }
    assert!(
        acked.len() > 10,
        "only {} writes before the kill",
        acked.len()
    );
    node.restart().await.unwrap();
    let v: Value = http
        .get(node.url("/v1/config/crash/base"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (key, i) in &acked {
        assert_eq!(
            v["values"][key]["value"],
            json!(i),
            "{key} was acknowledged"
        );
    }
}
