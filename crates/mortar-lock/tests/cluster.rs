//! Real nodes: the cluster safety test (3 nodes on PostgreSQL, 50 clients each, a resource
//! that checks fencing tokens), a release waking another node's waiter at once, a lost lease reaching the Rust client and `mortar lock run`,
//! and a crashed holder's lock passing to the next waiter after its TTL.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mortar_core::client::ClientArgs;
use mortar_lock::{AcquireOptions, LockClient};
use mortar_testkit::{Cluster, Node, NodeConfig, mortar_bin};
use tokio::sync::Mutex;

fn args(node: &Node) -> ClientArgs {
    ClientArgs {
        url: node.url(""),
        token: None,
        json: false,
    }
}

/// The protected resource: it remembers the highest token it has seen and rejects older ones.
#[derive(Default)]
struct Resource {
    max_token: u64,
    accepted: Vec<(u64, usize)>,
    rejected: u64,
}

impl Resource {
    fn write(&mut self, token: u64, client: usize) -> bool {
        if token < self.max_token {
            self.rejected += 1;
            return false;
        }
        self.max_token = token;
        self.accepted.push((token, client));
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_fifty_clients_each_never_overlap() {
    const WANTED: u64 = 20;
    let Some(cluster) = Cluster::start_with(3, &[("MORTAR_LOCK__POLL_MS", "250")])
        .await
        .unwrap()
    else {
        return;
    };
    let resource = Arc::new(Mutex::new(Resource::default()));
    let inside = Arc::new(AtomicU32::new(0));
    let max_inside = Arc::new(AtomicU32::new(0));
    let grants = Arc::new(AtomicU64::new(0));
    // Run until 20 grants, with a generous cap: the properties checked below do not depend on
    // speed, and 150 clients queueing on one name in PostgreSQL hand it over about once a
    // second on a 2-core machine (about 33 s for 40 grants measured alone, several times that
    // beside other tests): every acquire loads the whole line under the name's advisory lock.
    let deadline = Instant::now() + Duration::from_secs(100);
    let mut tasks = Vec::new();
    for n in 0..3 {
        for c in 0..50 {
            let client = LockClient::new(&args(&cluster.nodes[n]));
            let (resource, inside, max_inside, grants) = (
                resource.clone(),
                inside.clone(),
                max_inside.clone(),
                grants.clone(),
            );
            let id = n * 50 + c;
            tasks.push(tokio::spawn(async move {
                let opts = AcquireOptions {
                    ttl: Duration::from_secs(10),
                    wait: Duration::from_secs(2),
                    permits: 1,
                    owner: format!("client-{id}"),
                };
                while Instant::now() < deadline && grants.load(Ordering::SeqCst) < WANTED {
                    let Ok(guard) = client.acquire("shared-log", &opts).await else {
                        continue;
                    };
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    max_inside.fetch_max(now, Ordering::SeqCst);
                    assert!(
                        resource.lock().await.write(guard.fencing_token(), id),
                        "stale token {}",
                        guard.fencing_token()
                    );
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    grants.fetch_add(1, Ordering::SeqCst);
                    guard.release().await.unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = resource.lock().await;
    assert!(
        grants.load(Ordering::SeqCst) >= WANTED,
        "only {} grants",
        grants.load(Ordering::SeqCst)
    );
    assert_eq!(max_inside.load(Ordering::SeqCst), 1, "two holders at once");
    assert_eq!(r.rejected, 0, "no write with a stale token");
    assert!(
        r.accepted.windows(2).all(|w| w[0].0 < w[1].0),
        "tokens strictly increase in grant order"
    );
    let clients: std::collections::HashSet<usize> = r.accepted.iter().map(|a| a.1).collect();
    assert!(
        clients.len() > 3,
        "grants spread over clients of several nodes"
    );
    let last = r.max_token;
    drop(r);

    // kill -9 one node: the others keep serving, tokens keep growing.
    let mut cluster = cluster;
    cluster.node(1).kill();
    for n in [0, 2] {
        let opts = AcquireOptions {
            wait: Duration::from_secs(5),
            ..AcquireOptions::default()
        };
        let guard = LockClient::new(&args(&cluster.nodes[n]))
            .acquire("shared-log", &opts)
            .await
            .unwrap();
        assert!(guard.fencing_token() > last);
        guard.release().await.unwrap();
    }
}

/// A release on one node reaches a waiter on another at once (NOTIFY), not at its next poll:
/// here polls are 5 s apart and the hand-off must take well under one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_one_node_wakes_a_waiter_on_another_at_once() {
    let Some(cluster) = Cluster::start_with(2, &[("MORTAR_LOCK__POLL_MS", "5000")])
        .await
        .unwrap()
    else {
        return;
    };
    let holder = LockClient::new(&args(&cluster.nodes[0]))
        .acquire("handoff", &AcquireOptions::default())
        .await
        .unwrap();
    let waiter = LockClient::new(&args(&cluster.nodes[1]));
    let waiting = tokio::spawn(async move {
        let opts = AcquireOptions {
            wait: Duration::from_secs(8),
            ..AcquireOptions::default()
        };
        let guard = waiter.acquire("handoff", &opts).await.unwrap();
        (Instant::now(), guard)
    });
    // Let the waiter take its place in line and start its 5 s nap.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let released = Instant::now();
    holder.release().await.unwrap();
    let (granted, guard) = waiting.await.unwrap();
    let handoff = granted.duration_since(released);
    eprintln!("cross-node hand-off: {handoff:?}");
    assert!(
        handoff < Duration::from_secs(1),
        "hand-off took {handoff:?}"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn the_client_learns_at_once_that_its_lease_is_lost() {
    // Embedded mode keeps leases in memory: a restart loses them, which the renewals see.
    let mut node = Node::start(NodeConfig::named("lost")).await.unwrap();
    let client = LockClient::new(&args(&node));
    let opts = AcquireOptions {
        ttl: Duration::from_millis(600),
        ..AcquireOptions::default()
    };
    let guard = client.acquire("job", &opts).await.unwrap();
    let first_token = guard.fencing_token();
    node.restart().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() fired");
    assert!(guard.is_lost());
    let again = client.acquire("job", &opts).await.unwrap();
    assert!(
        again.fencing_token() > first_token,
        "tokens survive the restart"
    );
}

#[tokio::test]
async fn lock_run_passes_the_token_and_stops_the_command_when_the_lease_is_lost() {
    let mut node = Node::start(NodeConfig::named("run")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("token");
    let script = format!(
        "echo $MORTAR_FENCING_TOKEN > {}; trap 'echo stopped >> {}; exit 7' TERM; sleep 30 & wait",
        out.display(),
        out.display()
    );
    let mut run = tokio::process::Command::new(mortar_bin())
        .args([
            "lock", "run", "nightly", "--ttl", "600ms", "--grace", "2s", "--", "sh", "-c", &script,
        ])
        .env("MORTAR_URL", node.url(""))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !std::fs::read_to_string(&out).is_ok_and(|s| !s.trim().is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the command never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token: u64 = std::fs::read_to_string(&out)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(token >= 1);
    node.restart().await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), run.wait())
        .await
        .expect("stopped")
        .unwrap();
    assert_eq!(status.code(), Some(7), "the exit code is the command's");
    assert!(
        std::fs::read_to_string(&out).unwrap().contains("stopped"),
        "the command got SIGTERM"
    );
}

#[tokio::test]
async fn a_crashed_holder_releases_after_its_ttl() {
    let node = Node::start(NodeConfig::named("crash")).await.unwrap();
    let mut holder = tokio::process::Command::new(mortar_bin())
        .args([
            "lock",
            "run",
            "singleton",
            "--ttl",
            "800ms",
            "--",
            "sleep",
            "30",
        ])
        .env("MORTAR_URL", node.url(""))
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let r = http
            .get(node.url("/v1/locks/singleton"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL the holder and its command together (a crashed host): nobody releases.
    let pgid = nix::unistd::Pid::from_raw(holder.id().unwrap() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
    holder.wait().await.unwrap();
    let killed = Instant::now();
    let client = LockClient::new(&args(&node));
    let opts = AcquireOptions {
        ttl: Duration::from_secs(5),
        wait: Duration::from_secs(5),
        ..AcquireOptions::default()
    };
    let guard = client.acquire("singleton", &opts).await.unwrap();
    let waited = killed.elapsed();
    assert!(
        waited < Duration::from_millis(800 + 500),
        "granted {waited:?} after the kill (TTL 800 ms)"
    );
    drop(guard);
}

#[tokio::test]
async fn a_redis_restart_gives_clear_503s_then_larger_tokens() {
    let Some(svc) = mortar_testkit::services("lock redis restart") else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start_redis = || {
        std::process::Command::new("redis-server")
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
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server")
    };
    let wait_port = || {
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut redis = start_redis();
    wait_port();
    let db = svc.create_database().await.unwrap();
    let node = Node::start(
        NodeConfig::named("lock-redis")
            .env("MORTAR_DATABASE_URL", &db.url)
            .env("MORTAR_REDIS_URL", &format!("redis://127.0.0.1:{port}"))
            .env("MORTAR_LOCK__BACKEND", "redis"),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let acquire = |name: &'static str| {
        let http = http.clone();
        let url = node.url(&format!("/v1/locks/{name}/acquire"));
        async move {
            let r = http
                .post(url)
                .json(&serde_json::json!({"ttl_ms": 60_000}))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (s, first) = acquire("r1").await;
    assert_eq!(s, 200, "{first}");
    redis.kill().unwrap();
    redis.wait().unwrap();
    let t = Instant::now();
    let (s, p) = acquire("r2").await;
    assert_eq!(s, 503, "{p}");
    assert_eq!(p["dependency"], "redis");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        t.elapsed()
    );
    let mut redis = start_redis();
    wait_port();
    let t = Instant::now();
    let second = loop {
        let (s, v) = acquire("r1").await;
        if s == 200 {
            break v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "never recovered: {s} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        second["fencing_token"].as_u64() > first["fencing_token"].as_u64(),
        "{first} then {second}"
    );
    redis.kill().unwrap();
    redis.wait().unwrap();
}

#[tokio::test]
async fn a_postgres_restart_gives_clear_503s_then_larger_tokens() {
    let Some(pg) = mortar_testkit::PrivatePostgres::start().unwrap() else {
        return;
    };
    let node = Node::start(NodeConfig::named("lock-pg").env("MORTAR_DATABASE_URL", &pg.url()))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let acquire = |name: &'static str| {
        let http = http.clone();
        let url = node.url(&format!("/v1/locks/{name}/acquire"));
        async move {
            let r = http
                .post(url)
                .json(&serde_json::json!({"ttl_ms": 60_000}))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (s, first) = acquire("p1").await;
    assert_eq!(s, 200, "{first}");
    pg.stop().unwrap();
    let t = Instant::now();
    let (s, p) = acquire("p2").await;
    assert_eq!(s, 503, "{p}");
    assert_eq!(p["dependency"], "postgres");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        t.elapsed()
    );
    pg.restart().unwrap();
    let t = Instant::now();
    let (s, busy) = loop {
        let (s, v) = acquire("p1").await;
        if s != 503 {
            break (s, v);
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never recovered: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        s, 409,
        "the lease granted before the restart is still held (durable): {busy}"
    );
    let (s, second) = acquire("p3").await;
    assert_eq!(s, 200, "{second}");
    let (s, again) = acquire("p2").await;
    assert_eq!(s, 200, "{again}");
    let r = http
        .post(node.url("/v1/locks/p1/release"))
        .json(&serde_json::json!({"lease_id": first["lease_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (s, next) = acquire("p1").await;
    assert_eq!(s, 200);
    assert!(
        next["fencing_token"].as_u64() > first["fencing_token"].as_u64(),
        "{first} then {next}"
    );
}

/// The reproduction of issue 19: a holder via A (TTL 3 s), a waiter via A, a waiter via B;
/// A is killed (-9). B's waiter must be granted within the holder's TTL plus one node lease
/// (`lock.node_lease_ms`, 2 s here), not after A's waiter's own 45 s `wait_ms`.
async fn a_dead_nodes_waiters_leave_the_line(backend: &str) {
    let Some(mut cluster) = Cluster::start_with(
        2,
        &[
            ("MORTAR_LOCK__BACKEND", backend),
            ("MORTAR_LOCK__NODE_LEASE_MS", "2000"),
        ],
    )
    .await
    .unwrap() else {
        return;
    };
    let http = reqwest::Client::new();
    let (a, b) = (cluster.nodes[0].url(""), cluster.nodes[1].url(""));
    let acquire = |base: &str, body: serde_json::Value| {
        http.post(format!("{base}/v1/locks/dead-node/acquire"))
            .json(&body)
            .send()
    };
    let held = acquire(&a, serde_json::json!({"ttl_ms": 3000, "owner": "holder"}))
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    let held_at = Instant::now();
    let via_a = tokio::spawn(acquire(
        &a,
        serde_json::json!({"ttl_ms": 60_000, "wait_ms": 45_000, "owner": "waiter-a"}),
    ));
    // A's waiter is in line before B's.
    let line = |base: String| {
        let http = http.clone();
        async move {
            let info: serde_json::Value = http
                .get(format!("{base}/v1/locks/dead-node"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            info["waiters"].as_array().map_or(0, Vec::len)
        }
    };
    while line(b.clone()).await < 1 {
        assert!(
            held_at.elapsed() < Duration::from_secs(10),
            "A's waiter never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let via_b = tokio::spawn(acquire(
        &b,
        serde_json::json!({"ttl_ms": 60_000, "wait_ms": 90_000, "owner": "waiter-b"}),
    ));
    while line(b.clone()).await < 2 {
        assert!(
            held_at.elapsed() < Duration::from_secs(10),
            "B's waiter never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.node(0).kill();
    drop(via_a);
    let granted = via_b.await.unwrap().unwrap();
    let waited = held_at.elapsed();
    assert_eq!(granted.status(), 200, "{}", granted.text().await.unwrap());
    assert!(
        waited < Duration::from_millis(3000 + 2000 + 1500),
        "B granted {waited:?} after the hold began (TTL 3 s, node lease 2 s)"
    );
}

#[tokio::test]
async fn a_dead_nodes_waiters_leave_the_line_on_postgres() {
    a_dead_nodes_waiters_leave_the_line("auto").await;
}

#[tokio::test]
async fn a_dead_nodes_waiters_leave_the_line_on_redis() {
    a_dead_nodes_waiters_leave_the_line("redis").await;
}
