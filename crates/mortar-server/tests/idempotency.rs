//! `Idempotency-Key` (mortar_core::idempotency) on a test route, over SQLite and PostgreSQL:
//! replay, 422 on another body, 409 while the first is in flight, expiry, errors a retry
//! redoes, per-caller scope, and two nodes sharing one database. Then the jobs routes, which
//! replay through their own handler (`duplicate: true`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use mortar_core::clock::{Clock, ManualClock};
use mortar_core::idempotency::{Idempotency, Replay, Route};
use mortar_core::storage::Storage;
use mortar_testkit::fixture::{embedded, storage_at};
use mortar_testkit::{Node, NodeConfig};
use serde_json::{Value, json};
use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;

const ROUTES: &[Route] = &[Route {
    method: "POST",
    path: "/v1/things",
    replay: Replay::Stored,
}];

/// The handler's side: how often it ran, and a gate a test can hold it at.
#[derive(Default)]
struct Things {
    created: AtomicU64,
    hold: Notify,
    holding: std::sync::atomic::AtomicBool,
    /// Requests waiting at `hold`.
    held: AtomicU64,
}

async fn create(State(t): State<Arc<Things>>, body: String) -> (StatusCode, String) {
    if t.holding.load(Ordering::SeqCst) {
        t.held.fetch_add(1, Ordering::SeqCst);
        t.hold.notified().await;
    }
    if body.contains("boom") {
        return (StatusCode::SERVICE_UNAVAILABLE, "{}".into());
    }
    let n = t.created.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        json!({"id": n, "body": body}).to_string(),
    )
}

struct Fixture {
    router: axum::Router,
    things: Arc<Things>,
    clock: ManualClock,
}

fn fixture(storage: &Storage, clock: ManualClock) -> Fixture {
    let things = Arc::new(Things::default());
    let idem = Idempotency::new(
        storage.durable.clone(),
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        60_000,
    );
    let routes = OpenApiRouter::new()
        .route("/v1/things", axum::routing::post(create))
        .with_state(things.clone());
    let (router, _) = idem.on(routes, ROUTES).split_for_parts();
    Fixture {
        router,
        things,
        clock,
    }
}

async fn send(router: &axum::Router, key: Option<&str>, body: &str) -> (u16, Value, bool) {
    let mut req = Request::post("/v1/things").header("content-type", "text/plain");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let r =
        mortar_testkit::fixture::send(router, req.body(Body::from(body.to_owned())).unwrap()).await;
    let replayed = r.headers.contains_key("idempotent-replayed");
    (r.status.as_u16(), r.body, replayed)
}

async fn the_contract(storage: &Storage) {
    let f = fixture(storage, ManualClock::at(1_000_000));
    let key = format!("k-{}", mortar_core::ids::new_id());
    let (s, first, replayed) = send(&f.router, Some(&key), "a").await;
    assert_eq!((s, replayed), (201, false), "{first}");
    let (s, again, replayed) = send(&f.router, Some(&key), "a").await;
    assert_eq!((s, replayed), (201, true), "the stored response: {again}");
    assert_eq!(again, first);
    assert_eq!(f.things.created.load(Ordering::SeqCst), 1, "ran once");

    let (s, p, _) = send(&f.router, Some(&key), "b").await;
    assert_eq!(s, 422, "another body: {p}");
    assert_eq!(
        p["type"]
            .as_str()
            .map(|t| t.ends_with("idempotency-key-reused")),
        Some(true)
    );

    // No key: no idempotency. A bad key: 400.
    assert_eq!(send(&f.router, None, "a").await.0, 201);
    assert_eq!(send(&f.router, Some(""), "a").await.0, 400);
    assert_eq!(send(&f.router, Some(&"x".repeat(256)), "a").await.0, 400);

    // A response a retry should redo frees the key.
    let boom = format!("b-{}", mortar_core::ids::new_id());
    assert_eq!(send(&f.router, Some(&boom), "boom").await.0, 503);
    let mut freed = false;
    for _ in 0..100 {
        let (s, _, replayed) = send(&f.router, Some(&boom), "boom").await;
        if s == 503 && !replayed {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(freed, "a 503 is not stored");

    // In flight: the duplicate gets 409 while the first waits.
    let slow = format!("s-{}", mortar_core::ids::new_id());
    f.things.holding.store(true, Ordering::SeqCst);
    let first = tokio::spawn({
        let (router, slow) = (f.router.clone(), slow.clone());
        async move { send(&router, Some(&slow), "c").await }
    });
    // Once the first is inside the handler (its claim made), a duplicate is refused.
    for _ in 0..1000 {
        if f.things.held.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(f.things.held.load(Ordering::SeqCst), 1, "the first is held");
    let (s, p, _) = send(&f.router, Some(&slow), "c").await;
    assert_eq!(s, 409, "a duplicate in flight: {p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("still being processed"),
        "{p}"
    );
    f.things.holding.store(false, Ordering::SeqCst);
    f.things.hold.notify_one();
    assert_eq!(first.await.unwrap().0, 201);

    // Expiry: after the TTL the key starts over.
    f.clock.advance(60_001);
    let (s, fresh, replayed) = send(&f.router, Some(&key), "b").await;
    assert_eq!((s, replayed), (201, false), "expired key reused: {fresh}");
}

#[tokio::test]
async fn the_contract_on_sqlite() {
    let storage = embedded(&[]).await;
    the_contract(&storage).await;
}

#[tokio::test]
async fn the_contract_on_postgres_and_across_two_nodes() {
    let Some(svc) = mortar_testkit::services("idempotency postgres") else {
        return;
    };
    let db = svc.create_database().await.unwrap();
    // The data directory is SQLite's; PostgreSQL never touches it.
    let unused = std::path::Path::new("unused");
    let a = storage_at(unused, Some(db.url.clone()), &[]).await;
    the_contract(&a).await;
    // Two nodes on one database: a key used on one answers on the other.
    let b = storage_at(unused, Some(db.url.clone()), &[]).await;
    let clock = ManualClock::at(5_000_000);
    let (fa, fb) = (fixture(&a, clock.clone()), fixture(&b, clock));
    let key = format!("n-{}", mortar_core::ids::new_id());
    let (s, first, _) = send(&fa.router, Some(&key), "x").await;
    assert_eq!(s, 201);
    let (s, again, replayed) = send(&fb.router, Some(&key), "x").await;
    assert_eq!((s, replayed, &again), (201, true, &first));
    assert_eq!(
        fb.things.created.load(Ordering::SeqCst),
        0,
        "node B did not run it"
    );
    assert_eq!(send(&fb.router, Some(&key), "y").await.0, 422);
}

#[tokio::test]
async fn jobs_replay_through_their_handler_and_refuse_another_body() {
    let node = Node::start(NodeConfig::named("jobs-idem")).await.unwrap();
    let http = reqwest::Client::new();
    let enqueue = |key: &str, body: Value| {
        http.post(node.url("/v1/jobs"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let job = json!({"queue": "pay", "kind": "charge", "payload": {"cents": 100}});
    let r = enqueue("order-9", job.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    let first: Value = r.json().await.unwrap();
    let r = enqueue("order-9", job).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    let again: Value = r.json().await.unwrap();
    assert_eq!(
        (&again["id"], &again["duplicate"]),
        (&first["id"], &json!(true))
    );
    let r = enqueue("order-9", json!({"queue": "pay", "kind": "refund"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "{}", r.text().await.unwrap());
}
