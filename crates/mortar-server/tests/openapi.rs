//! The OpenAPI contract: `/openapi.json`, built in-process through the router, says what the
//! server does. Every path parameter declared (and nothing else in the path), query parameters
//! in the query and never nullable, every error a problem (`application/problem+json`), the
//! shared layers' answers (400, 401/403, 413, 415, 503) on every operation that can give them,
//! page sizes bounded as enforced, nullable fields nullable, and every status the router
//! answers to a handful of hostile requests, sent to every operation, documented.
//!
//! `scripts/schemathesis.sh` fuzzes the running server against the same document.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use mortar_server::config::Config;
use mortar_testkit::fixture;
use serde_json::Value;

const ADMIN: &str = "admin-token-0123456789";
const PROBLEM_JSON: &str = "application/problem+json";
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

struct TestApp {
    router: Router,
    _dir: tempfile::TempDir,
}

async fn app() -> TestApp {
    mortar_core::metrics::install();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.auth.admin_token = Some(ADMIN.into());
    let app = mortar_server::app::build(&config).await.unwrap();
    TestApp {
        router: app.router,
        _dir: dir,
    }
}

impl TestApp {
    async fn doc(&self) -> Value {
        let reply = fixture::oneshot(&self.router, "GET", "/openapi.json", None).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.body
    }
}

/// Every operation of the document: (method, path template, operation).
fn operations(doc: &Value) -> Vec<(&'static str, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((method, path.clone(), op.clone()));
            }
        }
    }
    assert!(out.len() > 60, "only {} operations", out.len());
    out
}

fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

fn params_in<'a>(op: &'a Value, place: &str) -> Vec<&'a Value> {
    op["parameters"]
        .as_array()
        .map(|ps| ps.iter().filter(|p| p["in"] == place).collect())
        .unwrap_or_default()
}

/// Follows a `$ref` into `components.schemas`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            let target = &doc["components"]["schemas"][name];
            assert!(!target.is_null(), "dangling $ref {r}");
            resolve(doc, target)
        }
        None => schema,
    }
}

fn is_protected(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/debug/")
}

fn label(method: &str, path: &str) -> String {
    format!("{} {path}", method.to_uppercase())
}

#[tokio::test]
async fn path_parameters_are_the_template_and_nothing_else() {
    let app = app().await;
    let doc = app.doc().await;
    let mut problems = Vec::new();
    for (method, path, op) in operations(&doc) {
        let declared: BTreeSet<String> = params_in(&op, "path")
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        let wanted = template_params(&path);
        if declared != wanted {
            problems.push(format!(
                "{}: path parameters {declared:?}, template {wanted:?}",
                label(method, &path)
            ));
        }
        for p in params_in(&op, "path") {
            if p["required"] != true {
                problems.push(format!(
                    "{}: `{}` not required",
                    label(method, &path),
                    p["name"]
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            if !seen.insert((p["name"].to_string(), p["in"].to_string())) {
                problems.push(format!("{}: `{}` twice", label(method, &path), p["name"]));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test]
async fn query_parameters_are_optional_unless_needed_and_never_null() {
    let app = app().await;
    let doc = app.doc().await;
    let mut problems = Vec::new();
    let mut queries = 0;
    for (method, path, op) in operations(&doc) {
        for p in params_in(&op, "query") {
            queries += 1;
            let name = p["name"].as_str().unwrap();
            let schema = resolve(&doc, &p["schema"]);
            let types: Vec<&str> = match &schema["type"] {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if types.contains(&"null") {
                problems.push(format!("{}: `{name}` nullable", label(method, &path)));
            }
            // `/v1/cron/preview?expr=` is the one query parameter an operation cannot do without.
            let needed = (path.as_str(), name) == ("/v1/cron/preview", "expr");
            if p["required"] != needed {
                problems.push(format!(
                    "{}: `{name}` required: {}",
                    label(method, &path),
                    p["required"]
                ));
            }
        }
    }
    assert!(queries >= 15, "only {queries} query parameters");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[tokio::test]
async fn page_sizes_are_bounded_as_enforced() {
    let app = app().await;
    let doc = app.doc().await;
    let mut lists = 0;
    for (method, path, op) in operations(&doc) {
        for p in params_in(&op, "query") {
            if p["name"] != "limit" {
                continue;
            }
            lists += 1;
            let schema = resolve(&doc, &p["schema"]);
            assert_eq!(schema["minimum"], 1, "{}", label(method, &path));
            assert_eq!(schema["maximum"], 1000, "{}", label(method, &path));
            // What the schema allows is accepted, and what it does not is refused.
            // Every path parameter a valid name (the resource may not exist: 404 is fine).
            let mut base = path
                .replace("{id}", "nightly")
                .replace("{ns}", "app")
                .replace("{env}", "base")
                + "?";
            if op["responses"]["200"]["content"]
                .get("text/event-stream")
                .is_some()
            {
                base.push_str("wait_ms=0&"); // a watch: its long-poll form takes `limit`
            }
            for (limit, ok) in [("1", true), ("1000", true), ("0", false), ("1001", false)] {
                let reply =
                    fixture::send(&app.router, get_as_admin(&format!("{base}limit={limit}"))).await;
                let accepted = reply.status.is_success() || reply.status == StatusCode::NOT_FOUND;
                assert_eq!(
                    accepted,
                    ok,
                    "{} limit={limit}: {}",
                    label(method, &path),
                    reply.status
                );
            }
        }
    }
    assert_eq!(
        lists, 10,
        "jobs, cron schedules and runs, locks, keys, jobs and cron events, config namespaces, history and watch"
    );
}

fn get_as_admin(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn every_error_is_a_documented_problem() {
    let app = app().await;
    let doc = app.doc().await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let l = label(method, &path);
        if !ids.insert(op["operationId"].to_string()) {
            problems.push(format!("{l}: operationId {} twice", op["operationId"]));
        }
        let responses = op["responses"].as_object().unwrap();
        if !responses.keys().any(|s| s.starts_with('2')) {
            problems.push(format!("{l}: no success response"));
        }
        for (status, res) in responses {
            if res["description"].as_str().unwrap_or_default().is_empty() {
                problems.push(format!("{l} {status}: no description"));
            }
            if status.as_str() < "400" {
                continue;
            }
            let content = res["content"].as_object();
            let types: Vec<&String> = content.map(|c| c.keys().collect()).unwrap_or_default();
            if types != [PROBLEM_JSON] {
                problems.push(format!("{l} {status}: content {types:?}"));
                continue;
            }
            if res["content"][PROBLEM_JSON]["schema"]["$ref"] != "#/components/schemas/Problem" {
                problems.push(format!("{l} {status}: not the Problem schema"));
            }
        }
        // What the shared layers answer, wherever they can.
        let has = |s: &str| responses.contains_key(s);
        let takes_input = !params_in(&op, "path").is_empty() || !params_in(&op, "query").is_empty();
        let body = op.get("requestBody");
        let json_body = body.is_some_and(|b| b["content"].get("application/json").is_some());
        if (takes_input || json_body) && !has("400") {
            problems.push(format!("{l}: no 400 for bad input"));
        }
        if body.is_some() && !has("413") {
            problems.push(format!("{l}: no 413 for a body over the limit"));
        }
        if json_body && !has("415") {
            problems.push(format!("{l}: no 415 for a body that is not JSON"));
        }
        if is_protected(&path) {
            if op["security"] != serde_json::json!([{ "bearer": [] }]) {
                problems.push(format!("{l}: security {}", op["security"]));
            }
            for s in ["401", "503"] {
                if !has(s) {
                    problems.push(format!("{l}: no {s}"));
                }
            }
            if path != "/v1/status" && !has("403") {
                problems.push(format!("{l}: no 403 for a key without the scope"));
            }
        } else if !op["security"].is_null() {
            problems.push(format!("{l}: a public route with security"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let schemes = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(schemes["scheme"], "bearer");
}

#[tokio::test]
async fn the_codes_the_issue_found_missing_are_documented() {
    let app = app().await;
    let doc = app.doc().await;
    let responses = |method: &str, path: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}"))
            .keys()
            .cloned()
            .collect()
    };
    for path in ["/v1/locks/{name}/renew", "/v1/locks/{name}/release"] {
        assert!(responses("post", path).contains("410"), "{path}");
    }
    assert!(responses("post", "/v1/jobs").contains("415"));
    for (method, path) in [
        ("get", "/v1/jobs"),
        ("get", "/v1/locks"),
        ("get", "/v1/keys"),
        ("post", "/v1/keys"),
        ("put", "/v1/cache/{namespace}/{key}"),
        ("post", "/v1/cron/schedules"),
    ] {
        assert!(responses(method, path).contains("422"), "{method} {path}");
    }
    assert!(responses("post", "/v1/ratelimit/check").contains("429"));
}

#[tokio::test]
async fn nullable_fields_are_nullable_and_states_are_their_blocks() {
    let app = app().await;
    let doc = app.doc().await;
    let schemas = &doc["components"]["schemas"];
    let allows_null = |schema: &Value| -> bool {
        let schema = resolve(&doc, schema);
        match &schema["type"] {
            Value::Null => schema
                .get("oneOf")
                .is_none_or(|alts| alts.as_array().unwrap().iter().any(|a| a["type"] == "null")),
            Value::String(t) => t == "null",
            Value::Array(ts) => ts.iter().any(|t| t == "null"),
            _ => false,
        }
    };
    // A job enqueued without a payload answers `"payload": null`; results are any JSON.
    assert!(allows_null(&schemas["JobView"]["properties"]["payload"]));
    assert!(allows_null(&schemas["JobView"]["properties"]["result"]));
    assert!(allows_null(
        &schemas["CompleteBody"]["properties"]["result"]
    ));
    let enqueued = fixture::send(
        &app.router,
        Request::post("/v1/jobs")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"queue":"q","kind":"k"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(enqueued.status, StatusCode::CREATED);
    assert!(enqueued.body["payload"].is_null());

    // Each block's state is its own schema (they share a Rust name, not a document name).
    let states = |schema: &str, field: &str| -> Vec<String> {
        resolve(&doc, &schemas[schema]["properties"][field])["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{schema}.{field} is not an enum"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(states("JobView", "state").contains(&"available".to_owned()));
    assert_eq!(states("JobView", "state"), states("JobRef", "state"));
    assert!(states("BreakerView", "state").contains(&"half_open".to_owned()));
    assert_eq!(
        enqueued.body["state"], "available",
        "the state the schema names"
    );
}

/// A concrete path for a template: every parameter a plain segment.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn hostile_requests_get_documented_problems() {
    let app = app().await;
    let doc = app.doc().await;
    let mut problems = Vec::new();
    let mut tried = BTreeMap::<String, u32>::new();
    for (method, path, op) in operations(&doc) {
        let l = label(method, &path);
        let documented: BTreeSet<u16> = op["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut uri = concrete(&path);
        if path == "/debug/pprof/profile" {
            uri.push_str("?seconds=0"); // never sample for real here
        }
        if op["responses"]["200"]["content"]
            .get("text/event-stream")
            .is_some()
        {
            uri.push_str("?wait_ms=0"); // a stream never ends: its long-poll form does
        }
        let json_body = op
            .get("requestBody")
            .is_some_and(|b| b["content"].get("application/json").is_some());
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut requests: Vec<(&str, Request<Body>)> = Vec::new();
        let admin = || {
            Request::builder()
                .method(m.clone())
                .uri(&uri)
                .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
        };
        if is_protected(&path) {
            requests.push((
                "no token",
                Request::builder()
                    .method(m.clone())
                    .uri(&uri)
                    .body(Body::empty())
                    .unwrap(),
            ));
            requests.push((
                "unknown token",
                Request::builder()
                    .method(m.clone())
                    .uri(&uri)
                    .header(header::AUTHORIZATION, "Bearer nope")
                    .body(Body::empty())
                    .unwrap(),
            ));
        }
        requests.push(("no body", admin().body(Body::empty()).unwrap()));
        if json_body {
            requests.push((
                "text body",
                admin()
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Body::from("hello"))
                    .unwrap(),
            ));
            for (what, body) in [
                ("malformed JSON", "{"),
                ("empty object", "{}"),
                (
                    "wrong types",
                    r#"{"queues": 1, "ttl_ms": "x", "items": {}}"#,
                ),
                ("unknown field", r#"{"surely_not_a_field": true}"#),
            ] {
                requests.push((
                    what,
                    admin()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(body))
                        .unwrap(),
                ));
            }
        }
        if !params_in(&op, "query").is_empty() {
            let sep = if uri.contains('?') { '&' } else { '?' };
            for query in ["limit=abc", "surely_not_a_parameter=1"] {
                let req = Request::builder()
                    .method(m.clone())
                    .uri(format!("{uri}{sep}{query}"))
                    .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
                    .body(Body::empty())
                    .unwrap();
                requests.push(("bad query", req));
            }
        }
        for (what, req) in requests {
            let reply = fixture::send(&app.router, req).await;
            *tried.entry(what.to_owned()).or_default() += 1;
            let status = reply.status.as_u16();
            if !documented.contains(&status) {
                problems.push(format!("{l} ({what}): {status} is not documented"));
            }
            let content_type = reply.header("content-type");
            if status >= 400 && content_type != PROBLEM_JSON {
                problems.push(format!("{l} ({what}): {status} as `{content_type}`"));
            }
            if status >= 500 {
                problems.push(format!("{l} ({what}): {status} {}", reply.body));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(
        tried["no token"] > 55 && tried["malformed JSON"] > 20,
        "{tried:?}"
    );
}
