//! The HTTP surface through the router (no sockets): problems for every kind of bad input,
//! auth, request ids and trace context, readiness, metrics, OpenAPI.

use axum::Router;
use axum::body::Body;
use http::{Request, header};
use mortar_server::config::Config;
use mortar_testkit::fixture::{self, Reply};

const ADMIN: &str = "admin-token-0123456789";

struct TestApp {
    router: Router,
    _dir: tempfile::TempDir,
}

async fn app_with(f: impl FnOnce(&mut Config)) -> TestApp {
    mortar_core::metrics::install();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    f(&mut config);
    let app = mortar_server::app::build(&config).await.unwrap();
    TestApp {
        router: app.router,
        _dir: dir,
    }
}

async fn open_app() -> TestApp {
    app_with(|_| {}).await
}

async fn secured_app() -> TestApp {
    app_with(|c| c.auth.admin_token = Some(ADMIN.into())).await
}

impl TestApp {
    async fn get(&self, uri: &str, token: Option<&str>) -> Reply {
        let mut req = Request::get(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        fixture::send(&self.router, req.body(Body::empty()).unwrap()).await
    }

    async fn post_json(&self, uri: &str, body: &str, token: Option<&str>) -> Reply {
        let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        fixture::send(&self.router, req.body(Body::from(body.to_owned())).unwrap()).await
    }
}

fn assert_problem(r: &Reply, status: u16) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(r.body["status"], status);
    for member in ["type", "title", "detail"] {
        assert!(
            r.body[member].is_string(),
            "problem lacks {member}: {}",
            r.body
        );
    }
}

#[tokio::test]
async fn unknown_route_is_a_404_problem() {
    let app = open_app().await;
    let r = app.get("/no/such/route", None).await;
    assert_problem(&r, 404);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("GET /no/such/route")
    );
}

#[tokio::test]
async fn wrong_method_is_a_405_problem_with_allow() {
    let app = open_app().await;
    let r = fixture::send(
        &app.router,
        Request::delete("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_problem(&r, 405);
    assert!(r.headers[header::ALLOW].to_str().unwrap().contains("GET"));
}

#[tokio::test]
async fn oversized_bodies_are_413_problems() {
    let app = app_with(|c| c.http.max_body_bytes = 64).await;
    let big = format!(r#"{{"name":"{}","scopes":["*:read"]}}"#, "x".repeat(100));
    let r = app.post_json("/v1/keys", &big, None).await;
    assert_problem(&r, 413);
    // Without Content-Length (chunked), the limit still holds.
    let chunks = vec![Ok::<_, std::io::Error>(bytes::Bytes::from(big.clone()))];
    let req = Request::post("/v1/keys")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    assert_problem(&fixture::send(&app.router, req).await, 413);
}

#[tokio::test]
async fn wrong_content_type_is_a_415_problem() {
    let app = open_app().await;
    let req = Request::post("/v1/keys")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"name":"a","scopes":["*:read"]}"#))
        .unwrap();
    assert_problem(&fixture::send(&app.router, req).await, 415);
    let req = Request::post("/v1/keys").body(Body::from("{}")).unwrap();
    assert_problem(&fixture::send(&app.router, req).await, 415);
}

#[tokio::test]
async fn malformed_json_names_line_and_column() {
    let app = open_app().await;
    let r = app
        .post_json("/v1/keys", "{\n\"name\": \"a\",\n\"scopes\": [\n}", None)
        .await;
    assert_problem(&r, 400);
    assert_eq!(r.body["line"], 4);
    assert_eq!(r.body["column"], 1);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("line 4 column 1")
    );
}

#[tokio::test]
async fn wrong_types_missing_and_unknown_fields_name_the_field() {
    let app = open_app().await;
    let cases = [
        (
            r#"{"name": 5, "scopes": ["*:read"]}"#,
            "name",
            "invalid type",
        ),
        (
            r#"{"name": "a", "scopes": "*:read"}"#,
            "scopes",
            "invalid type",
        ),
        (
            r#"{"name": "a", "scopes": ["*:read", 7]}"#,
            "scopes[1]",
            "invalid type",
        ),
        (r#"{"name": "a"}"#, "body", "missing field `scopes`"),
        (
            r#"{"name": "a", "scopes": [], "colour": 1}"#,
            "colour",
            "unknown field",
        ),
        (r#""text""#, "body", "invalid type"),
    ];
    for (body, field, message) in cases {
        let r = app.post_json("/v1/keys", body, None).await;
        assert_problem(&r, 400);
        assert_eq!(r.body["errors"][0]["field"], field, "{body} → {}", r.body);
        assert!(
            r.body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{body} → {}",
            r.body
        );
    }
}

#[tokio::test]
async fn validation_failures_are_422_with_every_field() {
    let app = open_app().await;
    let r = app
        .post_json(
            "/v1/keys",
            r#"{"name": "", "scopes": ["jobs:admin", "x"]}"#,
            None,
        )
        .await;
    assert_problem(&r, 422);
    let fields: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "scopes[0]", "scopes[1]"]);
}

#[tokio::test]
async fn bad_query_and_path_parameters_are_problems() {
    let app = open_app().await;
    let r = app.get("/v1/keys?limit=ten", None).await;
    assert_problem(&r, 400);
    assert_eq!(r.body["errors"][0]["field"], "limit");
    assert_problem(&app.get("/v1/keys?limit=0", None).await, 422);
    assert_problem(&app.get("/v1/keys?colour=red", None).await, 400);
    assert_problem(
        &app.get("/v1/keys/01aaaaaaaaaaaaaaaaaaaaaaaa", None).await,
        404,
    );
    assert_problem(&app.get("/debug/pprof/profile?seconds=0", None).await, 422);
}

#[tokio::test]
async fn keys_lifecycle_and_scopes() {
    let app = secured_app().await;
    let created = app
        .post_json(
            "/v1/keys",
            r#"{"name":"reader","scopes":["jobs:read"]}"#,
            Some(ADMIN),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    let id = created.body["id"].as_str().unwrap().to_owned();

    // Listing never shows secrets.
    let list = app.get("/v1/keys", Some(ADMIN)).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["items"][0]["id"], id.as_str());
    assert!(!list.text.contains(&secret));
    assert!(list.body["items"][0].get("secret").is_none());

    // The key reads its block, cannot write it, cannot touch others or admin routes.
    assert_eq!(
        app.get("/v1/jobs/anything", Some(&secret)).await.status,
        404,
        "passes auth, no such route"
    );
    assert_problem(&app.post_json("/v1/jobs", "{}", Some(&secret)).await, 403);
    assert_problem(&app.get("/v1/cache/x/y", Some(&secret)).await, 403);
    assert_problem(&app.get("/v1/keys", Some(&secret)).await, 403);
    assert_problem(
        &app.get("/debug/pprof/profile?seconds=1", Some(&secret))
            .await,
        403,
    );
    assert_eq!(app.get("/v1/status", Some(&secret)).await.status, 200);

    let revoked = fixture::send(
        &app.router,
        Request::delete(format!("/v1/keys/{id}"))
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(revoked.status, 200);
    assert!(revoked.body["revoked_at"].is_string());
    assert_problem(&app.get("/v1/status", Some(&secret)).await, 401);
}

/// Through the real auth layer: a lock's force-release (`DELETE /v1/locks/{name}`) passes the
/// path rule with `locks:write` and then needs `locks:secrets` (or the admin token), which also
/// shows lease ids in lock status.
#[tokio::test]
async fn lock_force_release_and_lease_ids_need_lock_secrets() {
    let app = secured_app().await;
    let key = |scopes: &'static str| {
        let app = &app;
        async move {
            let body = format!(r#"{{"name":"k","scopes":{scopes}}}"#);
            let r = app.post_json("/v1/keys", &body, Some(ADMIN)).await;
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["secret"].as_str().unwrap().to_owned()
        }
    };
    let writer = key(r#"["locks:write"]"#).await;
    let secrets = key(r#"["locks:secrets"]"#).await;
    let operator = key(r#"["locks:write","locks:secrets"]"#).await;
    let acquired = app
        .post_json(
            "/v1/locks/deploy/acquire",
            r#"{"ttl_ms":60000,"owner":"ci"}"#,
            Some(&writer),
        )
        .await;
    assert_eq!(acquired.status, 200, "{}", acquired.body);
    let lease = acquired.body["lease_id"].as_str().unwrap();
    let delete = |token: &str| {
        let req = Request::delete("/v1/locks/deploy?reason=ops")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        fixture::send(&app.router, req)
    };

    let shown = |r: &Reply| r.body["holders"][0].get("lease_id").cloned();
    assert_eq!(
        shown(&app.get("/v1/locks/deploy", Some(&writer)).await),
        None
    );
    assert_eq!(
        shown(&app.get("/v1/locks/deploy", Some(&secrets)).await),
        Some(lease.into())
    );
    assert_eq!(
        shown(&app.get("/v1/locks/deploy", Some(ADMIN)).await),
        Some(lease.into())
    );

    let r = delete(&writer).await;
    assert_problem(&r, 403);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("`locks:secrets`"),
        "{}",
        r.body
    );
    let r = delete(&secrets).await;
    assert_problem(&r, 403);
    assert!(
        r.body["detail"].as_str().unwrap().contains("`locks:write`"),
        "{}",
        r.body
    );
    let r = delete(&operator).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["released"][0]["lease_id"], lease);
    assert_problem(&delete(ADMIN).await, 404);
}

#[tokio::test]
async fn missing_invalid_and_malformed_tokens_are_401() {
    let app = secured_app().await;
    let r = app.get("/v1/status", None).await;
    assert_problem(&r, 401);
    assert_eq!(r.headers[header::WWW_AUTHENTICATE], "Bearer");
    assert_problem(
        &app.get("/v1/status", Some("wrong-token-wrong-token")).await,
        401,
    );
    assert_problem(
        &app.get("/v1/status", Some("mk_01aaaaaaaaaaaaaaaaaaaaaaaa_00"))
            .await,
        401,
    );
    let basic = Request::get("/v1/status")
        .header(header::AUTHORIZATION, "Basic YTpi")
        .body(Body::empty())
        .unwrap();
    assert_problem(&fixture::send(&app.router, basic).await, 401);
    // Public routes stay public.
    assert_eq!(app.get("/healthz", None).await.status, 200);
    assert_eq!(app.get("/metrics", None).await.status, 200);
    assert_eq!(app.get("/openapi.json", None).await.status, 200);
    assert_eq!(app.get("/v1/status", Some(ADMIN)).await.status, 200);
}

#[tokio::test]
async fn request_ids_and_trace_context() {
    let app = open_app().await;
    let r = app.get("/healthz", None).await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 26);
    let tp = r.headers["traceparent"].to_str().unwrap();
    assert_eq!(tp.len(), 55);

    let req = Request::get("/healthz")
        .header("x-request-id", "caller-chosen-id")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Body::empty())
        .unwrap();
    let r = fixture::send(&app.router, req).await;
    assert_eq!(r.headers["x-request-id"], "caller-chosen-id");
    let tp = r.headers["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "our span id, not the caller's"
    );
}

#[tokio::test]
async fn readiness_and_status_report_the_embedded_backend() {
    let app = open_app().await;
    let r = app.get("/readyz", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["backends"][0]["name"], "sqlite");
    let s = app.get("/v1/status", None).await;
    assert_eq!(s.body["mode"], "embedded");
    assert_eq!(s.body["version"], env!("CARGO_PKG_VERSION"));
    assert!(s.body["started_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn metrics_use_route_templates() {
    let app = open_app().await;
    app.get("/v1/keys/01aaaaaaaaaaaaaaaaaaaaaaaa", None).await;
    app.get("/definitely/unknown/12345", None).await;
    let m = app.get("/metrics", None).await.text;
    assert!(
        m.contains(
            r#"mortar_http_requests_total{route="/v1/keys/{id}",method="GET",status="404"}"#
        ),
        "{m}"
    );
    assert!(m.contains(r#"route="unmatched""#));
    assert!(!m.contains("12345"), "raw paths must not become labels");
    assert!(m.contains("mortar_http_request_duration_seconds_bucket"));
    assert!(m.contains("process_resident_memory_bytes"));
}

#[tokio::test]
async fn openapi_covers_every_route() {
    let app = open_app().await;
    let doc = app.get("/openapi.json", None).await.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut paths: Vec<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/debug/pprof/profile",
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "/v1/cache/stats",
            "/v1/cache/{namespace}/mget",
            "/v1/cache/{namespace}/{key}",
            "/v1/config",
            "/v1/config/{ns}",
            "/v1/config/{ns}/schema",
            "/v1/config/{ns}/{env}",
            "/v1/config/{ns}/{env}/history",
            "/v1/config/{ns}/{env}/rollback",
            "/v1/config/{ns}/{env}/watch",
            "/v1/config/{ns}/{env}/{key}",
            "/v1/cron/events",
            "/v1/cron/preview",
            "/v1/cron/schedules",
            "/v1/cron/schedules/{id}",
            "/v1/cron/schedules/{id}/backfill",
            "/v1/cron/schedules/{id}/pause",
            "/v1/cron/schedules/{id}/resume",
            "/v1/cron/schedules/{id}/runs",
            "/v1/cron/schedules/{id}/trigger",
            "/v1/jobs",
            "/v1/jobs/batch",
            "/v1/jobs/bulk/discard",
            "/v1/jobs/bulk/retry",
            "/v1/jobs/complete",
            "/v1/jobs/events",
            "/v1/jobs/lease",
            "/v1/jobs/queues",
            "/v1/jobs/queues/{queue}",
            "/v1/jobs/queues/{queue}/pause",
            "/v1/jobs/queues/{queue}/resume",
            "/v1/jobs/{id}",
            "/v1/jobs/{id}/cancel",
            "/v1/jobs/{id}/complete",
            "/v1/jobs/{id}/fail",
            "/v1/jobs/{id}/heartbeat",
            "/v1/jobs/{id}/release",
            "/v1/jobs/{id}/retry",
            "/v1/keys",
            "/v1/keys/{id}",
            "/v1/locks",
            "/v1/locks/{name}",
            "/v1/locks/{name}/acquire",
            "/v1/locks/{name}/release",
            "/v1/locks/{name}/renew",
            "/v1/ratelimit/check",
            "/v1/ratelimit/check/batch",
            "/v1/ratelimit/policies",
            "/v1/ratelimit/policies/{name}",
            "/v1/ratelimit/{policy}/{key}",
            "/v1/resilience/breakers",
            "/v1/resilience/breakers/{name}",
            "/v1/resilience/breakers/{name}/acquire",
            "/v1/resilience/breakers/{name}/disable",
            "/v1/resilience/breakers/{name}/force_close",
            "/v1/resilience/breakers/{name}/force_open",
            "/v1/resilience/breakers/{name}/record",
            "/v1/resilience/breakers/{name}/reset",
            "/v1/resilience/bulkheads",
            "/v1/status"
        ]
    );
    // Every documented path is routed (none falls through to the 404 fallback).
    for path in paths {
        let concrete = path
            .replace("{id}", "01aaaaaaaaaaaaaaaaaaaaaaaa")
            .replace("{name}", "p")
            .replace("{policy}", "p")
            .replace("{key}", "k")
            .replace("{namespace}", "ns")
            .replace("{queue}", "q");
        let r = fixture::send(
            &app.router,
            Request::options(concrete.as_str())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 405, "{path} is documented but not routed");
    }
}

#[tokio::test]
async fn profile_is_pprof_protobuf() {
    let app = open_app().await;
    let r = app.get("/debug/pprof/profile?seconds=1", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers[header::CONTENT_TYPE], "application/octet-stream");
    // A profile.proto message starts with field 1 (sample_type, length-delimited): tag 0x0a.
    assert_eq!(
        r.text.as_bytes().first(),
        Some(&0x0a),
        "not a pprof protobuf"
    );
}

#[tokio::test]
async fn a_panicking_handler_becomes_a_500_problem() {
    use std::sync::Arc;
    let storage = fixture::embedded(&[]).await;
    let keys = mortar_core::auth::KeyStore::new(
        storage.durable.clone(),
        Arc::new(mortar_core::clock::SystemClock),
    );
    let auth = Arc::new(mortar_core::auth::Auth::new(None, keys));
    let router = Router::new().route("/boom", axum::routing::get(boom));
    let router = mortar_core::http::finish(router, 1024, auth);
    let Reply { status, body, .. } = fixture::oneshot(&router, "GET", "/boom", None).await;
    assert_eq!(status, 500);
    assert_eq!(body["status"], 500);
    assert!(
        !body.to_string().contains("kaboom"),
        "internals never reach the caller"
    );
}

async fn boom() -> &'static str {
    panic!("kaboom")
}
