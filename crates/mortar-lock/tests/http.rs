//! The lock API through the router: grants, 409 with holders, FIFO long-poll waiting,
//! hand-off on release and on expiry, 410 for lost leases, bad input.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::app;
use serde_json::json;

#[tokio::test]
#[allow(clippy::many_single_char_names)]
async fn acquire_conflict_renew_release() {
    let app = app().await;
    let (s, a) = app
        .acquire("db-migrate", json!({"ttl_ms": 10_000, "owner": "worker-7"}))
        .await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["owner"], "worker-7");
    assert!(a["expires_at"].as_str().unwrap().ends_with('Z'));
    let token = a["fencing_token"].as_u64().unwrap();

    let (s, p) = app
        .acquire("db-migrate", json!({"ttl_ms": 10_000, "owner": "worker-8"}))
        .await;
    assert_eq!(s, 409);
    assert_eq!(p["holders"][0]["owner"], "worker-7");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("held by `worker-7` until")
    );

    let lease = a["lease_id"].as_str().unwrap();
    let (s, r) = app
        .call(
            "POST",
            "/v1/locks/db-migrate/renew",
            Some(json!({"lease_id": lease, "ttl_ms": 20_000})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(r["fencing_token"], token, "renewing keeps the token");
    let (s, _) = app
        .call(
            "POST",
            "/v1/locks/db-migrate/release",
            Some(json!({"lease_id": lease})),
        )
        .await;
    assert_eq!(s, 204);
    let (s, p) = app
        .call(
            "POST",
            "/v1/locks/db-migrate/release",
            Some(json!({"lease_id": lease})),
        )
        .await;
    assert_eq!(s, 410, "{p}");
    let (s, _) = app
        .call(
            "POST",
            "/v1/locks/db-migrate/renew",
            Some(json!({"lease_id": lease, "ttl_ms": 1000})),
        )
        .await;
    assert_eq!(s, 410);
    let (_, b) = app.acquire("db-migrate", json!({"ttl_ms": 10_000})).await;
    assert!(b["fencing_token"].as_u64().unwrap() > token);
    assert_eq!(b["owner"], "anonymous");
}

#[tokio::test]
async fn an_expired_lease_is_gone_and_frees_the_lock() {
    let app = app().await;
    let (_, a) = app.acquire("short", json!({"ttl_ms": 30})).await;
    let started = Instant::now();
    let (s, b) = app
        .acquire("short", json!({"ttl_ms": 10_000, "wait_ms": 5000}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "granted right after the TTL: {:?}",
        started.elapsed()
    );
    let (s, _) = app
        .call(
            "POST",
            "/v1/locks/short/renew",
            Some(json!({"lease_id": a["lease_id"], "ttl_ms": 1000})),
        )
        .await;
    assert_eq!(s, 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_granted_in_arrival_order_on_release() {
    let app = Arc::new(app().await);
    let (_, first) = app
        .acquire("fifo", json!({"ttl_ms": 60_000, "owner": "holder"}))
        .await;
    let mut waiters = Vec::new();
    for i in 0..5 {
        let waiter_app = app.clone();
        waiters.push(tokio::spawn(async move {
            let app = waiter_app;
            let (s, v) = app
                .acquire(
                    "fifo",
                    json!({"ttl_ms": 60_000, "owner": format!("w{i}"), "wait_ms": 20_000}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            let lease = v["lease_id"].as_str().unwrap().to_owned();
            app.call(
                "POST",
                "/v1/locks/fifo/release",
                Some(json!({"lease_id": lease})),
            )
            .await;
            (i, v["fencing_token"].as_u64().unwrap())
        }));
        // Make arrival order unambiguous: wait until this waiter is in line.
        loop {
            let (_, info) = app.call("GET", "/v1/locks/fifo", None).await;
            if info["waiters"].as_array().map_or(0, Vec::len) == i + 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    app.call(
        "POST",
        "/v1/locks/fifo/release",
        Some(json!({"lease_id": first["lease_id"]})),
    )
    .await;
    let mut got = Vec::new();
    for w in waiters {
        got.push(w.await.unwrap());
    }
    got.sort_by_key(|(_, token)| *token);
    let order: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, [0, 1, 2, 3, 4], "served first come, first served");
}

#[tokio::test]
async fn waiting_times_out_with_a_409_and_leaves_the_line() {
    let app = app().await;
    app.acquire("busy", json!({"ttl_ms": 60_000, "owner": "holder"}))
        .await;
    let (s, p) = app
        .acquire("busy", json!({"ttl_ms": 1000, "wait_ms": 50}))
        .await;
    assert_eq!(s, 409, "{p}");
    let (_, info) = app.call("GET", "/v1/locks/busy", None).await;
    assert_eq!(info["waiters"].as_array().unwrap().len(), 0, "{info}");
}

#[tokio::test]
async fn semaphores_inspect_and_list() {
    let app = app().await;
    for owner in ["a", "b"] {
        let (s, _) = app
            .acquire(
                "pool%2Fdb",
                json!({"ttl_ms": 60_000, "owner": owner, "permits": 2}),
            )
            .await;
        assert_eq!(s, 200);
    }
    let (s, p) = app
        .acquire("pool%2Fdb", json!({"ttl_ms": 60_000, "permits": 2}))
        .await;
    assert_eq!(s, 409, "{p}");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("all 2 permits of `pool/db` are held: `a` (until 20")
            && detail.contains(", `b` (until 20"),
        "a full semaphore names every holder and when each lease runs out: {p}"
    );
    assert!(p.get("lease_id").is_none() && p["holders"][0].get("lease_id").is_none());
    let (s, p) = app
        .acquire("pool%2Fdb", json!({"ttl_ms": 60_000, "permits": 5}))
        .await;
    assert_eq!(s, 409);
    assert!(
        p["type"].as_str().unwrap().ends_with("permits-mismatch"),
        "{p}"
    );
    let (_, info) = app.call("GET", "/v1/locks/pool%2Fdb", None).await;
    assert_eq!(info["permits"], 2);
    assert_eq!(info["holders"].as_array().unwrap().len(), 2);
    let (_, list) = app.call("GET", "/v1/locks?prefix=pool", None).await;
    assert_eq!(list["items"][0]["name"], "pool/db");
    let (s, _) = app.call("GET", "/v1/locks/free-lock", None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn bad_input_is_a_clear_problem() {
    let app = app().await;
    let cases = [
        (json!({"ttl_ms": 0}), "ttl_ms"),
        (json!({"ttl_ms": 3_600_001}), "ttl_ms"),
        (json!({"ttl_ms": 1000, "permits": 0}), "permits"),
        (json!({"ttl_ms": 1000, "wait_ms": 999_999_999}), "wait_ms"),
        (json!({"ttl_ms": 1000, "owner": ""}), "owner"),
        (json!({"ttl_ms": -5}), "ttl_ms"),
        (json!({"ttl": 1000}), "ttl"),
    ];
    for (body, field) in cases {
        let (s, p) = app.acquire("x", body.clone()).await;
        assert_eq!(s, 400, "{body} → {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body} → {p}");
    }
    let long = "n".repeat(257);
    let (s, p) = app.acquire(&long, json!({"ttl_ms": 1000})).await;
    assert_eq!(
        (s.as_u16(), p["errors"][0]["field"].as_str()),
        (400, Some("name"))
    );
    let (s, _) = app.acquire("bad%20name", json!({"ttl_ms": 1000})).await;
    assert_eq!(s, 400);
    let (s, _) = app
        .call(
            "POST",
            "/v1/locks/x/renew",
            Some(json!({"lease_id": "nope", "ttl_ms": 1000})),
        )
        .await;
    assert_eq!(s, 410);
    let (s, _) = app
        .call(
            "POST",
            "/v1/locks/x/renew",
            Some(json!({"lease_id": "nope", "ttl_ms": 0})),
        )
        .await;
    assert_eq!(s, 400);
}
