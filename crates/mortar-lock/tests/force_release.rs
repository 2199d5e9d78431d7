//! `DELETE /v1/locks/{name}` (an operator's force-release) and who sees lease ids, through the
//! router: what it releases, 404 and 403 problems, the waiter served at once, the evicted
//! holder's 410s, fencing tokens that keep increasing, bad input.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use common::{App, app};
use http::{Request, StatusCode};
use mortar_core::auth::{ApiKey, Principal, Scope};
use mortar_testkit::fixture;
use serde_json::{Value, json};

/// A request as the auth layer hands it on for an API key with these scopes (it puts the
/// principal in the extensions; without one, auth is off).
async fn as_key(app: &App, scopes: &[&str], method: &str, uri: &str) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(Principal::Key(ApiKey {
        id: "k1".into(),
        name: "ops-bot".into(),
        scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
        created_at_ms: 0,
        revoked_at_ms: None,
    }));
    let r = fixture::send(&app.router, req).await;
    (r.status, r.body)
}

async fn hold(app: &App, name: &str, owner: &str, permits: u32) -> Value {
    let (s, v) = app
        .acquire(
            name,
            json!({"ttl_ms": 600_000, "owner": owner, "permits": permits}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v
}

fn token(v: &Value) -> u64 {
    v["fencing_token"].as_u64().unwrap()
}

#[tokio::test]
async fn force_release_ends_the_lease_and_the_holder_learns_it_with_410() {
    let app = app().await;
    let first = hold(&app, "db-migrate", "worker-7", 1).await;
    let (s, r) = app
        .call("DELETE", "/v1/locks/db-migrate?reason=stuck%20deploy", None)
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["name"], "db-migrate");
    assert_eq!(r["reason"], "stuck deploy");
    let released = r["released"].as_array().unwrap();
    assert_eq!(released.len(), 1, "{r}");
    assert_eq!(released[0]["owner"], "worker-7");
    assert_eq!(released[0]["lease_id"], first["lease_id"]);
    assert_eq!(released[0]["fencing_token"], first["fencing_token"]);

    let (s, _) = app.call("GET", "/v1/locks/db-migrate", None).await;
    assert_eq!(s, 404, "nobody holds it any more");
    let lease = json!({"lease_id": first["lease_id"], "ttl_ms": 10_000});
    let (s, p) = app
        .call("POST", "/v1/locks/db-migrate/renew", Some(lease))
        .await;
    assert_eq!(s, 410, "the evicted holder's renew is a lost lease: {p}");
    assert!(p["type"].as_str().unwrap().ends_with("lease-lost"), "{p}");
    let (s, _) = app
        .call(
            "POST",
            "/v1/locks/db-migrate/release",
            Some(json!({"lease_id": first["lease_id"]})),
        )
        .await;
    assert_eq!(s, 410, "and its release is answered as an expired lease's");

    let second = hold(&app, "db-migrate", "worker-8", 1).await;
    assert!(token(&second) > token(&first), "{second} after {first}");
    // Without a reason: the reason is null.
    let (s, r) = app.call("DELETE", "/v1/locks/db-migrate", None).await;
    assert_eq!((s.as_u16(), &r["reason"]), (200, &Value::Null), "{r}");
    let third = hold(&app, "db-migrate", "worker-9", 1).await;
    assert!(token(&third) > token(&second));
}

#[tokio::test]
async fn nothing_held_is_a_404_problem() {
    let app = app().await;
    let (s, p) = app.call("DELETE", "/v1/locks/free-lock", None).await;
    assert_eq!(s, 404, "{p}");
    assert_eq!(
        p["detail"],
        "nobody holds lock `free-lock`: nothing to release"
    );
    hold(&app, "held", "a", 1).await;
    let (s, p) = app
        .call("DELETE", "/v1/locks/held?lease_id=01NOTALEASE", None)
        .await;
    assert_eq!(s, 404, "{p}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("lease `01NOTALEASE` does not hold lock `held`"),
        "{p}"
    );
    let (s, _) = app.call("GET", "/v1/locks/held", None).await;
    assert_eq!(s, 200, "a wrong lease id releases nothing");
}

#[tokio::test]
async fn force_release_needs_lock_secrets() {
    let app = app().await;
    let a = hold(&app, "guarded", "a", 1).await;
    let (s, p) = as_key(&app, &["locks:write"], "DELETE", "/v1/locks/guarded").await;
    assert_eq!(s, 403, "{p}");
    assert!(p["type"].as_str().unwrap().ends_with("forbidden"), "{p}");
    assert!(
        p["detail"].as_str().unwrap().contains("`locks:secrets`"),
        "names the scope it needs: {p}"
    );
    let (_, info) = app.call("GET", "/v1/locks/guarded", None).await;
    assert_eq!(
        info["holders"][0]["fencing_token"], a["fencing_token"],
        "still held"
    );

    let (s, r) = as_key(
        &app,
        &["locks:write", "locks:secrets"],
        "DELETE",
        "/v1/locks/guarded?reason=ops",
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["released"][0]["owner"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_granted_at_once_after_a_force_release() {
    let app = Arc::new(app().await);
    let held = hold(&app, "line", "stuck", 1).await;
    let waiter_app = app.clone();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let r = waiter_app
            .acquire(
                "line",
                json!({"ttl_ms": 60_000, "owner": "next", "wait_ms": 30_000}),
            )
            .await;
        (r, started.elapsed())
    });
    loop {
        let (_, info) = app.call("GET", "/v1/locks/line", None).await;
        if info["waiters"].as_array().map_or(0, Vec::len) == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let (s, r) = app
        .call("DELETE", "/v1/locks/line?reason=holder%20hung", None)
        .await;
    assert_eq!(s, 200, "{r}");
    let ((s, granted), waited) = waiter.await.unwrap();
    assert_eq!(s, 200, "{granted}");
    assert_eq!(granted["owner"], "next");
    assert!(token(&granted) > token(&held));
    assert!(
        waited < Duration::from_secs(10),
        "woken by the release, not by its wait running out: {waited:?}"
    );
}

#[tokio::test]
async fn one_holder_of_a_semaphore_by_lease_id() {
    let app = app().await;
    let holders = [
        hold(&app, "pool", "a", 3).await,
        hold(&app, "pool", "b", 3).await,
        hold(&app, "pool", "c", 3).await,
    ];
    let (s, p) = app
        .acquire("pool", json!({"ttl_ms": 1000, "permits": 3}))
        .await;
    assert_eq!(s, 409);
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("all 3 permits of `pool` are held: `a` (until 20")
            && detail.contains(", `b` (until ")
            && detail.contains(", `c` (until "),
        "every holder named: {p}"
    );
    let uri = format!(
        "/v1/locks/pool?lease_id={}",
        holders[1]["lease_id"].as_str().unwrap()
    );
    let (s, r) = app.call("DELETE", &uri, None).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["released"].as_array().unwrap().len(), 1);
    assert_eq!(r["released"][0]["owner"], "b");
    let (_, info) = app.call("GET", "/v1/locks/pool", None).await;
    let owners: Vec<&str> = info["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["a", "c"]);
    let d = hold(&app, "pool", "d", 3).await;
    assert!(
        token(&d) > token(&holders[2]),
        "the freed permit, a larger token"
    );

    let (s, r) = app.call("DELETE", "/v1/locks/pool", None).await;
    assert_eq!(s, 200);
    let owners: Vec<&str> = r["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["owner"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["a", "c", "d"], "every holder, by fencing token");
}

#[tokio::test]
async fn lease_ids_are_shown_only_to_callers_who_may_see_them() {
    let app = app().await;
    let a = hold(&app, "jobs%2Fnightly", "a", 1).await;
    let lease = a["lease_id"].as_str().unwrap();
    for (scopes, shown) in [
        (&["locks:read"][..], false),
        (&["locks:write"][..], false),
        (&["*:read"][..], false),
        (&["locks:secrets"][..], true),
        (&["*:secrets"][..], true),
    ] {
        let (s, info) = as_key(&app, scopes, "GET", "/v1/locks/jobs%2Fnightly").await;
        assert_eq!(s, 200, "{info}");
        let (_, list) = as_key(&app, scopes, "GET", "/v1/locks?prefix=jobs/").await;
        for (what, holder) in [
            ("status", &info["holders"][0]),
            ("list", &list["items"][0]["holders"][0]),
        ] {
            assert_eq!(holder["owner"], "a", "{scopes:?} {what}: {holder}");
            if shown {
                assert_eq!(holder["lease_id"], lease, "{scopes:?} {what}");
            } else {
                assert!(
                    holder.get("lease_id").is_none(),
                    "{scopes:?} {what}: {holder}"
                );
            }
        }
    }
    // Auth off (no principal): full rights, as for every other route.
    let (_, info) = app.call("GET", "/v1/locks/jobs%2Fnightly", None).await;
    assert_eq!(info["holders"][0]["lease_id"], lease);
}

#[tokio::test]
async fn bad_input_is_a_clear_problem() {
    let app = app().await;
    hold(&app, "x", "a", 1).await;
    let long = "r".repeat(1025);
    for (uri, field) in [
        ("/v1/locks/x?lease_id=".to_owned(), "lease_id"),
        (
            format!("/v1/locks/x?lease_id={}", "l".repeat(257)),
            "lease_id",
        ),
        (format!("/v1/locks/x?reason={long}"), "reason"),
        ("/v1/locks/bad%20name".to_owned(), "name"),
    ] {
        let (s, p) = app.call("DELETE", &uri, None).await;
        assert_eq!(s, 400, "{uri}: {p}");
        assert_eq!(p["errors"][0]["field"], field, "{uri}: {p}");
    }
    let (s, p) = app.call("DELETE", "/v1/locks/x?force=yes", None).await;
    assert_eq!(s, 400, "unknown parameters are refused: {p}");
    let (s, _) = app.call("GET", "/v1/locks/x", None).await;
    assert_eq!(s, 200, "nothing was released");
}
