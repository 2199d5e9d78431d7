//! The jobs API through a real node: a worker's life cycle over HTTP and bad input.

use mortar_testkit::{Node, NodeConfig};
use serde_json::{Value, json};

#[tokio::test]
async fn a_worker_leases_heartbeats_completes_and_fails_over_http() {
    let node = Node::start(NodeConfig::named("jobs")).await.unwrap();
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http.post(path).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (s, job) = post(
        node.url("/v1/jobs"),
        json!({"queue": "mail", "kind": "welcome", "payload": {"user": 42}}),
    )
    .await;
    assert_eq!(s, 201, "{job}");
    assert_eq!(job["state"], "available");
    let (s, batch) = post(node.url("/v1/jobs/batch"), json!({"jobs": [{"queue": "mail", "kind": "digest"}, {"queue": "mail", "kind": "digest", "priority": 0}]})).await;
    assert_eq!(s, 201);
    assert_eq!(batch["items"].as_array().unwrap().len(), 2);

    // A long-poll that finds nothing returns empty after wait_ms; a job enqueued meanwhile wakes it.
    let waiter = tokio::spawn(post(
        node.url("/v1/jobs/lease"),
        json!({"queues": ["other"], "wait_ms": 5000, "worker": "w1"}),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    post(node.url("/v1/jobs"), json!({"queue": "other", "kind": "k"})).await;
    let (s, woke) = waiter.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        woke["items"].as_array().unwrap().len(),
        1,
        "woken by the enqueue: {woke}"
    );

    let (_, leased) = post(
        node.url("/v1/jobs/lease"),
        json!({"queues": ["mail"], "max": 10, "worker": "w1"}),
    )
    .await;
    let items = leased["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["priority"], 0, "priority 0 first");
    let first = &items[0];
    let id = first["id"].as_str().unwrap();
    let lease = first["lease_id"].as_str().unwrap();
    let (s, _) = post(
        node.url(&format!("/v1/jobs/{id}/heartbeat")),
        json!({"lease_id": lease, "extend_ms": 60000}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, p) = post(
        node.url(&format!("/v1/jobs/{id}/complete")),
        json!({"lease_id": "not-mine"}),
    )
    .await;
    assert_eq!(s, 409, "{p}");
    let (s, done) = post(
        node.url(&format!("/v1/jobs/{id}/complete")),
        json!({"lease_id": lease, "result": {"sent": true}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"]["sent"], true);

    let second = &items[1];
    let id2 = second["id"].as_str().unwrap();
    let (s, dead) = post(
        node.url(&format!("/v1/jobs/{id2}/fail")),
        json!({"lease_id": second["lease_id"], "error": "no such user", "retryable": false}),
    )
    .await;
    assert_eq!((s, dead["state"].as_str()), (200, Some("dead")));
    let dlq: Value = http
        .get(node.url("/v1/jobs?state=dead&queue=mail"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dlq["items"][0]["id"], id2);
    let got: Value = http
        .get(node.url(&format!("/v1/jobs/{id2}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["errors"][0]["error"], "no such user");
    let (s, revived) = post(node.url(&format!("/v1/jobs/{id2}/retry")), json!({})).await;
    assert_eq!((s, revived["state"].as_str()), (200, Some("available")));
    let r = http
        .delete(node.url(&format!("/v1/jobs/{id2}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    for (body, field) in [
        (
            json!({"queue": "q", "kind": "k", "max_attempts": 0}),
            "max_attempts",
        ),
        (
            json!({"queue": "q", "kind": "k", "delay_ms": -5}),
            "delay_ms",
        ),
        (
            json!({"queue": "q", "kind": "k", "priority": 101}),
            "priority",
        ),
        (json!({"queue": "q", "kind": "k", "colour": 1}), "colour"),
        (json!({"kind": "k"}), "body"),
    ] {
        let (s, p) = post(node.url("/v1/jobs"), body.clone()).await;
        assert_eq!(s, 400, "{body} → {p}");
        assert_eq!(p["errors"][0]["field"], field, "{body} → {p}");
    }
    let (s, p) = post(
        node.url("/v1/jobs/lease"),
        json!({"queues": ["q"], "max": 0, "worker": "w"}),
    )
    .await;
    assert_eq!((s, p["errors"][0]["field"].as_str()), (400, Some("max")));
    let (s, _) = post(
        node.url("/v1/jobs/lease"),
        json!({"queues": "q", "worker": "w"}),
    )
    .await;
    assert_eq!(s, 400);
    let r = http
        .get(node.url("/v1/jobs?state=exploded"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http.get(node.url("/v1/jobs/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}
