//! Watches over real sockets with real clients, through `GET /v1/jobs/events`: SSE (reqwest,
//! streaming) with `Last-Event-ID` resume and resets, keep-alives through an idle period longer
//! than the HTTP idle timeout, long-poll, WebSocket (tokio-tungstenite) with the slow-consumer
//! drop, and delivery across two nodes over PostgreSQL NOTIFY and over Redis pub/sub.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use mortar_server::config::Config;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A node served on a real port, in this process.
struct Served {
    base: String,
    app_hub: std::sync::Arc<mortar_core::watch::Hub>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(f: impl FnOnce(&mut Config)) -> Served {
    mortar_core::metrics::install();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.cache.resp_listen = "off".into();
    f(&mut config);
    let app = mortar_server::app::build(&config).await.unwrap();
    let listeners = mortar_core::http::Listeners::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let base = format!("http://{}", listeners.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = app.node.storage.hub.clone();
    let stopping = app.node.storage.stopping.clone();
    let http = config.http.clone();
    tokio::spawn(async move {
        let signal = async move {
            let _ = stopped.await;
            stopping.begin();
        };
        let _ = mortar_core::http::serve(listeners, app.router, &http, signal).await;
    });
    Served {
        base,
        app_hub: hub,
        stop: Some(stop),
        _dir: dir,
    }
}

impl Served {
    async fn enqueue(&self, queue: &str, kind: &str) -> String {
        let res = reqwest::Client::new()
            .post(format!("{}/v1/jobs", self.base))
            .json(&json!({"queue": queue, "kind": kind}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// One SSE event (or a comment).
#[derive(Debug, Default, Clone)]
struct Sse {
    id: String,
    event: String,
    data: String,
    comment: bool,
}

/// Reads SSE events from a streaming response.
struct SseReader {
    res: reqwest::Response,
    buf: String,
}

impl SseReader {
    async fn open(url: &str, last_event_id: Option<&str>) -> Self {
        let mut req = reqwest::Client::new()
            .get(url)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Self {
            res,
            buf: String::new(),
        }
    }

    /// The next event or comment, within `within`.
    async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Sse::default();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        ev.comment = true;
                        ev.data.push_str(c);
                    } else if let Some((k, v)) = line.split_once(':') {
                        let v = v.strip_prefix(' ').unwrap_or(v).to_owned();
                        match k {
                            "id" => ev.id = v,
                            "event" => ev.event = v,
                            "data" => ev.data = v,
                            _ => {}
                        }
                    }
                }
                return Some(ev);
            }
            let chunk = tokio::time::timeout_at(deadline, self.res.chunk())
                .await
                .ok()?
                .unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event that is not a comment.
    async fn event(&mut self) -> Sse {
        loop {
            let ev = self
                .next(Duration::from_secs(10))
                .await
                .expect("an event within 10 s");
            if !ev.comment {
                return ev;
            }
        }
    }
}

#[tokio::test]
async fn sse_filters_by_queue_resumes_by_last_event_id_and_resets_stale_cursors() {
    let node = serve(|_| {}).await;
    let url = format!("{}/v1/jobs/events?queue=mail", node.base);
    let mut sse = SseReader::open(&url, None).await;
    node.enqueue("other", "x").await;
    let id = node.enqueue("mail", "send").await;
    let ev = sse.event().await;
    assert_eq!(ev.event, "job.available");
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        (data["id"].as_str(), data["queue"].as_str()),
        (Some(&*id), Some("mail"))
    );
    let seen = ev.id.clone();
    drop(sse);

    // Changes while the client is away are delivered when it comes back with its cursor.
    let a = node.enqueue("mail", "send").await;
    let b = node.enqueue("mail", "send").await;
    let mut sse = SseReader::open(&url, Some(&seen)).await;
    for want in [a, b] {
        let ev = sse.event().await;
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(data["id"], json!(want));
    }

    // A cursor from another node or an earlier run: a reset, then live changes.
    let mut sse = SseReader::open(&url, Some("1-5")).await;
    let ev = sse.event().await;
    assert_eq!(ev.event, "reset");
    let c = node.enqueue("mail", "send").await;
    let data: Value = serde_json::from_str(&sse.event().await.data).unwrap();
    assert_eq!(data["id"], json!(c));

    // A cursor compacted away (more changes than a node keeps came since): a reset.
    let old = cursor_now(&node);
    for i in 0..mortar_core::watch::KEEP + 10 {
        node.app_hub
            .publish("jobs", "job.available", "mail", &json!({"n": i}));
    }
    let mut late = SseReader::open(&url, Some(&old)).await;
    assert_eq!(late.event().await.event, "reset");

    // A malformed cursor is a clear 400.
    let res = reqwest::Client::new()
        .get(&url)
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "Last-Event-ID", "{body}");
}

/// A cursor for "now" on `node`'s jobs topic (what a client that just read would hold).
fn cursor_now(node: &Served) -> String {
    node.app_hub.watch("jobs", false, None).cursor().to_string()
}

#[tokio::test]
async fn keep_alives_hold_a_quiet_stream_open_past_the_idle_timeout() {
    let node = serve(|c| c.http.idle_timeout_ms = 1_000).await;
    let url = format!("{}/v1/jobs/events", node.base);
    let mut sse = SseReader::open(&url, None).await;
    let quiet = tokio::time::Instant::now();
    let mut comments = 0;
    while quiet.elapsed() < Duration::from_secs(3) {
        let ev = sse
            .next(Duration::from_secs(2))
            .await
            .expect("a keep-alive");
        assert!(ev.comment, "{ev:?}");
        comments += 1;
    }
    assert!(comments >= 3, "{comments} keep-alives in 3 s");
    let id = node.enqueue("q", "k").await;
    let data: Value = serde_json::from_str(&sse.event().await.data).unwrap();
    assert_eq!(data["id"], json!(id));
}

#[tokio::test]
async fn long_poll_waits_for_the_first_change_and_returns_the_cursor_to_continue() {
    let node = serve(|_| {}).await;
    let client = reqwest::Client::new();
    let poll = |cursor: &str| {
        client
            .get(format!(
                "{}/v1/jobs/events?wait_ms=300&cursor={cursor}",
                node.base
            ))
            .send()
    };
    let start = cursor_now(&node);
    let empty: Value = poll(&start).await.unwrap().json().await.unwrap();
    assert_eq!(empty["items"], json!([]));
    let waiting = {
        let url = format!("{}/v1/jobs/events", node.base);
        let start = start.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .get(format!("{url}?wait_ms=10000&cursor={start}"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = node.enqueue("q", "k").await;
    let got = waiting.await.unwrap();
    assert_eq!(got["items"][0]["data"]["id"], json!(id), "{got}");
    assert_eq!(got["items"][0]["event"], "job.available");
    let next = got["cursor"].as_str().unwrap();
    let after: Value = poll(next).await.unwrap().json().await.unwrap();
    assert_eq!(after["items"], json!([]), "nothing is delivered twice");
    let bad = client
        .get(format!("{}/v1/jobs/events?wait_ms=999999", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
}

#[tokio::test]
async fn websocket_delivers_json_and_drops_a_consumer_that_stops_reading() {
    let node = serve(|_| {}).await;
    let ws_url = format!("{}/v1/jobs/events", node.base.replace("http", "ws"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let id = node.enqueue("q", "k").await;
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(
        (v["event"].as_str(), &v["data"]["id"]),
        (Some("job.available"), &json!(id))
    );
    ws.send(Message::Close(None)).await.unwrap();

    // A client that never reads: the server's buffer fills and it is closed, not grown.
    let (mut slow, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let big = "x".repeat(16 * 1024);
    for i in 0..3_000 {
        node.app_hub
            .publish("jobs", "job.available", "q", &json!({"n": i, "pad": big}));
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let close = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = slow.next().await {
            match m {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
        None
    })
    .await
    .expect("closed within 20 s")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("slow consumer"), "{}", close.reason);
}

/// Two nodes sharing `database_url` (and Redis when given): an SSE client on one sees jobs
/// enqueued on the other.
async fn across_two_nodes(database_url: &str, redis_url: Option<&str>) {
    let prefix = format!("t{}:", mortar_core::ids::new_id());
    let config = |c: &mut Config| {
        c.database_url = Some(database_url.to_owned());
        c.redis_url = redis_url.map(str::to_owned);
        c.redis_prefix.clone_from(&prefix);
    };
    let a = serve(config).await;
    let b = serve(config).await;
    let queue = format!("q{}", mortar_core::ids::new_id());
    let mut sse = SseReader::open(&format!("{}/v1/jobs/events?queue={queue}", b.base), None).await;
    // Node a forwards once it has heard that b watches (announced when the watch starts).
    let mut got = None;
    for _ in 0..50 {
        let id = a.enqueue(&queue, "k").await;
        if let Some(ev) = sse.next(Duration::from_millis(200)).await
            && !ev.comment
        {
            got = Some((id, ev));
            break;
        }
    }
    let (_, ev) = got.expect("an event from the other node within 10 s");
    assert_eq!(ev.event, "job.available");
    // From then on every job arrives, in order.
    let ids = [a.enqueue(&queue, "k").await, a.enqueue(&queue, "k").await];
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = sse.event().await;
        let data: Value = serde_json::from_str(&ev.data).unwrap();
        let id = data["id"].as_str().unwrap().to_owned();
        if ids.contains(&id) {
            seen.push(id);
        }
    }
    assert_eq!(seen, ids);
}

#[tokio::test]
async fn across_nodes_over_postgres_notify() {
    let Some(s) = mortar_testkit::services("across_nodes_over_postgres_notify") else {
        return;
    };
    let db = s.create_database().await.unwrap();
    across_two_nodes(&db.url, None).await;
}

#[tokio::test]
async fn across_nodes_over_redis_pubsub() {
    let Some(s) = mortar_testkit::services("across_nodes_over_redis_pubsub") else {
        return;
    };
    let db = s.create_database().await.unwrap();
    across_two_nodes(&db.url, Some(&s.redis_url)).await;
}

#[tokio::test]
async fn cron_fires_stream_filtered_by_schedule() {
    let node = serve(|_| {}).await;
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let created: Value = http
            .post(format!("{}/v1/cron/schedules", node.base))
            .json(&json!({"name": name, "expr": "0 3 * * *", "job": {"queue": "q", "kind": name}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let url = format!("{}/v1/cron/events?schedule={}", node.base, ids[1]);
    let mut sse = SseReader::open(&url, None).await;
    for id in &ids {
        let res = http
            .post(format!("{}/v1/cron/schedules/{id}/trigger", node.base))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{:?}", res.text().await);
    }
    let ev = sse.event().await;
    assert_eq!(ev.event, "cron.fired");
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(data["schedule_id"], json!(ids[1]), "{data}");
    assert_eq!(data["kind"], "manual");
    assert!(data["job_id"].is_string());
}
