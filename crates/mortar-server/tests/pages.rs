//! One pagination rule on every list route (`mortar_core::api::Page`): a page has a
//! `next_cursor` only when more items exist, so a client never fetches a final empty page;
//! a `limit` out of range is a 422 naming it.

use mortar_testkit::{Node, NodeConfig};
use serde_json::{Value, json};

async fn get(http: &reqwest::Client, url: String) -> (u16, Value) {
    let r = http.get(url).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Walks `path` with `limit`, returning every page's item count.
async fn walk(http: &reqwest::Client, node: &Node, path: &str, limit: u32) -> Vec<usize> {
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get(
            http,
            node.url(&format!("{path}?limit={limit}&cursor={cursor}")),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        pages.push(page["items"].as_array().unwrap().len());
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => c.clone_into(&mut cursor),
            None => return pages,
        }
        assert!(pages.len() < 10, "runaway paging");
    }
}

#[tokio::test]
async fn list_routes_share_one_pagination_rule() {
    let node = Node::start(NodeConfig::named("pages")).await.unwrap();
    let http = reqwest::Client::new();
    for i in 0..3 {
        let r = http
            .post(node.url("/v1/jobs"))
            .json(&json!({"queue": "pages", "kind": "k", "payload": {"i": i}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = http
            .post(node.url(&format!("/v1/locks/page-{i}/acquire")))
            .json(&json!({"ttl_ms": 60_000}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = http
            .post(node.url("/v1/cron/schedules"))
            .json(&json!({"name": format!("page-{i}"), "expr": "0 0 * * *", "job": {"queue": "pages", "kind": "tick"}}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    for path in ["/v1/jobs", "/v1/locks", "/v1/cron/schedules"] {
        assert_eq!(
            walk(&http, &node, path, 3).await,
            [3],
            "{path}: no final empty page"
        );
        assert_eq!(walk(&http, &node, path, 2).await, [2, 1], "{path}");
        assert_eq!(walk(&http, &node, path, 1).await, [1, 1, 1], "{path}");
        let (status, p) = get(&http, node.url(&format!("{path}?limit=0"))).await;
        assert_eq!(status, 422, "{path}: {p}");
        assert_eq!(p["errors"][0]["field"], "limit", "{path}: {p}");
    }
}
