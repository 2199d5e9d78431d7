//! The rate-limit HTTP API through the router: checks and headers, policies, bad input.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Request, header};
use mortar_core::clock::ManualClock;
use mortar_ratelimit::RateLimitConfig;
use mortar_ratelimit::RateLimitService;
use mortar_testkit::fixture::{self, Reply, TestStorage};
use serde_json::{Value, json};

struct App {
    router: Router,
    clock: ManualClock,
    _storage: TestStorage,
}

async fn app() -> App {
    let storage = fixture::embedded(&[mortar_ratelimit::service::migrations()]).await;
    let config: RateLimitConfig = toml::from_str(
        "[policies.fromconfig]\nalgorithm = \"fixed_window\"\nlimit = 2\nwindow_ms = 60000\nfailure_mode = \"fail_closed\"\n",
    )
    .unwrap();
    let clock = ManualClock::at(1_800_000_000_000);
    let svc = RateLimitService::start(&storage, &config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .merge(mortar_ratelimit::api::router(svc))
        .split_for_parts();
    let keys = mortar_core::auth::KeyStore::new(storage.durable.clone(), Arc::new(clock.clone()));
    let auth = Arc::new(mortar_core::auth::Auth::new(None, keys));
    App {
        router: mortar_core::http::finish(router, 1 << 20, auth),
        clock,
        _storage: storage,
    }
}

impl App {
    async fn put_policy(&self, name: &str, spec: Value) -> Reply {
        let uri = format!("/v1/ratelimit/policies/{name}");
        fixture::oneshot(&self.router, "PUT", &uri, Some(&spec)).await
    }

    async fn check(&self, policies: &[&str], key: &str, cost: u64) -> Reply {
        let body = json!({"policies": policies, "key": key, "cost": cost});
        fixture::oneshot(&self.router, "POST", "/v1/ratelimit/check", Some(&body)).await
    }
}

fn problem(r: &Reply, status: u16) -> &Value {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/problem+json");
    &r.body
}

#[tokio::test]
async fn policies_crud() {
    let app = app().await;
    let spec = json!({"algorithm": "token_bucket", "limit": 10, "window_ms": 1000, "burst": 5});
    assert_eq!(app.put_policy("api", spec.clone()).await.status, 201);
    let r = app
        .put_policy(
            "api",
            json!({"algorithm": "sliding_log", "limit": 3, "window_ms": 1000}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["algorithm"], "sliding_log");
    let r = fixture::oneshot(&app.router, "GET", "/v1/ratelimit/policies/api", None).await;
    assert_eq!(r.body["limit"], 3);
    assert_eq!(r.body["source"], "api");
    assert_eq!(r.body["failure_mode"], "fail_open");
    let list = fixture::oneshot(&app.router, "GET", "/v1/ratelimit/policies", None).await;
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "fromconfig"]);
    assert_eq!(
        fixture::oneshot(&app.router, "DELETE", "/v1/ratelimit/policies/api", None)
            .await
            .status,
        204
    );
    problem(
        &fixture::oneshot(&app.router, "GET", "/v1/ratelimit/policies/api", None).await,
        404,
    );
    problem(
        &fixture::oneshot(&app.router, "DELETE", "/v1/ratelimit/policies/api", None).await,
        404,
    );
    // Config policies are read-only here.
    let r = app.put_policy("fromconfig", spec).await;
    assert!(
        problem(&r, 409)["detail"]
            .as_str()
            .unwrap()
            .contains("mortar.toml")
    );
    problem(
        &fixture::oneshot(
            &app.router,
            "DELETE",
            "/v1/ratelimit/policies/fromconfig",
            None,
        )
        .await,
        409,
    );
}

#[tokio::test]
async fn bad_policies_name_every_field() {
    let app = app().await;
    let cases = [
        (
            json!({"algorithm": "leaky_bucket", "limit": 1, "window_ms": 1}),
            "algorithm",
        ),
        (
            json!({"algorithm": "fixed_window", "limit": 0, "window_ms": 1}),
            "limit",
        ),
        (
            json!({"algorithm": "fixed_window", "limit": -3, "window_ms": 1}),
            "limit",
        ),
        (
            json!({"algorithm": "fixed_window", "limit": 1, "window_ms": 0}),
            "window_ms",
        ),
        (
            json!({"algorithm": "fixed_window", "limit": 1, "window_ms": -1000}),
            "window_ms",
        ),
        (
            json!({"algorithm": "fixed_window", "limit": 1, "window_ms": 1, "burst": 2}),
            "burst",
        ),
        (
            json!({"algorithm": "token_bucket", "limit": 1, "window_ms": 1, "burst": 0}),
            "burst",
        ),
        (
            json!({"algorithm": "token_bucket", "limit": "ten", "window_ms": 1}),
            "limit",
        ),
        (
            json!({"algorithm": "token_bucket", "limit": 1, "window_ms": 1, "failure_mode": "maybe"}),
            "failure_mode",
        ),
        (
            json!({"algorithm": "token_bucket", "limit": 1, "window_ms": 1, "colour": 1}),
            "colour",
        ),
        (json!({"limit": 1, "window_ms": 1}), "body"),
    ];
    for (spec, field) in cases {
        let r = app.put_policy("p", spec.clone()).await;
        let body = problem(&r, 400);
        assert_eq!(body["errors"][0]["field"], field, "{spec} → {body}");
    }
    let r = app
        .put_policy(
            "check",
            json!({"algorithm": "fixed_window", "limit": 1, "window_ms": 1}),
        )
        .await;
    assert_eq!(problem(&r, 400)["errors"][0]["field"], "name");
}

#[tokio::test]
async fn check_allows_then_denies_with_headers() {
    let app = app().await;
    app.put_policy(
        "per-user",
        json!({"algorithm": "fixed_window", "limit": 2, "window_ms": 10000}),
    )
    .await;
    let r = app.check(&["per-user"], "user:1", 1).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["allowed"], true);
    assert_eq!(r.body["remaining"], 1);
    assert_eq!(r.body["policy"], "per-user");
    assert_eq!(r.headers["ratelimit-policy"], "\"per-user\";q=2;w=10");
    assert_eq!(r.headers["ratelimit"], "\"per-user\";r=1;t=10");
    assert_eq!(r.headers["x-ratelimit-limit"], "2");
    assert_eq!(r.headers["x-ratelimit-remaining"], "1");
    assert_eq!(r.headers["x-ratelimit-reset"], "10");
    assert!(r.headers.get("retry-after").is_none());
    app.check(&["per-user"], "user:1", 1).await;
    let r = app.check(&["per-user"], "user:1", 1).await;
    assert_eq!(problem(&r, 429)["allowed"], false);
    assert!(r.body["type"].as_str().unwrap().ends_with("rate-limited"));
    assert_eq!(r.body["retry_after_ms"], 10000);
    assert_eq!(r.headers["retry-after"], "10");
    // Other keys are unaffected; time heals.
    assert_eq!(app.check(&["per-user"], "user:2", 1).await.status, 200);
    app.clock.advance(10_000);
    assert_eq!(app.check(&["per-user"], "user:1", 1).await.status, 200);
}

#[tokio::test]
async fn several_policies_report_the_most_restrictive_and_consume_atomically() {
    let app = app().await;
    app.put_policy(
        "burst",
        json!({"algorithm": "token_bucket", "limit": 100, "window_ms": 1000, "burst": 3}),
    )
    .await;
    app.put_policy(
        "daily",
        json!({"algorithm": "sliding_log", "limit": 2, "window_ms": 86_400_000}),
    )
    .await;
    let r = app.check(&["burst", "daily"], "k", 1).await;
    assert_eq!(
        r.body["policy"], "daily",
        "fewest remaining is reported: {}",
        r.body
    );
    assert_eq!(r.body["remaining"], 1);
    assert_eq!(
        r.headers["ratelimit-policy"],
        "\"burst\";q=3;w=1, \"daily\";q=2;w=86400"
    );
    app.check(&["burst", "daily"], "k", 1).await;
    let r = app.check(&["burst", "daily"], "k", 1).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["policy"], "daily");
    // `burst` was not charged for the denied check: 1 of 3 left after two allowed checks.
    let peek = fixture::oneshot(&app.router, "GET", "/v1/ratelimit/burst/k", None).await;
    assert_eq!(peek.body["remaining"], 1, "{}", peek.body);
}

#[tokio::test]
async fn bad_checks_are_clear_problems() {
    let app = app().await;
    app.put_policy(
        "p",
        json!({"algorithm": "sliding_counter", "limit": 5, "window_ms": 1000}),
    )
    .await;
    let r = app.check(&["nope"], "k", 1).await;
    assert!(
        problem(&r, 404)["detail"]
            .as_str()
            .unwrap()
            .contains("`nope`")
    );
    assert_eq!(
        problem(&app.check(&["p"], "k", 6).await, 400)["errors"][0]["field"],
        "cost"
    );
    assert_eq!(
        problem(&app.check(&["p"], "k", 0).await, 400)["errors"][0]["field"],
        "cost"
    );
    assert_eq!(
        problem(&app.check(&["p"], "", 1).await, 400)["errors"][0]["field"],
        "key"
    );
    assert_eq!(
        problem(&app.check(&["p"], &"x".repeat(4096), 1).await, 400)["errors"][0]["field"],
        "key"
    );
    assert!(
        app.check(&["p"], &"x".repeat(4095), 1)
            .await
            .status
            .is_success()
    );
    assert_eq!(
        problem(&app.check(&[], "k", 1).await, 400)["errors"][0]["field"],
        "policies"
    );
    assert_eq!(
        problem(&app.check(&["p", "p"], "k", 1).await, 400)["errors"][0]["field"],
        "policies[1]"
    );
    let r = fixture::oneshot(
        &app.router,
        "POST",
        "/v1/ratelimit/check",
        Some(&json!({"policies": ["p"], "key": "k", "cost": -1})),
    )
    .await;
    assert_eq!(problem(&r, 400)["errors"][0]["field"], "cost");
    let r = fixture::oneshot(
        &app.router,
        "POST",
        "/v1/ratelimit/check",
        Some(&json!({"policies": "p", "key": "k"})),
    )
    .await;
    assert_eq!(problem(&r, 400)["errors"][0]["field"], "policies");
}

#[tokio::test]
async fn batch_answers_each_check() {
    let app = app().await;
    app.put_policy(
        "p",
        json!({"algorithm": "fixed_window", "limit": 1, "window_ms": 1000}),
    )
    .await;
    let r = fixture::oneshot(
        &app.router,
        "POST",
        "/v1/ratelimit/check/batch",
        Some(&json!({"checks": [
            {"policies": ["p"], "key": "a"},
            {"policies": ["p"], "key": "a"},
            {"policies": ["missing"], "key": "a"},
            {"policies": ["p"], "key": "b", "cost": 1}
        ]})),
    )
    .await;
    assert_eq!(r.status, 200);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results[0]["allowed"], true);
    assert_eq!(results[1]["allowed"], false);
    assert_eq!(results[2]["status"], 404);
    assert_eq!(results[3]["allowed"], true);
    problem(
        &fixture::oneshot(
            &app.router,
            "POST",
            "/v1/ratelimit/check/batch",
            Some(&json!({"checks": []})),
        )
        .await,
        400,
    );
}

#[tokio::test]
async fn peek_and_reset() {
    let app = app().await;
    app.put_policy(
        "p",
        json!({"algorithm": "token_bucket", "limit": 3, "window_ms": 60000}),
    )
    .await;
    let key = "user:42:endpoint:/search";
    app.check(&["p"], key, 2).await;
    let path = "/v1/ratelimit/p/user:42:endpoint:%2Fsearch";
    for _ in 0..3 {
        let r = fixture::oneshot(&app.router, "GET", path, None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["remaining"], 1);
    }
    assert_eq!(
        fixture::oneshot(&app.router, "DELETE", path, None)
            .await
            .status,
        204
    );
    assert_eq!(
        fixture::oneshot(&app.router, "GET", path, None).await.body["remaining"],
        3
    );
    problem(
        &fixture::oneshot(&app.router, "GET", "/v1/ratelimit/nope/k", None).await,
        404,
    );
}

#[tokio::test]
async fn config_policies_apply() {
    let app = app().await;
    assert_eq!(app.check(&["fromconfig"], "k", 1).await.status, 200);
    assert_eq!(app.check(&["fromconfig"], "k", 1).await.status, 200);
    assert_eq!(app.check(&["fromconfig"], "k", 1).await.status, 429);
}

#[tokio::test]
async fn the_tower_layer_limits_a_route_and_sets_headers() {
    let storage = fixture::embedded(&[mortar_ratelimit::service::migrations()]).await;
    let config: RateLimitConfig = toml::from_str(
        "[policies.per-user]\nalgorithm = \"sliding_log\"\nlimit = 2\nwindow_ms = 60000\n",
    )
    .unwrap();
    let svc = RateLimitService::start(&storage, &config, Arc::new(ManualClock::at(5_000_000)))
        .await
        .unwrap();
    let layer = mortar_ratelimit::layer::RateLimitLayer::new(
        svc.clone(),
        &["per-user"],
        |req: &axum::extract::Request| {
            req.headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        },
    )
    .unwrap();
    let app = Router::new()
        .route("/search", axum::routing::get(|| async { "results" }))
        .layer(layer);
    let call = |user: Option<&str>| {
        let mut req = Request::get("/search");
        if let Some(u) = user {
            req = req.header("x-user", u);
        }
        fixture::send(&app, req.body(Body::empty()).unwrap())
    };
    let r = call(Some("ann")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-ratelimit-remaining"], "1");
    call(Some("ann")).await;
    let r = call(Some("ann")).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(r.headers["retry-after"], "60");
    assert_eq!(call(Some("bob")).await.status, 200, "keys are independent");
    assert_eq!(call(None).await.status, 200, "no key, no limit");
    assert!(
        mortar_ratelimit::layer::RateLimitLayer::new(
            svc,
            &["missing"],
            |_: &axum::extract::Request| None
        )
        .is_err()
    );
}
