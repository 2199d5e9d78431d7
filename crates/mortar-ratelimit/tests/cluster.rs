//! Cluster: real `mortar` nodes sharing Redis. Exactness across nodes under concurrency, and
//! behaviour while Redis is down.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mortar_testkit::{Cluster, Node, NodeConfig};
use serde_json::{Value, json};
use tokio::sync::Mutex;

const WINDOW_MS: u64 = 1000;
const LIMIT: u64 = 50;

async fn put_policy(http: &reqwest::Client, node: &Node, name: &str, spec: Value) {
    let r = http
        .put(node.url(&format!("/v1/ratelimit/policies/{name}")))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

/// One allowed check as seen by a client: when it was sent and answered (ms since the epoch,
/// this machine's clock, which Redis shares), and the `reset_ms` it reported. The decision
/// happened in Redis somewhere in `[sent_ms, recv_ms]`.
#[derive(Debug, Clone, Copy)]
#[allow(clippy::struct_field_names)]
struct Allowed {
    sent_ms: u64,
    recv_ms: u64,
    reset_ms: u64,
}

/// Clock slack between this process and Redis (same machine).
const SLACK_MS: u64 = 5;

impl Allowed {
    /// The aligned window this admission belongs to: the one whose end lies in
    /// `[sent + reset, recv + reset]` (unique while latency < window).
    fn window(&self) -> u64 {
        let lo = (self.sent_ms + self.reset_ms).saturating_sub(SLACK_MS);
        let k = lo.div_ceil(WINDOW_MS);
        assert!(
            k * WINDOW_MS <= self.recv_ms + self.reset_ms + SLACK_MS,
            "ambiguous window: {self:?}"
        );
        k
    }
}

fn now_ms() -> u64 {
    mortar_core::clock::unix_time().as_millis() as u64
}

/// 200 clients spread over every node hammer one key for `run`; returns the allowed checks.
async fn hammer(cluster: &Cluster, policy: &str, key: &str, run: Duration) -> (Vec<Allowed>, u64) {
    let allowed = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = cluster.nodes[i % cluster.nodes.len()].url("/v1/ratelimit/check");
        let body = json!({"policies": [policy], "key": key});
        let (allowed, errors) = (allowed.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while Instant::now() < deadline {
                let sent_ms = now_ms();
                let Ok(r) = http.post(&url).json(&body).send().await else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let status = r.status().as_u16();
                let recv_ms = now_ms();
                let v: Value = r.json().await.unwrap_or_default();
                match status {
                    // A degraded answer (Redis past its deadline) is not what we measure here.
                    200 if v.get("degraded").is_some() => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    200 => {
                        let reset_ms = v["reset_ms"].as_u64().unwrap();
                        allowed.lock().await.push(Allowed {
                            sent_ms,
                            recv_ms,
                            reset_ms,
                        });
                    }
                    429 => {}
                    _ => {
                        errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let out = allowed.lock().await.clone();
    (out, errors.load(std::sync::atomic::Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_admit_exactly_the_limit() {
    // 600 in-flight requests on a 2-core machine can push a Redis round trip past the 50 ms
    // default deadline (then failure modes decide, by design); exactness is about Redis's answers.
    let Some(cluster) = Cluster::start_with(3, &[("MORTAR_RATELIMIT__REDIS_TIMEOUT_MS", "10000")])
        .await
        .unwrap()
    else {
        return;
    };
    let http = reqwest::Client::new();
    put_policy(
        &http,
        &cluster.nodes[0],
        "fw",
        json!({"algorithm": "fixed_window", "limit": LIMIT, "window_ms": WINDOW_MS}),
    )
    .await;
    put_policy(
        &http,
        &cluster.nodes[0],
        "log",
        json!({"algorithm": "sliding_log", "limit": LIMIT, "window_ms": WINDOW_MS}),
    )
    .await;
    put_policy(
        &http,
        &cluster.nodes[0],
        "tb",
        json!({"algorithm": "token_bucket", "limit": LIMIT, "window_ms": WINDOW_MS}),
    )
    .await;
    // Every node knows the policies (they refresh every second; a check proves it).
    for node in &cluster.nodes {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = http
                .get(node.url("/v1/ratelimit/policies/tb"))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "policy never reached {}",
                node.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let run = Duration::from_millis(3 * WINDOW_MS + WINDOW_MS / 2);

    // Fixed window: exactly LIMIT in every window the run fully covers, never more in any.
    let (allowed, errors) = hammer(&cluster, "fw", "hot-fw", run).await;
    assert_eq!(errors, 0, "transport errors or unexpected statuses");
    let mut per_window = std::collections::BTreeMap::<u64, u64>::new();
    for a in &allowed {
        *per_window.entry(a.window()).or_default() += 1;
    }
    let counts: Vec<u64> = per_window.values().copied().collect();
    assert!(
        counts.iter().all(|&n| n <= LIMIT),
        "a window admitted more than {LIMIT}: {counts:?}"
    );
    assert!(counts.len() >= 3, "{counts:?}");
    for &n in &counts[1..counts.len() - 1] {
        assert_eq!(
            n, LIMIT,
            "a full window admitted {n}, not {LIMIT}: {counts:?}"
        );
    }

    // Sliding log: LIMIT at the start, then LIMIT again each time a window has passed, so 3.5
    // windows admit 4 × limit at most, and at least 3 × limit however late the clients were
    // (a loaded machine can stall them for a while; then a batch slides past the run's end).
    let (allowed, errors) = hammer(&cluster, "log", "hot-log", run).await;
    assert_eq!(errors, 0);
    let got = allowed.len() as u64;
    assert!(
        (3 * LIMIT..=4 * LIMIT).contains(&got),
        "3.5 windows admitted {got}, expected {}..={}",
        3 * LIMIT,
        4 * LIMIT
    );
    // Never more than LIMIT decisions inside any window: count the admissions that surely
    // happened in (t - window, t] for t = each admission's reply.
    // A decision lies in [sent - slack, recv + slack]; t bounds every b answered by a's reply.
    for a in &allowed {
        let t = a.recv_ms + SLACK_MS;
        let inside = allowed
            .iter()
            .filter(|b| b.sent_ms + WINDOW_MS > t + SLACK_MS && b.recv_ms <= a.recv_ms)
            .count() as u64;
        assert!(
            inside <= LIMIT,
            "{inside} admissions within one window ending at {t}"
        );
    }

    // Token bucket: the full bucket, then one unit per emission interval. The first and last
    // admissions happened in Redis within their [sent, recv] intervals, which bounds the count.
    let (allowed, errors) = hammer(&cluster, "tb", "hot-tb", run).await;
    assert_eq!(errors, 0);
    let first = allowed.iter().min_by_key(|a| a.recv_ms).unwrap();
    let last = allowed.iter().max_by_key(|a| a.sent_ms).unwrap();
    let interval_ms = WINDOW_MS / LIMIT;
    let min_span = last.sent_ms.saturating_sub(first.recv_ms);
    // The latest admission happened by the latest reply of any admitted request (not
    // necessarily the one sent last), the earliest after the earliest send.
    let max_span = allowed.iter().map(|a| a.recv_ms).max().unwrap()
        - allowed.iter().map(|a| a.sent_ms).min().unwrap();
    let (lo, hi) = (
        LIMIT + min_span / interval_ms,
        LIMIT + max_span.div_ceil(interval_ms) + 1,
    );
    let got = allowed.len() as u64;
    assert!(
        (lo..=hi).contains(&got),
        "token bucket admitted {got}, expected {lo}..={hi}"
    );
}

struct PrivateRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start(port: u16, dir: tempfile::TempDir) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }

    fn stop(mut self) -> (u16, tempfile::TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        let dir = tempfile::tempdir().unwrap();
        (port, std::mem::replace(&mut self.dir, dir))
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_applies_failure_modes_and_recovers_by_itself() {
    let Some(svc) = mortar_testkit::services("redis_down_applies_failure_modes") else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = PrivateRedis::start(port, tempfile::tempdir().unwrap());
    let db = svc.create_database().await.unwrap();
    let node = Node::start(
        NodeConfig::named("rl-redis-down")
            .env("MORTAR_DATABASE_URL", &db.url)
            .env("MORTAR_REDIS_URL", &format!("redis://127.0.0.1:{port}")),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    put_policy(
        &http,
        &node,
        "open",
        json!({"algorithm": "token_bucket", "limit": 1000, "window_ms": 1000}),
    )
    .await;
    put_policy(&http, &node, "closed", json!({"algorithm": "token_bucket", "limit": 1000, "window_ms": 1000, "failure_mode": "fail_closed"})).await;
    let check = |policy: &'static str| {
        let http = http.clone();
        let url = node.url("/v1/ratelimit/check");
        async move {
            let start = Instant::now();
            let r = http
                .post(url)
                .json(&json!({"policies": [policy], "key": "k"}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v, start.elapsed())
        }
    };
    let (status, v, _) = check("open").await;
    assert_eq!(status, 200);
    assert!(v.get("degraded").is_none());

    let (port, dir) = redis.stop();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let (status, v, took) = check("open").await;
        assert_eq!(status, 200, "fail_open must allow: {v}");
        assert_eq!(v["degraded"], true);
        let (status, v, took2) = check("closed").await;
        assert_eq!(status, 429, "fail_closed must deny: {v}");
        assert_eq!(v["degraded"], true);
        slowest = slowest.max(took).max(took2);
    }
    // The Redis deadline is 50 ms; allow for a loaded 2-core machine, never seconds.
    assert!(
        slowest < Duration::from_secs(1),
        "a check waited {slowest:?} while Redis was down"
    );
    let metrics = http
        .get(node.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mortar_ratelimit_backend_failures_total"),
        "{metrics}"
    );
    node.wait_for_log("backend unavailable", Duration::from_secs(5))
        .await
        .unwrap();

    let _redis = PrivateRedis::start(port, dir);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, v, _) = check("closed").await;
        if status == 200 && v.get("degraded").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {status} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.wait_for_log("backend recovered", Duration::from_secs(5))
        .await
        .unwrap();
}
