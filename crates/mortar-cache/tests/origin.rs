//! Origins: read-through with singleflight, Cache-Control TTLs, 404 as a miss, a failing origin
//! tripping its breaker, write-through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use mortar_cache::commands::Session;
use mortar_cache::origin::{NamespaceConfig, WriteMode};
use mortar_cache::resp::Reply;
use mortar_cache::{CacheConfig, CacheService};
use mortar_resilience::{Breaker, BreakerConfig};

#[derive(Default)]
struct Seen {
    gets: AtomicU32,
    puts: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
}

async fn origin(seen: Arc<Seen>) -> String {
    let s1 = seen.clone();
    let s2 = seen.clone();
    let app = Router::new().route(
        "/{key}",
        get(
            move |axum::extract::Path(key): axum::extract::Path<String>| {
                let seen = s1.clone();
                async move {
                    seen.gets.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    match key.as_str() {
                        "missing" => (
                            http::StatusCode::NOT_FOUND,
                            [("cache-control", "max-age=60")],
                            String::new(),
                        ),
                        "broken" => (
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                            [("cache-control", "max-age=60")],
                            String::new(),
                        ),
                        "short" => (
                            http::StatusCode::OK,
                            [("cache-control", "public, max-age=1")],
                            "brief".to_owned(),
                        ),
                        k => (
                            http::StatusCode::OK,
                            [("cache-control", "max-age=60")],
                            format!("value-of-{k}"),
                        ),
                    }
                }
            },
        )
        .put(
            move |axum::extract::Path(key): axum::extract::Path<String>, body: Bytes| {
                let seen = s2.clone();
                async move {
                    if key == "readonly" {
                        return http::StatusCode::FORBIDDEN;
                    }
                    seen.puts.lock().unwrap().push((key, body.to_vec()));
                    http::StatusCode::NO_CONTENT
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}

fn service(url: &str) -> (Arc<CacheService>, Arc<Breaker>) {
    service_with(url, WriteMode::Through)
}

fn service_with(url: &str, write: WriteMode) -> (Arc<CacheService>, Arc<Breaker>) {
    let mut cfg = CacheConfig::default();
    cfg.namespaces.insert(
        "users".into(),
        NamespaceConfig {
            origin_url: url.to_owned(),
            ttl_ms: 30_000,
            write,
            timeout_ms: 2000,
            flush_ms: 60_000,
        },
    );
    let svc = CacheService::new(&cfg, None);
    let breaker = Breaker::new(
        "origin",
        BreakerConfig {
            minimum_calls: 3,
            wait_open_ms: 60_000,
            ..BreakerConfig::default()
        },
    );
    let b = breaker.clone();
    svc.attach_origins(move |_| b.clone());
    (svc, breaker)
}

async fn run(svc: &CacheService, args: &[&str]) -> Reply {
    let args: Vec<Bytes> = args
        .iter()
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect();
    svc.run(
        &mut Session {
            proto: 2,
            ..Session::default()
        },
        &args,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_load_once_and_then_hit() {
    let seen = Arc::new(Seen::default());
    let (svc, _) = service(&origin(seen.clone()).await);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { run(&svc, &["GET", "users:42"]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Reply::Bulk(Bytes::from("value-of-42")));
    }
    assert_eq!(
        seen.gets.load(Ordering::SeqCst),
        1,
        "singleflight: one origin request for 50 misses"
    );
    assert_eq!(
        run(&svc, &["GET", "users:42"]).await,
        Reply::Bulk(Bytes::from("value-of-42"))
    );
    assert_eq!(seen.gets.load(Ordering::SeqCst), 1, "then a cache hit");
    let Reply::Int(ttl) = run(&svc, &["PTTL", "users:42"]).await else {
        panic!()
    };
    assert!(
        ttl > 50_000 && ttl <= 60_000,
        "max-age=60 sets the TTL: {ttl}"
    );
    run(&svc, &["GET", "users:short"]).await;
    let Reply::Int(ttl) = run(&svc, &["PTTL", "users:short"]).await else {
        panic!()
    };
    assert!(ttl <= 1000, "{ttl}");
    // Other namespaces have no origin.
    assert_eq!(run(&svc, &["GET", "plain:42"]).await, Reply::Null);
}

#[tokio::test]
async fn not_found_is_a_miss_and_failures_trip_the_breaker() {
    let seen = Arc::new(Seen::default());
    let (svc, breaker) = service(&origin(seen.clone()).await);
    assert_eq!(run(&svc, &["GET", "users:missing"]).await, Reply::Null);
    assert_eq!(run(&svc, &["GET", "users:missing"]).await, Reply::Null);
    assert_eq!(seen.gets.load(Ordering::SeqCst), 2, "a 404 is not cached");
    // Failing loads are errors (never a hang), and soon open the breaker.
    let mut failures = 0;
    while breaker.state() != mortar_resilience::State::Open {
        let Reply::Error(e) = run(&svc, &["GET", "users:broken"]).await else {
            panic!()
        };
        assert!(e.contains("500"), "{e}");
        failures += 1;
        assert!(failures <= 10, "the breaker never opened");
    }
    assert_eq!(breaker.state(), mortar_resilience::State::Open);
    let before = seen.gets.load(Ordering::SeqCst);
    let t = std::time::Instant::now();
    let Reply::Error(e) = run(&svc, &["GET", "users:anything"]).await else {
        panic!()
    };
    assert!(e.contains("open"), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "an open breaker answers at once"
    );
    assert_eq!(
        seen.gets.load(Ordering::SeqCst),
        before,
        "the origin is spared"
    );
}

#[tokio::test]
async fn writes_go_through_to_the_origin_first() {
    let seen = Arc::new(Seen::default());
    let (svc, _) = service(&origin(seen.clone()).await);
    assert_eq!(run(&svc, &["SET", "users:7", "ann"]).await, Reply::ok());
    assert_eq!(
        seen.puts.lock().unwrap().as_slice(),
        &[("7".to_owned(), b"ann".to_vec())]
    );
    assert_eq!(
        run(&svc, &["GET", "users:7"]).await,
        Reply::Bulk(Bytes::from("ann"))
    );
    let Reply::Error(e) = run(&svc, &["SET", "users:readonly", "x"]).await else {
        panic!()
    };
    assert!(e.contains("origin write failed"), "{e}");
    assert_eq!(seen.gets.load(Ordering::SeqCst), 0);
    assert_eq!(
        svc.store.peek(b"users:readonly"),
        None,
        "a refused write is not cached"
    );
}

#[tokio::test]
async fn write_behind_answers_at_once_coalesces_and_retries() {
    let seen = Arc::new(Seen::default());
    let (svc, _) = service_with(&origin(seen.clone()).await, WriteMode::Behind);
    for i in 0..5 {
        assert_eq!(
            run(&svc, &["SET", "users:9", &format!("v{i}")]).await,
            Reply::ok()
        );
    }
    run(&svc, &["SET", "users:readonly", "x"]).await;
    assert!(
        seen.puts.lock().unwrap().is_empty(),
        "nothing sent before the flush"
    );
    assert_eq!(
        run(&svc, &["GET", "users:9"]).await,
        Reply::Bulk(Bytes::from("v4")),
        "the cache has it already"
    );
    svc.flush_origins().await;
    assert_eq!(
        seen.puts.lock().unwrap().as_slice(),
        &[("9".to_owned(), b"v4".to_vec())],
        "five writes, one PUT of the last"
    );
    // The refused write stays queued for the next flush.
    svc.flush_origins().await;
    assert_eq!(seen.puts.lock().unwrap().len(), 1);
}
