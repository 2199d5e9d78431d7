//! Breakers over HTTP through the router, on a node's embedded storage: create, update and
//! delete (mortar.toml breakers read-only), definitions surviving a restart, and calls from
//! other languages — acquire → record driving a breaker open, 503 with Retry-After, exactly
//! `half_open_calls` probes, and every kind of bad permit.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use mortar_core::storage::Storage;
use mortar_resilience::{ResilienceConfig, ResilienceService};
use mortar_testkit::fixture::{Reply, oneshot, storage_at};
use serde_json::{Value, json};

struct Node {
    svc: Arc<ResilienceService>,
    router: Router,
    storage: Storage,
}

async fn node(dir: &Path, toml: &str) -> Node {
    let storage = storage_at(dir, None, &[mortar_resilience::store::migrations()]).await;
    let cfg: ResilienceConfig = toml::from_str(toml).unwrap();
    let svc = ResilienceService::start(&storage, &cfg).await.unwrap();
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .merge(mortar_resilience::api::router(svc.clone()))
        .split_for_parts();
    Node {
        svc,
        router,
        storage,
    }
}

const B: &str = "/v1/resilience/breakers";

async fn put(n: &Node, name: &str, body: Value) -> Reply {
    oneshot(&n.router, "PUT", &format!("{B}/{name}"), Some(&body)).await
}

async fn acquire(n: &Node, name: &str) -> Reply {
    oneshot(&n.router, "POST", &format!("{B}/{name}/acquire"), None).await
}

async fn record(n: &Node, name: &str, permit: &Value, outcome: &str) -> Reply {
    let body = json!({"permit": permit, "outcome": outcome, "duration_ms": 5});
    oneshot(
        &n.router,
        "POST",
        &format!("{B}/{name}/record"),
        Some(&body),
    )
    .await
}

/// One call through the breaker: acquire (must be admitted), record `outcome`.
async fn call(n: &Node, name: &str, outcome: &str) -> Value {
    let a = acquire(n, name).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let r = record(n, name, &a.body["permit"], outcome).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

#[tokio::test]
async fn create_update_delete_and_config_breakers_are_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "[breakers.fixed]\nminimum_calls = 5\n").await;

    let r = put(
        &n,
        "payments",
        json!({"minimum_calls": 4, "window_size": 20}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["source"], "api");
    assert_eq!(r.body["state"], "closed");
    assert_eq!(r.body["config"]["minimum_calls"], 4);
    assert_eq!(
        r.body["config"]["wait_open_ms"], 30_000,
        "defaults fill the rest"
    );
    let r = put(
        &n,
        "payments",
        json!({"minimum_calls": 2, "window_size": 20}),
    )
    .await;
    assert_eq!(r.status, 200, "an update");
    assert_eq!(r.body["config"]["minimum_calls"], 2);

    // Every bad field is named; nothing is stored.
    let r = put(
        &n,
        "bad",
        json!({"window_size": 0, "failure_rate_threshold": 0, "half_open_calls": 0, "shared": true}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), "application/problem+json");
    let fields: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "window_size",
            "failure_rate_threshold",
            "minimum_calls",
            "half_open_calls",
            "shared"
        ]
    );
    assert!(r.text.contains("cluster mode with Redis"), "{}", r.text);
    let r = put(&n, "bad", json!({"windw": "count"})).await;
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.text);
    let r = put(&n, "bad%20name!", json!({})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["errors"][0]["field"], "name");
    assert_eq!(
        oneshot(&n.router, "GET", &format!("{B}/bad"), None)
            .await
            .status,
        404
    );

    // mortar.toml breakers: listed, usable, read-only here.
    let r = put(&n, "fixed", json!({"minimum_calls": 1})).await;
    assert_eq!(r.status, 409);
    assert!(r.text.contains("mortar.toml"), "{}", r.text);
    let r = oneshot(&n.router, "DELETE", &format!("{B}/fixed"), None).await;
    assert_eq!(r.status, 409);
    let list = oneshot(&n.router, "GET", B, None).await.body;
    let sources: Vec<(&str, &str)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap(), b["source"].as_str().unwrap()))
        .collect();
    assert_eq!(sources, [("fixed", "config"), ("payments", "api")]);

    // A block's breaker (default settings) can be given a definition, and deleting it
    // returns it to defaults instead of removing it from under the block.
    let pushed = n.svc.breaker("jobs.push.mail");
    let r = put(&n, "jobs.push.mail", json!({"minimum_calls": 3})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        pushed.config().minimum_calls,
        3,
        "the block's own breaker changed"
    );
    let r = oneshot(&n.router, "DELETE", &format!("{B}/jobs.push.mail"), None).await;
    assert_eq!(r.status, 204);
    let r = oneshot(&n.router, "GET", &format!("{B}/jobs.push.mail"), None).await;
    assert_eq!(r.body["source"], "default");
    assert_eq!(pushed.config().minimum_calls, 10);
    let r = oneshot(&n.router, "DELETE", &format!("{B}/jobs.push.mail"), None).await;
    assert_eq!(r.status, 404);
    assert!(r.text.contains("not created through the API"), "{}", r.text);

    let r = oneshot(&n.router, "DELETE", &format!("{B}/payments"), None).await;
    assert_eq!(r.status, 204);
    let r = oneshot(&n.router, "DELETE", &format!("{B}/payments"), None).await;
    assert_eq!(r.status, 404);
    assert_eq!(acquire(&n, "payments").await.status, 404);
}

#[tokio::test]
async fn definitions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "").await;
    assert_eq!(
        put(&n, "kept", json!({"window": "time", "window_ms": 5000}))
            .await
            .status,
        201
    );
    assert_eq!(put(&n, "gone", json!({})).await.status, 201);
    let r = oneshot(&n.router, "DELETE", &format!("{B}/gone"), None).await;
    assert_eq!(r.status, 204);
    n.storage.close().await;
    drop(n);

    let n = node(dir.path(), "").await;
    let r = oneshot(&n.router, "GET", &format!("{B}/kept"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["source"], "api");
    assert_eq!(r.body["config"]["window"], "time");
    assert_eq!(r.body["config"]["window_ms"], 5000);
    assert_eq!(
        oneshot(&n.router, "GET", &format!("{B}/gone"), None)
            .await
            .status,
        404
    );
    // A breaker created again after a restart is an update only if it was kept.
    assert_eq!(put(&n, "kept", json!({})).await.status, 200);
    assert_eq!(put(&n, "gone", json!({})).await.status, 201);
}

#[tokio::test]
async fn acquire_and_record_drive_the_breaker_open_and_updates_keep_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "").await;
    let cfg = json!({"window_size": 10, "minimum_calls": 4, "failure_rate_threshold": 50,
        "slow_call_ms": 1000, "slow_call_rate_threshold": 50, "wait_open_ms": 60000});
    put(&n, "inventory", cfg.clone()).await;

    let a = acquire(&n, "inventory").await;
    assert_eq!(a.body["state"], "closed");
    assert_eq!(a.body["probe"], false);
    assert_eq!(a.body["shared"], false);
    assert_eq!(a.body["expires_in_ms"], 61_000, "slow_call_ms + 60 s");
    // A slow success counts as slow.
    let body = json!({"permit": a.body["permit"], "outcome": "success", "duration_ms": 1500});
    let r = oneshot(
        &n.router,
        "POST",
        &format!("{B}/inventory/record"),
        Some(&body),
    )
    .await;
    assert_eq!(
        r.body,
        json!({"breaker": "inventory", "state": "closed", "counted": true, "shared": false})
    );
    // A cancelled call counts nothing.
    let a = acquire(&n, "inventory").await;
    let r = record(&n, "inventory", &a.body["permit"], "cancelled").await;
    assert_eq!(r.body["counted"], false);
    call(&n, "inventory", "success").await;
    call(&n, "inventory", "failure").await;
    let v = oneshot(&n.router, "GET", &format!("{B}/inventory"), None)
        .await
        .body;
    assert_eq!(
        (
            v["calls"].as_u64(),
            v["failures"].as_u64(),
            v["slow_calls"].as_u64()
        ),
        (Some(3), Some(1), Some(1))
    );
    // The 4th call makes 2 failures of 4 = 50%: open.
    assert_eq!(call(&n, "inventory", "failure").await["state"], "open");

    let r = acquire(&n, "inventory").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), "application/problem+json");
    assert_eq!(r.header("retry-after"), "60");
    assert_eq!(r.body["type"], "https://mortar.dev/problems/circuit-open");
    assert_eq!(r.body["breaker"], "inventory");
    assert_eq!(r.body["state"], "open");
    assert!(r.body["retry_after_ms"].as_u64().unwrap() > 59_000);

    // An update keeps it open (and its wait counts from when it opened).
    let mut changed = cfg.clone();
    changed["failure_rate_threshold"] = json!(90);
    assert_eq!(put(&n, "inventory", changed).await.status, 200);
    let r = acquire(&n, "inventory").await;
    assert_eq!(r.status, 503, "still open after the update");
    // Forced states answer 503 too; a reset closes it with an empty window.
    oneshot(&n.router, "POST", &format!("{B}/inventory/reset"), None).await;
    let v = oneshot(&n.router, "GET", &format!("{B}/inventory"), None)
        .await
        .body;
    assert_eq!(
        (v["state"].as_str(), v["calls"].as_u64()),
        (Some("closed"), Some(0))
    );
    oneshot(
        &n.router,
        "POST",
        &format!("{B}/inventory/force_open"),
        None,
    )
    .await;
    let r = acquire(&n, "inventory").await;
    assert_eq!(
        (r.status.as_u16(), r.body["state"].as_str()),
        (503, Some("forced_open"))
    );
    assert_eq!(r.header("retry-after"), "1");
    oneshot(&n.router, "POST", &format!("{B}/inventory/disable"), None).await;
    let a = acquire(&n, "inventory").await;
    assert_eq!(a.body["state"], "disabled");
    assert_eq!(
        record(&n, "inventory", &a.body["permit"], "failure")
            .await
            .body["counted"],
        false
    );
}

#[tokio::test]
async fn half_open_admits_exactly_half_open_calls_probes() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "").await;
    // wait_open_ms 0: the first acquire after opening probes (no waiting in the test).
    put(
        &n,
        "search",
        json!({"window_size": 4, "minimum_calls": 2, "wait_open_ms": 0, "half_open_calls": 3}),
    )
    .await;
    call(&n, "search", "failure").await;
    assert_eq!(call(&n, "search", "failure").await["state"], "open");

    let mut probes = Vec::new();
    for _ in 0..3 {
        let a = acquire(&n, "search").await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(
            (a.body["state"].as_str(), a.body["probe"].as_bool()),
            (Some("half_open"), Some(true))
        );
        probes.push(a.body["permit"].clone());
    }
    let r = acquire(&n, "search").await;
    assert_eq!(r.status, 503, "a 4th probe is refused: {}", r.text);
    assert_eq!(r.body["state"], "half_open");
    assert_eq!(r.header("retry-after"), "1");
    let v = oneshot(&n.router, "GET", &format!("{B}/search"), None)
        .await
        .body;
    assert_eq!(v["probes_in_flight"], 3);

    // A cancelled probe frees its slot for exactly one more.
    assert_eq!(
        record(&n, "search", &probes.pop().unwrap(), "cancelled")
            .await
            .body["counted"],
        false
    );
    let a = acquire(&n, "search").await;
    assert_eq!(a.status, 200);
    probes.push(a.body["permit"].clone());
    assert_eq!(acquire(&n, "search").await.status, 503);

    // Probes decide when all have finished: 2 successes of 3 = 33% failures < 50%: closed.
    assert_eq!(
        record(&n, "search", &probes[0], "success").await.body["state"],
        "half_open"
    );
    assert_eq!(
        record(&n, "search", &probes[1], "failure").await.body["state"],
        "half_open"
    );
    assert_eq!(
        record(&n, "search", &probes[2], "success").await.body["state"],
        "closed"
    );
    assert_eq!(acquire(&n, "search").await.body["probe"], false);
}

#[tokio::test]
async fn bad_permits_are_clear_problems() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path(), "").await;
    put(&n, "a", json!({})).await;
    put(&n, "b", json!({})).await;
    let permit = acquire(&n, "a").await.body["permit"].clone();
    let text = permit.as_str().unwrap().to_owned();

    let r = record(&n, "a", &json!("garbage"), "success").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["errors"][0]["field"], "permit");
    let r = record(&n, "b", &permit, "success").await;
    assert_eq!(r.status, 400, "another breaker's permit: {}", r.text);
    assert!(r.text.contains("circuit breaker `a`"), "{}", r.text);
    let r = record(&n, "nope", &permit, "success").await;
    assert_eq!(r.status, 404);
    let body = json!({"permit": permit, "outcome": "maybe"});
    let r = oneshot(&n.router, "POST", &format!("{B}/a/record"), Some(&body)).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["errors"][0]["field"], "outcome");

    assert_eq!(record(&n, "a", &permit, "success").await.status, 200);
    let r = record(&n, "a", &permit, "success").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["type"], "https://mortar.dev/problems/permit-used");

    // This node's permit, past its expiry (and so no longer in flight): 410.
    let mut parts: Vec<&str> = text.split('.').collect();
    parts[3] = "0";
    let r = record(&n, "a", &json!(parts.join(".")), "success").await;
    assert_eq!(r.status, 410, "{}", r.text);
    assert!(r.text.contains("counted as nothing"), "{}", r.text);
    // Another node's (or a previous run's): 409 saying where to record.
    parts[1] = "someother";
    let r = record(&n, "a", &json!(parts.join(".")), "success").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["type"], "https://mortar.dev/problems/permit-unknown");
    assert!(r.text.contains("shared = true"), "{}", r.text);
    // A shared permit on a breaker that is not shared.
    let r = record(&n, "a", &json!("s.1.n.abc-1.99"), "success").await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("not shared"), "{}", r.text);
}

#[tokio::test]
async fn a_shared_breaker_in_mortar_toml_needs_cluster_mode_with_redis() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage_at(dir.path(), None, &[mortar_resilience::store::migrations()]).await;
    let cfg: ResilienceConfig = toml::from_str("[breakers.ledger]\nshared = true\n").unwrap();
    let err = ResilienceService::start(&storage, &cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("resilience.breakers.ledger.shared") && err.contains("Redis"),
        "{err}"
    );
}
