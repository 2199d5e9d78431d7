//! The cron API through a real node: a schedule's life cycle, previews, and bad input as
//! problem+json.

use mortar_testkit::{Node, NodeConfig};
use serde_json::{Value, json};

struct Api {
    node: Node,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.node.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        if status >= 400 {
            assert_eq!(
                r.headers()["content-type"],
                "application/problem+json",
                "{path}"
            );
        }
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

#[tokio::test]
async fn a_schedule_over_http_and_bad_input_as_problems() {
    let api = Api {
        node: Node::start(NodeConfig::named("cron")).await.unwrap(),
        http: reqwest::Client::new(),
    };
    let (s, created) = api
        .post(
            "/v1/cron/schedules",
            json!({"name": "nightly", "expr": "30 2 * * *", "timezone": "America/New_York",
                "job": {"queue": "reports", "kind": "build", "payload": {"r": 1}},
                "overlap": "skip", "misfire": "fire_all", "catchup_window_ms": 60000}),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(created["next_fire_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["job"]["queue"], "reports");
    let (s, list) = api.get("/v1/cron/schedules").await;
    assert_eq!(s, 200);
    assert_eq!(list["items"][0]["name"], "nightly");
    let (s, shown) = api.get("/v1/cron/schedules/nightly").await;
    assert_eq!((s, shown["id"].as_str()), (200, Some(id.as_str())));

    let (s, run) = api
        .post(&format!("/v1/cron/schedules/{id}/trigger"), json!({}))
        .await;
    assert_eq!(
        (s, run["kind"].as_str(), run["status"].as_str()),
        (201, Some("manual"), Some("enqueued")),
        "{run}"
    );
    let job_id = run["job_id"].as_str().unwrap().to_owned();
    let (s, job) = api.get(&format!("/v1/jobs/{job_id}")).await;
    assert_eq!((s, job["queue"].as_str()), (200, Some("reports")));
    let (_, runs) = api.get("/v1/cron/schedules/nightly/runs").await;
    assert_eq!(runs["items"][0]["job_id"], job_id.as_str());
    assert_eq!(runs["items"][0]["job_state"], "available");

    let (s, filled) = api
        .post(
            "/v1/cron/schedules/nightly/backfill",
            json!({"from": "2026-03-06T00:00:00Z", "to": "2026-03-09T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, 200, "{filled}");
    let fired: Vec<&str> = filled["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["fire_at"].as_str().unwrap())
        .collect();
    assert_eq!(
        fired,
        [
            "2026-03-06T07:30:00.000Z",
            "2026-03-07T07:30:00.000Z",
            "2026-03-08T07:00:00.000Z"
        ],
        "02:30 on the spring-forward day fires at 03:00 EDT"
    );

    let (s, paused) = api
        .post("/v1/cron/schedules/nightly/pause", json!({}))
        .await;
    assert_eq!((s, paused["enabled"].as_bool()), (200, Some(false)));
    assert!(paused.get("next_fire_at").is_none());
    let (s, resumed) = api
        .post("/v1/cron/schedules/nightly/resume", json!({}))
        .await;
    assert_eq!((s, resumed["enabled"].as_bool()), (200, Some(true)));
    let (s, replaced) = api
        .call(
            reqwest::Method::PUT,
            "/v1/cron/schedules/nightly",
            Some(json!({"name": "nightly", "expr": "@hourly", "job": {"queue": "reports", "kind": "build"}})),
        )
        .await;
    assert_eq!(
        (s, replaced["expr"].as_str()),
        (200, Some("@hourly")),
        "{replaced}"
    );

    let (s, p) = api
        .get("/v1/cron/preview?expr=0%209%20*%20*%20MON-FRI&timezone=Europe/London&count=3&from=2026-03-27T12:00:00Z")
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        p["fire_times"],
        json!([
            "2026-03-30T08:00:00.000Z",
            "2026-03-31T08:00:00.000Z",
            "2026-04-01T08:00:00.000Z"
        ])
    );
    let (s, p) = api.get("/v1/cron/preview?expr=0%2025%20*%20*%20*").await;
    assert_eq!(
        (s, p["errors"][0]["field"].as_str()),
        (400, Some("expr")),
        "{p}"
    );
    let msg = p["errors"][0]["message"].as_str().unwrap();
    assert!(msg.contains("hour") && msg.contains("column 3"), "{msg}");
    let (s, _) = api
        .get("/v1/cron/preview?expr=*%20*%20*%20*%20*&count=0")
        .await;
    assert_eq!(s, 400);
    let (s, _) = api.get("/v1/cron/preview").await;
    assert_eq!(s, 400, "expr is required");

    let job = json!({"queue": "q", "kind": "k"});
    for (body, status, field) in [
        (
            json!({"name": "x", "expr": "*/5 * * 13 *", "job": job}),
            400,
            "expr",
        ),
        (
            json!({"name": "x", "expr": "* * * * *", "timezone": "Moon/Crater", "job": job}),
            400,
            "timezone",
        ),
        (
            json!({"name": "x", "expr": "* * * * *", "job": job, "start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}),
            422,
            "end_at",
        ),
        (
            json!({"name": "x", "expr": "* * * * *", "job": job, "catchup_window_ms": 864_000_000_000u64}),
            422,
            "catchup_window_ms",
        ),
        (
            json!({"name": "x", "expr": "* * * * *", "job": job, "overlap": "maybe"}),
            400,
            "overlap",
        ),
        (
            json!({"name": "x", "expr": "* * * * *", "job": {"queue": "q", "kind": "k", "priority": 500}}),
            422,
            "job.priority",
        ),
        (
            json!({"name": "x", "expr": "* * * * *", "job": job, "colour": "red"}),
            400,
            "colour",
        ),
        (json!({"name": "x", "expr": 5, "job": job}), 400, "expr"),
    ] {
        let (s, p) = api.post("/v1/cron/schedules", body.clone()).await;
        assert_eq!(
            (s, p["errors"][0]["field"].as_str()),
            (status, Some(field)),
            "{body} → {p}"
        );
    }
    let (s, _) = api
        .post(
            "/v1/cron/schedules",
            json!({"name": "nightly", "expr": "* * * * *", "job": job}),
        )
        .await;
    assert_eq!(s, 409, "name taken");
    let (s, p) = api
        .post(
            "/v1/cron/schedules/nightly/backfill",
            json!({"from": "2026-01-01T00:00:00Z", "to": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!((s, p["errors"][0]["field"].as_str()), (422, Some("to")));
    let (s, _) = api.get("/v1/cron/schedules/nope").await;
    assert_eq!(s, 404);
    let (s, _) = api.post("/v1/cron/schedules/nope/trigger", json!({})).await;
    assert_eq!(s, 404);
    let (s, _) = api.get("/v1/cron/schedules/nightly/runs?limit=0").await;
    assert_eq!(s, 422);
    let (s, _) = api
        .call(reqwest::Method::DELETE, "/v1/cron/schedules/nightly", None)
        .await;
    assert_eq!(s, 200);
    let (s, _) = api.get("/v1/cron/schedules/nightly").await;
    assert_eq!(s, 404);
}
