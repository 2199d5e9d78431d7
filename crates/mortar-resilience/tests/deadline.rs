//! A deadline flows end to end through two mortar HTTP hops: client → A → B. Each hop serves
//! with mortar's own stack (the observe middleware honours `Mortar-Deadline`), and A passes
//! what is left to B with `mortar_core::deadline::inject`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use mortar_core::auth::{Auth, KeyStore};
use mortar_core::config::HttpConfig;
use mortar_core::http::{Listeners, finish, serve};
use mortar_testkit::fixture;
use serde_json::{Value, json};

async fn start(app: Router, dir: &std::path::Path) -> SocketAddr {
    let storage = fixture::storage_at(dir, None, &[]).await;
    let keys = KeyStore::new(
        storage.durable.clone(),
        Arc::new(mortar_core::clock::SystemClock),
    );
    let router = finish(app, 1 << 20, Arc::new(Auth::new(None, keys)));
    let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = listeners.local_addr();
    tokio::spawn(async move {
        let cfg = HttpConfig::default();
        serve(listeners, router, &cfg, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_crosses_two_hops_and_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    // B reports the deadline it sees; /slow outlives any short deadline.
    let b = Router::new()
        .route("/seen", get(|| async { axum::Json(json!({ "remaining_ms": mortar_core::deadline::remaining().map(|d| d.as_millis() as u64) })) }))
        .route("/slow", get(|| async { tokio::time::sleep(Duration::from_secs(10)).await; "late" }));
    let b_addr = start(b, &dir.path().join("b")).await;
    // A calls B, passing on what is left of its own deadline.
    let hop = move |path: &'static str| async move {
        let mut headers = http::HeaderMap::new();
        mortar_core::deadline::inject(&mut headers);
        let r = reqwest::Client::new()
            .get(format!("http://{b_addr}{path}"))
            .headers(headers)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        axum::Json(json!({ "b_status": status, "b": body }))
    };
    let a = Router::new()
        .route("/hop", get(move || hop("/seen")))
        .route("/hop-slow", get(move || hop("/slow")));
    let a_addr = start(a, &dir.path().join("a")).await;
    let client = reqwest::Client::new();

    let r = client
        .get(format!("http://{a_addr}/hop"))
        .header("mortar-deadline", "2000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let seen = v["b"]["remaining_ms"].as_u64().expect("B saw a deadline");
    assert!(
        seen > 0 && seen <= 2000,
        "B saw {seen} ms of the client's 2000"
    );

    let r = client
        .get(format!("http://{a_addr}/hop"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert!(
        v["b"]["remaining_ms"].is_null(),
        "no deadline, none invented"
    );

    // B gives up when the inherited deadline passes (504), well before its 10 s sleep; A,
    // bound by the same deadline, answers 504 too.
    let started = std::time::Instant::now();
    let r = client
        .get(format!("http://{a_addr}/hop-slow"))
        .header("mortar-deadline", "300")
        .send()
        .await
        .unwrap();
    // B's deadline (what A had left) passes first, so usually A relays B's 504 in time;
    // if A's own deadline wins the race, A answers 504 itself. Either way nobody waited 10 s.
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    let problem = if status == 504 { &v } else { &v["b"] };
    assert!(status == 504 || v["b_status"] == 504, "{status} {v}");
    assert_eq!(
        problem["type"],
        "https://mortar.dev/problems/deadline-exceeded"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    let r = client
        .get(format!("http://{a_addr}/hop"))
        .header("mortar-deadline", "soon")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
