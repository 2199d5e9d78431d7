//! Cluster: three real nodes on one PostgreSQL database and one Redis prefix.

use mortar_testkit::Cluster;

#[tokio::test]
async fn three_nodes_start_together_survive_kill_and_restart() {
    let Some(mut cluster) = Cluster::start(3).await.unwrap() else {
        return;
    };
    let http = reqwest::Client::new();
    for node in &cluster.nodes {
        let status: serde_json::Value = http
            .get(node.url("/v1/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["mode"], "cluster", "{status}");
        let names: Vec<&str> = status["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["postgres", "redis"]);
        assert!(
            status["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["ok"] == true),
            "{status}"
        );
    }

    // State written through one node is visible through the others (shared database).
    let created: serde_json::Value = http
        .post(cluster.nodes[0].url("/v1/keys"))
        .json(&serde_json::json!({"name": "shared", "scopes": ["*:read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();

    let addr = cluster.nodes[1].addr;
    cluster.node(1).kill();
    assert!(!cluster.node(1).is_running());
    assert!(
        http.get(format!("http://{addr}/healthz"))
            .send()
            .await
            .is_err(),
        "killed node still answers"
    );
    // The others keep serving while it is down.
    for i in [0, 2] {
        let r = http
            .get(cluster.nodes[i].url(&format!("/v1/keys/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    cluster.node(1).restart().await.unwrap();
    assert_eq!(
        cluster.nodes[1].addr, addr,
        "a restarted node keeps its address"
    );
    let r = http
        .get(cluster.nodes[1].url(&format!("/v1/keys/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let logs = cluster.nodes[1].logs();
    assert_eq!(
        logs.matches("\"listening\"").count(),
        2,
        "two lives in the log:\n{logs}"
    );
}
