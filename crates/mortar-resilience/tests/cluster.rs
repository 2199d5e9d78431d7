//! Real `mortar` nodes on one PostgreSQL (and Redis): breakers defined through the API reach
//! every node, their state stays per node unless `shared = true`, shared breakers open on every
//! node at once and fall back to each node's own breaker while Redis is down.

use std::time::Duration;

use mortar_testkit::{Cluster, Node, NodeConfig, PrivateRedis, eventually};
use serde_json::{Value, json};

const B: &str = "/v1/resilience/breakers";
/// Refresh often so the test waits little for propagation.
const FAST: &[(&str, &str)] = &[("MORTAR_RESILIENCE__REFRESH_MS", "100")];
const WITHIN: Duration = Duration::from_secs(10);

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn put(http: &reqwest::Client, node: &Node, name: &str, body: Value) -> (u16, Value) {
    send(http.put(node.url(&format!("{B}/{name}"))).json(&body)).await
}

async fn get(http: &reqwest::Client, node: &Node, name: &str) -> (u16, Value) {
    send(http.get(node.url(&format!("{B}/{name}")))).await
}

async fn acquire(http: &reqwest::Client, node: &Node, name: &str) -> (u16, Value) {
    send(http.post(node.url(&format!("{B}/{name}/acquire")))).await
}

async fn record(
    http: &reqwest::Client,
    node: &Node,
    name: &str,
    permit: &Value,
    outcome: &str,
) -> (u16, Value) {
    let body = json!({"permit": permit, "outcome": outcome, "duration_ms": 3});
    send(
        http.post(node.url(&format!("{B}/{name}/record")))
            .json(&body),
    )
    .await
}

/// Waits until `node` shows breaker `name` with `minimum_calls` (or, for `None`, none at all).
async fn shows(http: &reqwest::Client, node: &Node, name: &str, minimum_calls: Option<u64>) {
    let what = format!(
        "{} shows {name} with minimum_calls {minimum_calls:?}",
        node.config.name
    );
    eventually(&what, WITHIN, || async {
        let (status, v) = get(http, node, name).await;
        match minimum_calls {
            Some(m) => status == 200 && v["config"]["minimum_calls"] == m && v["source"] == "api",
            None => status == 404,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_reach_every_node_and_state_stays_per_node() {
    let Some(cluster) = Cluster::start_with(2, FAST).await.unwrap() else {
        return;
    };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let http = reqwest::Client::new();
    let def = json!({"window_size": 4, "minimum_calls": 2, "wait_open_ms": 60000});
    assert_eq!(put(&http, one, "payments", def.clone()).await.0, 201);
    shows(&http, two, "payments", Some(2)).await;

    // Driven open on node a; node b judges from its own calls and stays closed.
    for _ in 0..2 {
        let (_, permit) = acquire(&http, one, "payments").await;
        record(&http, one, "payments", &permit["permit"], "failure").await;
    }
    assert_eq!(acquire(&http, one, "payments").await.0, 503);
    let (status, permit) = acquire(&http, two, "payments").await;
    assert_eq!((status, permit["state"].as_str()), (200, Some("closed")));
    // A node-local permit is recorded where it was issued.
    let (status, v) = record(&http, one, "payments", &permit["permit"], "success").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["type"], "https://mortar.dev/problems/permit-unknown");
    assert_eq!(
        record(&http, two, "payments", &permit["permit"], "success")
            .await
            .0,
        200
    );

    // An update on b (the store knows it: 200) reaches a, whose breaker stays open.
    let mut changed = def.clone();
    changed["minimum_calls"] = json!(3);
    assert_eq!(put(&http, two, "payments", changed).await.0, 200);
    shows(&http, one, "payments", Some(3)).await;
    assert_eq!(
        acquire(&http, one, "payments").await.0,
        503,
        "the update kept a's state"
    );

    // A delete on b removes it from a too.
    let r = http
        .delete(two.url(&format!("{B}/payments")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    shows(&http, one, "payments", None).await;
    assert_eq!(acquire(&http, one, "payments").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_breaker_opens_on_every_node() {
    let Some(cluster) = Cluster::start_with(2, FAST).await.unwrap() else {
        return;
    };
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let http = reqwest::Client::new();
    let def = json!({"window_size": 4, "minimum_calls": 4, "wait_open_ms": 60000, "shared": true});
    let (status, v) = put(&http, one, "ledger", def).await;
    assert_eq!(status, 201, "{v}");
    shows(&http, two, "ledger", Some(4)).await;

    // Calls through both nodes fill one window; a permit from one node records on the other.
    let mut permits = Vec::new();
    for node in [one, two, one, two] {
        let (status, permit) = acquire(&http, node, "ledger").await;
        assert_eq!(
            (status, permit["shared"].as_bool()),
            (200, Some(true)),
            "{permit}"
        );
        permits.push(permit["permit"].clone());
    }
    for (i, permit) in permits.iter().enumerate() {
        let node = if i % 2 == 0 { two } else { one };
        let outcome = if i < 2 { "failure" } else { "success" };
        let (status, v) = record(&http, node, "ledger", permit, outcome).await;
        assert_eq!((status, v["counted"].as_bool()), (200, Some(true)), "{v}");
    }
    // 2 failures of 4 = 50%: open, for every node at once.
    let (_, v) = get(&http, two, "ledger").await;
    assert_eq!(
        (v["state"].as_str(), v["calls"].as_u64()),
        (Some("open"), Some(4)),
        "{v}"
    );
    for node in [one, two] {
        let (status, v) = acquire(&http, node, "ledger").await;
        assert_eq!(status, 503, "{v}");
        assert_eq!(v["state"], "open");
    }
    // Steering a shared breaker acts on every node.
    let r = http
        .post(one.url(&format!("{B}/ledger/reset")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(acquire(&http, two, "ledger").await.0, 200);

    // Without Redis a breaker cannot be shared: refused, naming the field.
    let lone = Node::start(NodeConfig::named("no-redis")).await.unwrap();
    let (status, v) = put(&http, &lone, "ledger", json!({"shared": true})).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["errors"][0]["field"], "shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_breaker_falls_back_to_the_node_while_redis_is_down() {
    let Some(svc) = mortar_testkit::services("shared_breaker_redis_down") else {
        return;
    };
    let mut redis = PrivateRedis::start();
    let db = svc.create_database().await.unwrap();
    let node = Node::start(
        NodeConfig::named("res-redis-down")
            .env("MORTAR_DATABASE_URL", &db.url)
            .env("MORTAR_REDIS_URL", &redis.url()),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    assert_eq!(
        put(&http, &node, "mail", json!({"shared": true})).await.0,
        201
    );
    let (_, held) = acquire(&http, &node, "mail").await;
    assert_eq!(held["shared"], true);

    redis.stop();
    // The node's own breaker decides meanwhile, and says so.
    let (status, permit) = acquire(&http, &node, "mail").await;
    assert_eq!(status, 200, "{permit}");
    assert_eq!(
        (permit["shared"].as_bool(), permit["degraded"].as_bool()),
        (Some(false), Some(true))
    );
    let (status, v) = record(&http, &node, "mail", &permit["permit"], "success").await;
    assert_eq!((status, v["shared"].as_bool()), (200, Some(false)), "{v}");
    let (_, v) = get(&http, &node, "mail").await;
    assert!(
        v["degraded"]
            .as_str()
            .unwrap()
            .contains("this node's own breaker"),
        "{v}"
    );
    // A shared permit waits for Redis: 503 naming it.
    let (status, v) = record(&http, &node, "mail", &held["permit"], "success").await;
    assert_eq!(
        (status, v["dependency"].as_str()),
        (503, Some("redis")),
        "{v}"
    );

    redis.restart();
    eventually("the breaker is shared again", WITHIN, || async {
        let (status, permit) = acquire(&http, &node, "mail").await;
        status == 200 && permit["shared"] == true
    })
    .await;
    let (_, v) = get(&http, &node, "mail").await;
    assert!(v.get("degraded").is_none(), "{v}");
}
