//! The config API through the router: writes and reads, CAS, change sets, history, rollback,
//! schemas, bad input; and the watch (long-poll): snapshot, catch-up after 1 000 missed
//! revisions, reset after compaction, filters, live delivery.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use mortar_config::{ConfigService, Settings};
use mortar_core::clock::SystemClock;
use mortar_core::storage::Durable;
use mortar_testkit::fixture::{Reply, TestStorage, embedded, oneshot, send};
use serde_json::{Value, json};

struct App {
    router: Router,
    svc: Arc<ConfigService>,
    _storage: TestStorage,
}

async fn app() -> App {
    app_with("max_value_bytes = 1000\n[environments]\nprod = [\"staging\"]\n").await
}

/// A service with `[config]` from `toml`, its follower running, behind its router.
async fn app_with(toml: &str) -> App {
    let storage = embedded(&[mortar_config::service::migrations()]).await;
    let settings: Settings = toml::from_str(toml).unwrap();
    let svc = ConfigService::new(&storage, &settings, Arc::new(SystemClock));
    svc.spawn();
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .merge(mortar_config::api::router(svc.clone()))
        .split_for_parts();
    App {
        router,
        svc,
        _storage: storage,
    }
}

impl App {
    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> Reply {
        oneshot(&self.router, method, uri, body.as_ref()).await
    }

    async fn put(&self, uri: &str, value: Value) -> Reply {
        self.call("PUT", uri, Some(value)).await
    }

    async fn with_header(&self, method: &str, uri: &str, h: (&str, &str), body: &str) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header(h.0, h.1)
            .body(Body::from(body.to_owned()))
            .unwrap();
        send(&self.router, req).await
    }
}

#[tokio::test]
async fn writes_reads_cas_and_bad_input() {
    let app = app().await;
    let r = app
        .put(
            "/v1/config/billing/base/db.pool.max?message=initial",
            json!(10),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rev = r.body["revision"].as_i64().unwrap();
    app.put("/v1/config/billing/staging/db.pool.max", json!(20))
        .await;
    app.put("/v1/config/billing/base/greeting", json!("it's me"))
        .await;

    let r = app
        .call("GET", "/v1/config/billing/prod/db.pool.max", None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.body["value"].clone(), r.body["env"].clone()),
        (json!(20), json!("staging"))
    );
    let r = app
        .call("GET", "/v1/config/billing/base/db.pool.max", None)
        .await;
    assert_eq!(r.header("etag"), format!("\"{rev}\""));

    // CAS.
    let stale = app
        .with_header(
            "PUT",
            "/v1/config/billing/base/db.pool.max",
            ("if-match", "\"1\"x"),
            "11",
        )
        .await;
    assert_eq!(stale.status, 400, "{}", stale.text);
    let stale = app
        .with_header(
            "PUT",
            "/v1/config/billing/base/db.pool.max",
            ("if-match", &(rev + 100).to_string()),
            "11",
        )
        .await;
    assert_eq!(stale.status, 412, "{}", stale.text);
    let ok = app
        .with_header(
            "PUT",
            "/v1/config/billing/base/db.pool.max",
            ("if-match", &format!("\"{rev}\"")),
            "11",
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);

    // All values; as .env.
    let r = app.call("GET", "/v1/config/billing/prod", None).await;
    assert_eq!(r.body["values"]["greeting"]["env"], "base");
    assert_eq!(r.body["chain"], json!(["prod", "staging", "base"]));
    let r = app
        .call("GET", "/v1/config/billing/prod?format=env", None)
        .await;
    assert_eq!(r.text, "DB_POOL_MAX='20'\nGREETING='it'\\''s me'\n");
    assert!(!r.header("x-config-revision").is_empty());

    // Bad input.
    for (method, uri, body, status) in [
        ("GET", "/v1/config/nosuch/base", None, 404),
        ("GET", "/v1/config/billing/qa", None, 404),
        ("GET", "/v1/config/billing/base/missing", None, 404),
        ("PUT", "/v1/config/billing/base/a..b", Some(json!(1)), 422),
        (
            "PUT",
            "/v1/config/billing/base/history",
            Some(json!(1)),
            405,
        ),
        (
            "PUT",
            "/v1/config/billing/base/big",
            Some(json!("x".repeat(2000))),
            413,
        ),
        ("DELETE", "/v1/config/billing/base/missing", None, 404),
        ("GET", "/v1/config/billing/prod?format=yaml", None, 422),
        (
            "POST",
            "/v1/config/billing/base:nope",
            Some(json!({"ops": []})),
            404,
        ),
        (
            "POST",
            "/v1/config/billing/base:apply",
            Some(json!({"ops": []})),
            422,
        ),
        ("GET", "/v1/config/billing/base/history?cursor=x", None, 400),
    ] {
        let r = app.call(method, uri, body).await;
        assert_eq!(r.status, status, "{method} {uri}: {}", r.text);
        if status != 405 {
            assert!(
                r.body["detail"].is_string() || r.body["errors"].is_array(),
                "{method} {uri}: {}",
                r.text
            );
        }
    }
    let r = app
        .with_header(
            "PUT",
            "/v1/config/billing/base/x",
            ("x-ignore", "1"),
            "{not json",
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
}

#[tokio::test]
async fn change_sets_history_rollback_and_schemas() {
    let app = app().await;
    app.put("/v1/config/shop/base/a", json!(1)).await;
    let r = app
        .call(
            "POST",
            "/v1/config/shop/base:apply",
            Some(json!({"ops": [{"op": "set", "key": "b", "value": {"x": 1}}, {"op": "delete", "key": "a"}],
                        "message": "swap"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let set_rev = r.body["revision"].as_i64().unwrap();
    let r = app
        .call(
            "POST",
            "/v1/config/shop/base:apply",
            Some(json!({"ops": [{"op": "set", "key": "c", "value": 1}], "expected_revision": 1})),
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text);

    let h = app.call("GET", "/v1/config/shop/base/history", None).await;
    let items = h.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["revision"], set_rev);
    assert_eq!(items[0]["message"], "swap");
    assert_eq!(items[0]["principal"], "anonymous");

    let r = app
        .call(
            "POST",
            "/v1/config/shop/base/rollback",
            Some(json!({"to_revision": set_rev - 1})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = app.call("GET", "/v1/config/shop/base", None).await;
    assert_eq!(v.body["values"]["a"]["value"], 1);
    assert!(v.body["values"].get("b").is_none());

    let schema = json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}, "required": ["a"]});
    let r = app.put("/v1/config/shop/schema", schema.clone()).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(
        app.call("GET", "/v1/config/shop/schema", None).await.body,
        schema
    );
    let r = app.put("/v1/config/shop/base/a", json!(-5)).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["errors"][0]["field"], "/a", "{}", r.text);
    let r = app.call("DELETE", "/v1/config/shop/base/a", None).await;
    assert_eq!(r.status, 422, "required: {}", r.text);
    let r = app
        .put(
            "/v1/config/shop/schema",
            json!({"properties": {"a": {"type": "string"}}}),
        )
        .await;
    assert_eq!(r.status, 422, "stored values break it: {}", r.text);
    assert_eq!(
        app.call("DELETE", "/v1/config/shop/schema", None)
            .await
            .status,
        204
    );
    assert_eq!(
        app.put("/v1/config/shop/base/a", json!(-5)).await.status,
        200
    );
}

async fn poll(app: &App, query: &str) -> Value {
    let r = app
        .call("GET", &format!("/v1/config/w/prod/watch?{query}"), None)
        .await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    r.body
}

#[tokio::test]
async fn watches_snapshot_catch_up_reset_and_filter() {
    let app = app().await;
    app.put("/v1/config/w/base/a", json!(0)).await;
    let first = poll(&app, "wait_ms=0").await;
    assert_eq!(first["items"][0]["event"], "snapshot");
    assert_eq!(first["items"][0]["data"]["values"]["a"]["value"], 0);
    let start = first["revision"].as_i64().unwrap();

    // 1 000 changes missed, then resumed: each revision once, in order, with the effective value.
    for i in 1..=1000 {
        let (env, prefix) = if i % 3 == 0 {
            ("staging", "s")
        } else {
            ("base", "k")
        };
        let r = app
            .put(&format!("/v1/config/w/{env}/{prefix}{}", i % 7), json!(i))
            .await;
        assert_eq!(r.status, 200);
    }
    // A base write hidden by staging's own value is no change for prod.
    let hidden = app.put("/v1/config/w/staging/shadow", json!("s")).await;
    let hidden_base = app.put("/v1/config/w/base/shadow", json!("b")).await;
    let mut seen = Vec::new();
    let mut after = start;
    loop {
        let got = poll(
            &app,
            &format!("after_revision={after}&wait_ms=0&limit=1000"),
        )
        .await;
        let items = got["items"].as_array().unwrap().clone();
        if items.is_empty() {
            break;
        }
        for it in &items {
            assert_eq!(it["event"], "change");
            seen.push(it["revision"].as_i64().unwrap());
        }
        after = got["revision"].as_i64().unwrap();
    }
    let expected: Vec<i64> = (start + 1..=start + 1001).collect();
    assert_eq!(seen, expected, "every visible revision once, in order");
    assert!(!seen.contains(&hidden_base.body["revision"].as_i64().unwrap()));
    assert!(seen.contains(&hidden.body["revision"].as_i64().unwrap()));

    // A filtered watch sees only its keys.
    let got = poll(
        &app,
        &format!("after_revision={start}&wait_ms=0&limit=1000&key=k3"),
    )
    .await;
    let items = got["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(items.iter().all(|i| {
        i["data"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["key"] == "k3")
    }));

    // Compacted away: a reset with the full snapshot, never an error or a gap.
    let (head, _) = app.svc.store().head().await.unwrap();
    app.svc.store().compact(head).await.unwrap();
    let got = poll(&app, &format!("after_revision={start}&wait_ms=0")).await;
    assert_eq!(got["items"][0]["event"], "reset");
    assert_eq!(got["items"][0]["data"]["values"]["shadow"]["value"], "s");
    assert_eq!(got["revision"], head);

    // Live: a long-poll waiting at the head gets the next write.
    let waiting = {
        let router = app.router.clone();
        tokio::spawn(async move {
            oneshot(
                &router,
                "GET",
                &format!("/v1/config/w/prod/watch?after_revision={head}&wait_ms=10000"),
                None,
            )
            .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let w = app.put("/v1/config/w/prod/live", json!(true)).await;
    let got = waiting.await.unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.body["items"][0]["revision"], w.body["revision"],
        "{}",
        got.text
    );
    assert_eq!(got.body["items"][0]["data"]["changes"][0]["key"], "live");
}

/// A request as an API key with these scopes would send it (the auth layer puts the principal
/// in the extensions).
async fn as_key(app: &App, scopes: &[&str], method: &str, uri: &str, body: Option<Value>) -> Reply {
    use mortar_core::auth::{ApiKey, Principal, Scope};
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let mut req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    req.extensions_mut().insert(Principal::Key(ApiKey {
        id: "k1".into(),
        name: "ci-deployer".into(),
        scopes: scopes.iter().map(|s| Scope::parse(s).unwrap()).collect(),
        created_at_ms: 0,
        revoked_at_ms: None,
    }));
    send(&app.router, req).await
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_shown_only_with_the_scope() {
    let app = app_with("secret_key = \"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"\n").await;
    let w = as_key(
        &app,
        &["config:write"],
        "PUT",
        "/v1/config/pay/base/db.password?secret=true",
        Some(json!("hunter2")),
    )
    .await;
    assert_eq!(w.status, 200, "{}", w.text);
    let start = w.body["revision"].as_i64().unwrap() - 1;
    // Stays secret when rewritten without saying so.
    as_key(
        &app,
        &["config:write"],
        "PUT",
        "/v1/config/pay/base/db.password",
        Some(json!("hunter3")),
    )
    .await;
    app.put("/v1/config/pay/base/plain", json!(1)).await;

    for (uri, what) in [
        ("/v1/config/pay/base/db.password", "get"),
        ("/v1/config/pay/base", "list"),
        ("/v1/config/pay/base?format=env", "env"),
        ("/v1/config/pay/base/history", "history"),
        (
            &format!("/v1/config/pay/base/watch?after_revision={start}&wait_ms=0") as &str,
            "watch",
        ),
        ("/v1/config/pay/base/watch?wait_ms=0", "watch snapshot"),
    ] {
        let r = as_key(&app, &["config:read"], "GET", uri, None).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text);
        assert!(
            !r.text.contains("hunter"),
            "{what} shows a secret: {}",
            r.text
        );
        assert!(r.text.contains("***"), "{what}: {}", r.text);
        let r = as_key(&app, &["config:secrets"], "GET", uri, None).await;
        assert!(
            r.text.contains("hunter3"),
            "{what} with config:secrets: {}",
            r.text
        );
    }
    let r = as_key(
        &app,
        &["config:read"],
        "GET",
        "/v1/config/pay/base/db.password",
        None,
    )
    .await;
    assert_eq!(
        (r.body["value"].clone(), r.body["secret"].clone()),
        (json!("***"), json!(true))
    );

    // At rest: ciphertext only, in the values and in the history.
    let Durable::Sqlite(pool) = app.svc.store().durable() else {
        unreachable!()
    };
    let rows: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT value, prev FROM config_changes UNION ALL SELECT value, NULL FROM config_values",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        rows.iter()
            .all(|(v, p)| !v.as_deref().unwrap_or("").contains("hunter")
                && !p.as_deref().unwrap_or("").contains("hunter"))
    );

    // Rollback restores the secret as a secret.
    let r = as_key(
        &app,
        &["config:write"],
        "POST",
        "/v1/config/pay/base/rollback",
        Some(json!({"to_revision": start + 1})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = as_key(
        &app,
        &["config:secrets"],
        "GET",
        "/v1/config/pay/base/db.password",
        None,
    )
    .await;
    assert_eq!(
        (r.body["value"].clone(), r.body["secret"].clone()),
        (json!("hunter2"), json!(true))
    );
}

#[tokio::test]
async fn a_secret_needs_a_key() {
    let app = app().await;
    let r = app
        .put("/v1/config/pay/base/token?secret=true", json!("x"))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("secret_key"), "{}", r.text);
}
