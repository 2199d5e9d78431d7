//! The jobs API through a real node: a worker's life cycle over HTTP, bad input, and how an
//! attempt ends early (cancelled while running, timed out) on SQLite and PostgreSQL.

use mortar_testkit::{Node, NodeConfig};
use reqwest::Method;
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

#[tokio::test]
#[allow(clippy::many_single_char_names)]
async fn idempotency_queues_batches_and_bad_input_over_http() {
    let node = Node::start(NodeConfig::named("jobs-more")).await.unwrap();
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, key: Option<&str>, body: Value| {
        let mut rq = http.request(method, node.url(path)).json(&body);
        if let Some(k) = key {
            rq = rq.header("Idempotency-Key", k);
        }
        async move {
            let r = rq.send().await.unwrap();
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let v = r.json::<Value>().await.unwrap_or(Value::Null);
            if status >= 400 {
                assert_eq!(ctype.as_deref(), Some("application/problem+json"), "{v}");
            }
            (status, v)
        }
    };
    let job = json!({"queue": "pay", "kind": "charge", "payload": {"cents": 100}});
    let (s, first) = send(Method::POST, "/v1/jobs", Some("order-7"), job.clone()).await;
    assert_eq!(s, 201, "{first}");
    let (s, again) = send(Method::POST, "/v1/jobs", Some("order-7"), job.clone()).await;
    assert_eq!(
        (s, &again["id"], &again["duplicate"]),
        (200, &first["id"], &json!(true)),
        "{again}"
    );
    let (s, p) = send(
        Method::POST,
        "/v1/jobs",
        Some("k"),
        json!({"queue": "pay", "kind": "x", "unique_key": "u"}),
    )
    .await;
    assert_eq!(s, 400, "{p}");
    let batch = json!({"jobs": [job.clone(), job.clone()]});
    let (s, b1) = send(
        Method::POST,
        "/v1/jobs/batch",
        Some("import-1"),
        batch.clone(),
    )
    .await;
    assert_eq!(s, 201);
    let (s, b2) = send(Method::POST, "/v1/jobs/batch", Some("import-1"), batch).await;
    assert_eq!(s, 200, "a re-sent batch creates nothing: {b2}");
    assert_eq!(b1["items"][1]["id"], b2["items"][1]["id"]);
    // `Prefer: return=minimal`: ids, states and duplicate flags only, said so in a header.
    let minimal = |key: &'static str| {
        http.post(node.url("/v1/jobs/batch"))
            .header("Idempotency-Key", key)
            .header("Prefer", "respond-async, return=minimal")
            .json(&json!({"jobs": [{"queue": "bulk", "kind": "now"}, {"queue": "bulk", "kind": "later", "delay_ms": 3_600_000}]}))
            .send()
    };
    let r = minimal("import-2").await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["preference-applied"], "return=minimal");
    let m1: Value = r.json().await.unwrap();
    let items = m1["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{m1}");
    assert_eq!(
        items[0].as_object().unwrap().len(),
        2,
        "id and state only: {m1}"
    );
    assert_eq!(
        (&items[0]["state"], &items[1]["state"]),
        (&json!("available"), &json!("scheduled"))
    );
    let m2: Value = minimal("import-2").await.unwrap().json().await.unwrap();
    assert_eq!(
        (&m2["items"][1]["id"], &m2["items"][1]["duplicate"]),
        (&items[1]["id"], &json!(true)),
        "{m2}"
    );
    let refs = mortar_jobs::JobsClient::new(&mortar_core::client::ClientArgs {
        url: node.url(""),
        token: None,
        json: false,
    })
    .enqueue_batch_minimal(&vec![json!({"queue": "bulk", "kind": "x"}); 3])
    .await
    .unwrap();
    assert_eq!(refs.len(), 3);
    assert!(
        refs.iter()
            .all(|r| !r.duplicate && r.state == mortar_jobs::state::State::Available)
    );
    let (s, u) = send(Method::POST, "/v1/jobs", None, json!({"queue": "pay", "kind": "x", "unique_key": "nightly", "unique_while": "queued", "tags": ["a"]})).await;
    assert_eq!(
        (s, &u["unique_while"], &u["tags"]),
        (201, &json!("queued"), &json!(["a"])),
        "{u}"
    );

    // Queues: limits, pause, counts.
    let (s, q) = send(
        Method::PUT,
        "/v1/jobs/queues/pay",
        None,
        json!({"concurrency": 1, "rate": {"limit": 100, "period_ms": 1000}, "retention_ms": 60000}),
    )
    .await;
    assert_eq!(
        (
            s,
            &q["concurrency"],
            &q["rate"]["limit"],
            &q["depth"]["available"]
        ),
        (200, &json!(1), &json!(100), &json!(4)),
        "{q}"
    );
    let (_, leased) = send(
        Method::POST,
        "/v1/jobs/lease",
        None,
        json!({"queues": ["pay"], "max": 10, "worker": "w"}),
    )
    .await;
    let items = leased["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "concurrency 1: {leased}");
    let (s, p) = send(Method::POST, "/v1/jobs/queues/pay/pause", None, json!({})).await;
    assert_eq!((s, &p["paused"]), (200, &json!(true)));
    let (s, r) = send(
        Method::POST,
        &format!("/v1/jobs/{}/release", items[0]["id"].as_str().unwrap()),
        None,
        json!({"lease_id": items[0]["lease_id"]}),
    )
    .await;
    assert_eq!(
        (s, &r["state"], &r["attempt"]),
        (200, &json!("available"), &json!(0)),
        "{r}"
    );
    let (_, none) = send(
        Method::POST,
        "/v1/jobs/lease",
        None,
        json!({"queues": ["pay"], "max": 10, "worker": "w"}),
    )
    .await;
    assert_eq!(none["items"], json!([]), "paused");
    send(Method::POST, "/v1/jobs/queues/pay/resume", None, json!({})).await;
    send(Method::PUT, "/v1/jobs/queues/pay", None, json!({})).await;
    let (_, leased) = send(
        Method::POST,
        "/v1/jobs/lease",
        None,
        json!({"queues": ["pay"], "max": 10, "worker": "w"}),
    )
    .await;
    let items = leased["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    let mut done: Vec<Value> = items
        .iter()
        .map(|j| json!({"id": j["id"], "lease_id": j["lease_id"], "result": {"ok": 1}}))
        .collect();
    done.push(json!({"id": "nope", "lease_id": "x"}));
    let (s, c) = send(
        Method::POST,
        "/v1/jobs/complete",
        None,
        json!({"items": done}),
    )
    .await;
    assert_eq!(
        (s, &c["completed"], &c["rejected"][0]["id"]),
        (200, &json!(4), &json!("nope")),
        "{c}"
    );
    let (_, all) = send(Method::GET, "/v1/jobs/queues", None, Value::Null).await;
    let pay = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "pay")
        .unwrap()
        .clone();
    assert_eq!(
        (&pay["depth"]["completed"], &pay["completed_last_minute"]),
        (&json!(4), &json!(4)),
        "{pay}"
    );
    let (s, d) = send(
        Method::POST,
        "/v1/jobs/bulk/discard",
        None,
        json!({"queue": "pay", "state": "completed"}),
    )
    .await;
    assert_eq!((s, &d["count"]), (200, &json!(4)));

    // Bad input: each a problem naming the field.
    for (path, body, field) in [
        (
            "/v1/jobs",
            json!({"queue": "q", "kind": "k", "delay_ms": -5}),
            "delay_ms",
        ),
        (
            "/v1/jobs",
            json!({"queue": "q", "kind": "k", "run_at": "tomorrow"}),
            "run_at",
        ),
        (
            "/v1/jobs",
            json!({"queue": "q", "kind": "k", "max_attempts": 0}),
            "max_attempts",
        ),
        (
            "/v1/jobs",
            json!({"queue": "q", "kind": "k", "unique_while": "forever", "unique_key": "x"}),
            "unique_while",
        ),
        (
            "/v1/jobs/lease",
            json!({"queues": ["q"], "worker": "w", "max": "ten"}),
            "max",
        ),
        (
            "/v1/jobs/queues/q",
            json!({"concurrency": 0}),
            "concurrency",
        ),
        ("/v1/jobs/queues/q", json!({"speed": 3}), "speed"),
        ("/v1/jobs/bulk/retry", json!({"state": "lost"}), "state"),
    ] {
        let method = if path.starts_with("/v1/jobs/queues") {
            Method::PUT
        } else {
            Method::POST
        };
        let (s, p) = send(method, path, None, body.clone()).await;
        assert!(s == 400 || s == 422, "{body}: {s} {p}");
        assert!(
            p.to_string().contains(field),
            "{body} should name {field}: {p}"
        );
    }
}

#[tokio::test]
async fn running_jobs_cancel_with_202_and_late_calls_on_an_attempt_get_410_embedded() {
    let node = Node::start(NodeConfig::named("jobs-http-ends"))
        .await
        .unwrap();
    attempt_ends_over_http(&node).await;
}

#[tokio::test]
async fn running_jobs_cancel_with_202_and_late_calls_on_an_attempt_get_410_on_postgres() {
    let Some(cluster) = mortar_testkit::Cluster::start(1).await.unwrap() else {
        return;
    };
    attempt_ends_over_http(&cluster.nodes[0]).await;
}

/// Cancelling a running job (202, then 410 `cancelled` at the worker's heartbeat, the events
/// in order) and a timeout (heartbeats capped at the deadline, then 410 `timed-out`).
async fn attempt_ends_over_http(node: &Node) {
    let http = reqwest::Client::new();
    let call = |method: Method, path: String, body: Value| {
        let rq = http.request(method, node.url(&path)).json(&body);
        async move {
            let r = rq.send().await.unwrap();
            let status = r.status().as_u16();
            let ctype = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let v = r.json::<Value>().await.unwrap_or(Value::Null);
            if status >= 400 {
                assert_eq!(ctype.as_deref(), Some("application/problem+json"), "{v}");
            }
            (status, v)
        }
    };
    // The jobs stream of this queue, read as it comes.
    let mut sse = http
        .get(node.url("/v1/jobs/events?queue=ends"))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);

    let (s, job) = call(
        Method::POST,
        "/v1/jobs".into(),
        json!({"queue": "ends", "kind": "k", "timeout_ms": 60000}),
    )
    .await;
    assert_eq!(s, 201, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    let (_, leased) = call(
        Method::POST,
        "/v1/jobs/lease".into(),
        json!({"queues": ["ends"], "worker": "w"}),
    )
    .await;
    let lease = leased["items"][0]["lease_id"].clone();
    assert!(leased["items"][0]["deadline_at"].is_string(), "{leased}");

    // Running: asked to stop (202), twice alike, by POST …/cancel or DELETE.
    let (s, asked) = call(Method::POST, format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(
        (s, &asked["state"], &asked["cancel_requested"]),
        (202, &json!("running"), &json!(true)),
        "{asked}"
    );
    assert!(asked["cancel_requested_at"].is_string(), "{asked}");
    let (s, _) = call(Method::DELETE, format!("/v1/jobs/{id}"), Value::Null).await;
    assert_eq!(s, 202);
    // The worker hears it at its heartbeat: 410 `cancelled`; the job is cancelled.
    let (s, p) = call(
        Method::POST,
        format!("/v1/jobs/{id}/heartbeat"),
        json!({"lease_id": lease}),
    )
    .await;
    assert_eq!(s, 410, "{p}");
    assert_eq!(p["type"], "https://mortar.dev/problems/cancelled", "{p}");
    let (_, got) = call(Method::GET, format!("/v1/jobs/{id}"), Value::Null).await;
    assert_eq!(got["state"], "cancelled", "{got}");
    assert_eq!(got["errors"][0]["attempt"], 1, "{got}");
    let (s, p) = call(Method::POST, format!("/v1/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(s, 409, "finished: {p}");
    let (s, _) = call(Method::POST, "/v1/jobs/nope/cancel".into(), json!({})).await;
    assert_eq!(s, 404);

    // The stream showed the request, then the end.
    let mut text = String::new();
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("event: job.cancelled") {
        let chunk = tokio::time::timeout_at(until, sse.chunk())
            .await
            .expect("the stream shows the cancellation")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let asked_at = text.find("event: job.cancel_requested").expect(&text);
    assert!(
        asked_at < text.find("event: job.cancelled").unwrap(),
        "{text}"
    );

    // A timeout: heartbeats asking for an hour get no more than the deadline, and the
    // first one after it is refused 410 `timed-out`.
    call(
        Method::POST,
        "/v1/jobs".into(),
        json!({"queue": "ends", "kind": "k", "timeout_ms": 300, "max_attempts": 1}),
    )
    .await;
    let (_, leased) = call(
        Method::POST,
        "/v1/jobs/lease".into(),
        json!({"queues": ["ends"], "worker": "w"}),
    )
    .await;
    let j = &leased["items"][0];
    let (id, lease) = (j["id"].as_str().unwrap().to_owned(), j["lease_id"].clone());
    assert_eq!(j["lease_expires_at"], j["deadline_at"], "{j}");
    let (p, s) = loop {
        let (s, p) = call(
            Method::POST,
            format!("/v1/jobs/{id}/heartbeat"),
            json!({"lease_id": lease, "extend_ms": 3_600_000}),
        )
        .await;
        if s != 200 {
            break (p, s);
        }
        assert_eq!(p["lease_expires_at"], j["deadline_at"], "capped: {p}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(s, 410, "{p}");
    assert_eq!(p["type"], "https://mortar.dev/problems/timed-out", "{p}");
    let (_, got) = call(Method::GET, format!("/v1/jobs/{id}"), Value::Null).await;
    assert_eq!(
        (&got["state"], &got["errors"][0]["error"]),
        (&json!("dead"), &json!("timed out after 300 ms")),
        "{got}"
    );
    let (s, p) = call(
        Method::POST,
        format!("/v1/jobs/{id}/complete"),
        json!({"lease_id": lease}),
    )
    .await;
    assert_eq!(
        (s, &p["type"]),
        (410, &json!("https://mortar.dev/problems/timed-out"))
    );
}
