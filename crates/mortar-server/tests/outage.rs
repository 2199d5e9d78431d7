//! Dependency outages through the binary: while PostgreSQL or Redis is known to be down, the
//! blocks that need it answer at once (503 naming it, or the rate limiter's failure mode)
//! instead of waiting out pool and command timeouts; they recover without a restart.

use std::time::{Duration, Instant};

use mortar_testkit::{Node, NodeConfig, PrivatePostgres, PrivateRedis, eventually, free_port};
use serde_json::{Value, json};

/// Sends `req` and returns (status, body, how long it took).
async fn timed(req: reqwest::RequestBuilder) -> (u16, Value, Duration) {
    let t = Instant::now();
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body, t.elapsed())
}

#[tokio::test]
async fn a_postgres_outage_answers_503_at_once_and_recovers() {
    let Some(pg) = PrivatePostgres::start().unwrap() else {
        return;
    };
    let node = Node::start(NodeConfig::named("pg-outage").env("MORTAR_DATABASE_URL", &pg.url()))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let queues = || http.get(node.url("/v1/jobs/queues"));
    let lock = || {
        http.post(node.url("/v1/locks/outage/acquire"))
            .json(&json!({"ttl_ms": 1000}))
    };
    assert_eq!(timed(queues()).await.0, 200);
    pg.stop().unwrap();
    // Before the outage is detected a request waits for a connection, but no longer than
    // its Mortar-Deadline (504); after, it gets the 503 at once.
    let (status, body, took) = timed(queues().header("mortar-deadline", "300")).await;
    assert!(matches!(status, 503 | 504), "{status} {body}");
    assert!(took < Duration::from_millis(1500), "answered in {took:?}");
    // The probe sees the outage within about a second, with or without traffic.
    eventually("the gate opening", Duration::from_secs(5), || async {
        timed(queues()).await.0 == 503
    })
    .await;
    for req in [queues(), lock(), http.get(node.url("/v1/cron/schedules"))] {
        for _ in 0..5 {
            let (status, body, took) = timed(req.try_clone().unwrap()).await;
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["dependency"], "postgres", "{body}");
            assert!(
                took < Duration::from_millis(100),
                "answered in {took:?}: {body}"
            );
        }
    }
    // Answered before its body was read: the client is told not to reuse the connection.
    let r = http
        .post(node.url("/v1/jobs"))
        .json(&json!({"queue": "q", "kind": "k", "payload": {"pad": "x".repeat(100_000)}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["connection"], "close");
    let ready = timed(http.get(node.url("/readyz"))).await;
    assert_eq!(ready.0, 503, "{}", ready.1);
    pg.restart().unwrap();
    eventually("recovery", Duration::from_secs(10), || async {
        timed(queues()).await.0 == 200
    })
    .await;
    assert_eq!(timed(lock()).await.0, 200);
}

#[tokio::test]
async fn a_redis_outage_applies_the_failure_mode_at_once_and_recovers() {
    let Some(svc) = mortar_testkit::services("ratelimit redis outage") else {
        return;
    };
    let mut redis = PrivateRedis::start();
    let db = svc.create_database().await.unwrap();
    let node = Node::start(
        NodeConfig::named("redis-outage")
            .env("MORTAR_DATABASE_URL", &db.url)
            .env("MORTAR_REDIS_URL", &redis.url()),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    for (name, mode) in [("open", "fail_open"), ("closed", "fail_closed")] {
        let r = http
            .put(node.url(&format!("/v1/ratelimit/policies/{name}")))
            .json(&json!({"algorithm": "fixed_window", "limit": 1000, "window_ms": 60000, "failure_mode": mode}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let check = |policy: &str| {
        http.post(node.url("/v1/ratelimit/check"))
            .json(&json!({"policies": [policy], "key": "k"}))
    };
    let (status, body, _) = timed(check("open")).await;
    assert_eq!(status, 200, "{body}");
    redis.stop();
    eventually("the gate opening", Duration::from_secs(5), || async {
        let (_, body, took) = timed(check("open")).await;
        took < Duration::from_millis(20) && body["degraded"] == true
    })
    .await;
    for _ in 0..20 {
        let (status, body, took) = timed(check("open")).await;
        assert_eq!(
            (status, &body["degraded"]),
            (200, &Value::Bool(true)),
            "{body}"
        );
        assert!(took < Duration::from_millis(40), "fail-open in {took:?}");
        let (status, body, took) = timed(check("closed")).await;
        assert_ne!(status, 200, "fail_closed refuses: {body}");
        assert!(took < Duration::from_millis(40), "fail-closed in {took:?}");
    }
    redis.restart();
    eventually("recovery", Duration::from_secs(10), || async {
        let (status, body, _) = timed(check("closed")).await;
        status == 200 && body["degraded"] != true
    })
    .await;
}

#[tokio::test]
async fn a_node_starts_while_redis_is_down_and_becomes_ready_by_itself() {
    let Some(svc) = mortar_testkit::services("start without redis") else {
        return;
    };
    let port = free_port();
    let db = svc.create_database().await.unwrap();
    let mut config = NodeConfig::named("no-redis-yet")
        .env("MORTAR_DATABASE_URL", &db.url)
        .env("MORTAR_REDIS_URL", &format!("redis://127.0.0.1:{port}"));
    config.wait_ready = false;
    let node = Node::start(config).await.unwrap();
    let http = reqwest::Client::new();
    let (status, body, _) = timed(http.get(node.url("/readyz"))).await;
    assert_eq!(
        (status, &body["dependency"]),
        (503, &json!("redis")),
        "{body}"
    );
    // What does not need Redis works; the rate limiter degrades by its failure mode.
    let r = http
        .put(node.url("/v1/ratelimit/policies/p"))
        .json(&json!({"algorithm": "fixed_window", "limit": 5, "window_ms": 1000}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let check = || {
        http.post(node.url("/v1/ratelimit/check"))
            .json(&json!({"policies": ["p"], "key": "k"}))
    };
    let (status, body, _) = timed(check()).await;
    assert_eq!((status, &body["degraded"]), (200, &json!(true)), "{body}");
    assert_eq!(timed(http.get(node.url("/v1/jobs/queues"))).await.0, 200);
    let _redis = PrivateRedis::start_on(port);
    eventually(
        "readiness without a restart",
        Duration::from_secs(10),
        || async { timed(http.get(node.url("/readyz"))).await.0 == 200 },
    )
    .await;
    eventually("checks on Redis again", Duration::from_secs(5), || async {
        let (status, body, _) = timed(check()).await;
        status == 200 && body["degraded"] != true
    })
    .await;
}

#[tokio::test]
async fn a_restart_on_postgres_logs_no_notices_at_info() {
    let Some(svc) = mortar_testkit::services("postgres notices") else {
        return;
    };
    let db = svc.create_database().await.unwrap();
    let mut node = Node::start(NodeConfig::named("notices").env("MORTAR_DATABASE_URL", &db.url))
        .await
        .unwrap();
    // The second start finds every table: PostgreSQL says "… already exists, skipping".
    node.terminate().unwrap();
    node.restart().await.unwrap();
    let logs = node.logs();
    assert!(
        logs.contains("listening") && !logs.contains("skipping"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_node_starts_while_postgres_is_down_and_becomes_ready_by_itself() {
    let Some(pg) = PrivatePostgres::start().unwrap() else {
        return;
    };
    pg.stop().unwrap();
    let resp = free_port();
    let mut config = NodeConfig::named("no-postgres-yet")
        .env("MORTAR_DATABASE_URL", &pg.url())
        .arg("--resp-listen")
        .arg(&format!("127.0.0.1:{resp}"));
    config.wait_ready = false;
    let mut node = Node::start(config).await.unwrap();
    let http = reqwest::Client::new();
    // Alive, not ready; every route names the dependency it waits for.
    assert_eq!(timed(http.get(node.url("/healthz"))).await.0, 200);
    for path in ["/readyz", "/v1/jobs/queues", "/v1/status"] {
        let (status, body, took) = timed(http.get(node.url(path))).await;
        assert_eq!(
            (status, &body["dependency"]),
            (503, &json!("postgres")),
            "{path}: {body}"
        );
        assert!(took < Duration::from_millis(100), "{path} took {took:?}");
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", resp)).is_err());
    pg.restart().unwrap();
    eventually(
        "readiness without a restart",
        Duration::from_secs(15),
        || async { timed(http.get(node.url("/readyz"))).await.0 == 200 },
    )
    .await;
    // The blocks' own listeners open with the application.
    assert!(std::net::TcpStream::connect(("127.0.0.1", resp)).is_ok());
    let (status, body, _) = timed(
        http.post(node.url("/v1/jobs"))
            .json(&json!({"queue": "q", "kind": "k"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // A clean stop after a late start: nothing logged at ERROR.
    assert!(node.terminate().unwrap().success());
    let logs = node.logs();
    assert!(
        logs.contains("the database answers") && !logs.contains("\"ERROR\""),
        "{logs}"
    );
}
