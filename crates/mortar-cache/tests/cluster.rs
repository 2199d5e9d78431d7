//! Cluster mode: 3 nodes on one (private) Redis. A write on one node reaches the others'
//! near-caches through invalidation; Redis down → near-cache hits still served, misses and
//! writes fail fast; Redis back → service resumes without restarting mortar.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mortar_testkit::{Node, NodeConfig};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis(port: u16, dir: &std::path::Path) -> Child {
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
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

async fn client(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get(c: &mut redis::aio::MultiplexedConnection, k: &str) -> Result<Option<String>, String> {
    redis::cmd("GET")
        .arg(k)
        .query_async(c)
        .await
        .map_err(|e| e.to_string())
}

/// A counter from the node's INFO stats.
async fn stat(c: &mut redis::aio::MultiplexedConnection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO stats has {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::many_single_char_names)] // a, b, c: the three nodes' connections
async fn writes_reach_every_near_cache_and_redis_trouble_is_handled() {
    let Some(svc) = mortar_testkit::services("cache cluster") else {
        return;
    };
    let redis_dir = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let mut redis = start_redis(redis_port, redis_dir.path());
    let db = svc.create_database().await.unwrap();
    let prefix = format!("mortar-test:{}:", mortar_core::ids::new_id());
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let node = Node::start(
            NodeConfig::named(&format!("cache{i}"))
                .env("MORTAR_DATABASE_URL", &db.url)
                .env(
                    "MORTAR_REDIS_URL",
                    &format!("redis://127.0.0.1:{redis_port}"),
                )
                .env("MORTAR_REDIS_PREFIX", &prefix)
                .env("MORTAR_CACHE__RESP_LISTEN", &format!("127.0.0.1:{port}"))
                .env("MORTAR_CACHE__L1_TTL_MS", "5000"),
        )
        .await
        .unwrap();
        nodes.push(node);
        ports.push(port);
    }
    let mut a = client(ports[0]).await;
    let mut b = client(ports[1]).await;
    let mut c = client(ports[2]).await;

    // Visible everywhere; keys live under the deployment's prefix in Redis.
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v0")
        .query_async(&mut a)
        .await
        .unwrap();
    assert_eq!(get(&mut b, "k").await.unwrap().as_deref(), Some("v0"));
    assert_eq!(get(&mut c, "k").await.unwrap().as_deref(), Some("v0"));
    let mut raw = client(redis_port).await;
    let stored: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}cache:k"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some("v0"));

    // Overwrite on A while B and C hold v0 in their near-caches: they see the new value long
    // before the 5 s L1 cap. Staleness is measured from A's acknowledgement.
    let mut staleness = Vec::new();
    for i in 1..=30 {
        let value = format!("v{i}");
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg(&value)
            .query_async(&mut a)
            .await
            .unwrap();
        let acked = Instant::now();
        for conn in [&mut b, &mut c] {
            loop {
                if get(conn, "k").await.unwrap().as_deref() == Some(value.as_str()) {
                    break;
                }
                assert!(
                    acked.elapsed() < Duration::from_secs(5),
                    "a node served a stale value past the L1 cap"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        staleness.push(acked.elapsed());
        // Refill the near-caches for the next round.
        get(&mut b, "k").await.unwrap();
        get(&mut c, "k").await.unwrap();
    }
    staleness.sort();
    eprintln!(
        "cache invalidation: p50 {:?}, p99 {:?} (30 writes, 2 readers)",
        staleness[15], staleness[29]
    );

    let _: () = redis::cmd("DEL")
        .arg("k")
        .query_async(&mut a)
        .await
        .unwrap();
    let t = Instant::now();
    while get(&mut b, "k").await.unwrap().is_some() {
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Redis goes away: B still answers from its near-cache; a miss and a write fail fast.
    let received = stat(&mut b, "mortar_invalidations_received").await;
    let _: () = redis::cmd("SET")
        .arg("warm")
        .arg("w")
        .query_async(&mut a)
        .await
        .unwrap();
    // A's invalidation of `warm` reaches B's near-cache first: applied after B's fill, it
    // would drop the entry (a needless miss, and here a failed read once Redis is gone).
    let t = Instant::now();
    while stat(&mut b, "mortar_invalidations_received").await <= received {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "B never heard of `warm`"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // B's near-cache holds it once a GET counts as a hit there.
    let t = Instant::now();
    loop {
        assert_eq!(get(&mut b, "warm").await.unwrap().as_deref(), Some("w"));
        let before = stat(&mut b, "keyspace_hits").await;
        assert_eq!(get(&mut b, "warm").await.unwrap().as_deref(), Some("w"));
        if stat(&mut b, "keyspace_hits").await > before {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "B never cached `warm`"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    redis.kill().unwrap();
    redis.wait().unwrap();
    assert_eq!(
        get(&mut b, "warm").await.unwrap().as_deref(),
        Some("w"),
        "near-cache hit without Redis"
    );
    let t = Instant::now();
    let miss = get(&mut b, "cold").await;
    assert!(miss.unwrap_err().contains("unavailable"));
    let write: Result<(), _> = redis::cmd("SET")
        .arg("x")
        .arg("1")
        .query_async(&mut a)
        .await;
    assert!(write.unwrap_err().to_string().contains("unavailable"));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "failed in {:?}, not fast",
        t.elapsed()
    );
    let http = reqwest::get(nodes[1].url("/v1/cache/ns/cold"))
        .await
        .unwrap();
    assert_eq!(http.status(), 503);

    // Redis back (empty): service resumes by itself.
    let mut redis = start_redis(redis_port, redis_dir.path());
    let t = Instant::now();
    loop {
        let r: Result<(), _> = redis::cmd("SET")
            .arg("after")
            .arg("ok")
            .query_async(&mut a)
            .await;
        if r.is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    loop {
        if get(&mut c, "after").await.ok().flatten().as_deref() == Some("ok") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "node C never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.kill().unwrap();
    redis.wait().unwrap();
    drop(nodes);
}
