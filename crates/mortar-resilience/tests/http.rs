//! The resilience API through the router, and the tower layers on a real axum router.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use http::{StatusCode, header};
use mortar_resilience::layer::{BreakerLayer, BulkheadLayer, TimeoutLayer};
use mortar_resilience::{
    BreakerConfig, Bulkhead, BulkheadConfig, ResilienceConfig, ResilienceService,
};
use mortar_testkit::fixture::{Reply, oneshot};

fn api(svc: Arc<ResilienceService>) -> Router {
    let (router, _) = utoipa_axum::router::OpenApiRouter::new()
        .merge(mortar_resilience::api::router(svc))
        .split_for_parts();
    router
}

#[tokio::test]
async fn configured_breakers_are_listed_and_can_be_steered() {
    let cfg: ResilienceConfig = toml::from_str(
        "[breakers.payments]\nwindow = \"time\"\nwindow_ms = 10000\nminimum_calls = 5\n[bulkheads.db]\nmax_permits = 4\n",
    )
    .unwrap();
    let svc = ResilienceService::new(&cfg).unwrap();
    let router = api(svc.clone());
    let Reply { status, body, .. } = oneshot(&router, "GET", "/v1/resilience/breakers", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["items"][0]["name"], "payments");
    assert_eq!(body["items"][0]["state"], "closed");
    assert_eq!(body["items"][0]["config"]["window"], "time");

    let b = oneshot(
        &router,
        "POST",
        "/v1/resilience/breakers/payments/force_open",
        None,
    )
    .await
    .body;
    assert_eq!(b["state"], "forced_open");
    assert_eq!(b["last_transition"]["from"], "closed");
    assert!(b["last_transition"]["at"].as_str().unwrap().ends_with('Z'));
    assert!(svc.breaker("payments").try_acquire().is_err());
    let b = oneshot(
        &router,
        "POST",
        "/v1/resilience/breakers/payments/disable",
        None,
    )
    .await
    .body;
    assert_eq!(b["state"], "disabled");
    let b = oneshot(
        &router,
        "POST",
        "/v1/resilience/breakers/payments/force_close",
        None,
    )
    .await
    .body;
    assert_eq!(b["state"], "closed");
    let b = oneshot(
        &router,
        "POST",
        "/v1/resilience/breakers/payments/reset",
        None,
    )
    .await
    .body;
    assert_eq!(b["state"], "closed");

    let status = oneshot(&router, "GET", "/v1/resilience/breakers/nope", None)
        .await
        .status;
    assert_eq!(status, 404);
    let b = oneshot(&router, "GET", "/v1/resilience/bulkheads", None)
        .await
        .body;
    assert_eq!(b["items"][0]["name"], "db");
    assert_eq!(b["items"][0]["config"]["max_permits"], 4);
}

#[test]
fn bad_config_names_the_key() {
    let cfg: ResilienceConfig =
        toml::from_str("[breakers.x]\nfailure_rate_threshold = 0\n").unwrap();
    let err = cfg.validate().unwrap_err().to_string();
    assert!(
        err.contains("resilience.breakers.x.failure_rate_threshold"),
        "{err}"
    );
    let cfg: ResilienceConfig =
        toml::from_str("[retries.r]\nbase_ms = 100\nmax_ms = 10\n").unwrap();
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("resilience.retries.r.max_ms")
    );
    assert!(toml::from_str::<ResilienceConfig>("[breakers.x]\nwindw = \"count\"\n").is_err());
}

#[tokio::test]
async fn the_breaker_layer_opens_on_5xx_but_never_on_4xx() {
    let breaker = mortar_resilience::Breaker::new(
        "upstream",
        BreakerConfig {
            minimum_calls: 3,
            wait_open_ms: 60_000,
            ..BreakerConfig::default()
        },
    );
    let app = Router::new()
        .route("/bad-request", get(|| async { StatusCode::BAD_REQUEST }))
        .route("/fail", get(|| async { StatusCode::BAD_GATEWAY }))
        .layer(BreakerLayer::new(breaker.clone()));
    for _ in 0..10 {
        assert_eq!(oneshot(&app, "GET", "/bad-request", None).await.status, 400);
    }
    assert_eq!(
        breaker.state(),
        mortar_resilience::State::Closed,
        "4xx are the caller's fault"
    );
    // 10 successes in the window: the 10th failure makes 50% and opens it.
    for _ in 0..10 {
        assert_eq!(oneshot(&app, "GET", "/fail", None).await.status, 502);
    }
    let Reply {
        status,
        headers,
        body,
        ..
    } = oneshot(&app, "GET", "/fail", None).await;
    assert_eq!(status, 503);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(body["breaker"], "upstream");
    assert_eq!(headers[header::RETRY_AFTER], "60");

    // A custom predicate: 429 from an overloaded dependency counts too.
    let strict = mortar_resilience::Breaker::new(
        "strict",
        BreakerConfig {
            minimum_calls: 2,
            ..BreakerConfig::default()
        },
    );
    let app = Router::new()
        .route("/busy", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .layer(
            BreakerLayer::new(strict.clone())
                .with_classifier(|r| r.status() == StatusCode::TOO_MANY_REQUESTS),
        );
    oneshot(&app, "GET", "/busy", None).await;
    oneshot(&app, "GET", "/busy", None).await;
    assert_eq!(strict.state(), mortar_resilience::State::Open);
}

#[tokio::test]
async fn the_bulkhead_layer_rejects_when_full_and_the_timeout_layer_answers_504() {
    let bulkhead = Arc::new(Bulkhead::new(
        "one",
        BulkheadConfig {
            max_permits: 1,
            max_queue: 0,
            queue_timeout_ms: 10,
        },
    ));
    let gate = Arc::new(tokio::sync::Notify::new());
    let app = Router::new()
        .route(
            "/slow",
            post({
                let gate = gate.clone();
                move || async move {
                    gate.notified().await;
                    "done"
                }
            }),
        )
        .layer(BulkheadLayer::new(bulkhead.clone()));
    let first = tokio::spawn({
        let app = app.clone();
        async move { oneshot(&app, "POST", "/slow", None).await.status }
    });
    while bulkhead.in_use() == 0 {
        tokio::task::yield_now().await;
    }
    let Reply {
        status,
        headers,
        body,
        ..
    } = oneshot(&app, "POST", "/slow", None).await;
    assert_eq!(status, 503);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(body["bulkhead"], "one");
    gate.notify_one();
    assert_eq!(first.await.unwrap(), 200);

    let app = Router::new()
        .route(
            "/hang",
            get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }),
        )
        .layer(TimeoutLayer::new(Duration::from_millis(20)));
    let Reply { status, body, .. } = oneshot(&app, "GET", "/hang", None).await;
    assert_eq!(status, 504);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("timed out after 20 ms")
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_retries_idempotent_requests_only() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::{Layer, Service};
    let retry = Arc::new(mortar_resilience::Retry::new(
        "flaky",
        mortar_resilience::RetryConfig {
            max_attempts: 3,
            base_ms: 10,
            max_ms: 10,
            ..Default::default()
        },
    ));
    let calls = Arc::new(AtomicU32::new(0));
    let flaky = tower::service_fn({
        let calls = calls.clone();
        move |_req: (&'static str, u32)| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n % 3 < 2 {
                    Err("unavailable")
                } else {
                    Ok("ok")
                }
            }
        }
    });
    let layer = mortar_resilience::layer::RetryLayer::new(
        retry,
        |req: &(&str, u32)| req.0 == "GET",
        |r: &Result<&str, &str>| r.is_err(),
    );
    let mut svc = layer.layer(flaky);
    assert_eq!(svc.call(("GET", 1)).await, Ok("ok"));
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two retries");
    assert_eq!(svc.call(("POST", 2)).await, Err("unavailable"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "a non-idempotent request is sent once"
    );
}

#[tokio::test]
async fn transitions_reach_listeners() {
    let breaker = mortar_resilience::Breaker::new(
        "events",
        BreakerConfig {
            minimum_calls: 1,
            ..BreakerConfig::default()
        },
    );
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    breaker.on_transition({
        let seen = seen.clone();
        move |name, t| {
            seen.lock()
                .unwrap()
                .push(format!("{name}: {} -> {}", t.from.as_str(), t.to.as_str()));
        }
    });
    let _ = breaker.call(|| async { Err::<(), _>("boom") }).await;
    breaker.reset();
    assert_eq!(
        *seen.lock().unwrap(),
        ["events: closed -> open", "events: open -> closed"]
    );
}
