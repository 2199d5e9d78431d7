//! `ConfigClient` against a real `mortar` that is killed and restarted, and `mortar config run`
//! restarting its command when the values change.

use std::time::Duration;

use mortar_config::ConfigClient;
use mortar_core::client::ClientArgs;
use mortar_testkit::{Node, NodeConfig, eventually, mortar_bin};
use serde_json::{Value, json};

async fn put(http: &reqwest::Client, node: &Node, key: &str, value: Value) -> i64 {
    let res = http
        .put(node.url(&format!("/v1/config/app/base/{key}")))
        .json(&value)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["revision"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_changes_across_a_server_restart() {
    let mut node = Node::start(NodeConfig::named("config-client"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    put(&http, &node, "pool", json!(1)).await;
    let args = ClientArgs {
        url: node.url(""),
        token: None,
        json: false,
    };
    let client = ConfigClient::connect(&args, "app", "base").await.unwrap();
    assert_eq!(client.get::<i64>("pool").unwrap(), Some(1));
    assert!(
        client.get::<String>("pool").is_err(),
        "a type mismatch is an error"
    );
    assert_eq!(client.get::<i64>("missing").unwrap(), None);

    let r = put(&http, &node, "pool", json!(2)).await;
    tokio::time::timeout(Duration::from_secs(10), client.changed_after(r - 1))
        .await
        .expect("the change arrives");
    assert_eq!(client.get::<i64>("pool").unwrap(), Some(2));

    // The server dies while the client waits; writes happen after it is back.
    node.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.restart().await.unwrap();
    put(&http, &node, "pool", json!(3)).await;
    let last = put(&http, &node, "name", json!("x")).await;
    eventually(
        "the client catches up after the restart",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move { client.revision() >= last }
        },
    )
    .await;
    assert_eq!(client.get::<i64>("pool").unwrap(), Some(3));
    assert_eq!(client.get::<String>("name").unwrap().as_deref(), Some("x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_run_restarts_its_command_on_a_change() {
    let node = Node::start(NodeConfig::named("config-run")).await.unwrap();
    let http = reqwest::Client::new();
    put(&http, &node, "greeting", json!("hello")).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = format!("echo \"$GREETING\" >> {}; sleep 60", out.display());
    let mut run = tokio::process::Command::new(mortar_bin())
        .args([
            "config", "run", "--ns", "app", "--env", "base", "--grace", "2s",
        ])
        .args(["--", "sh", "-c", &script])
        .env("MORTAR_URL", node.url(""))
        .env_remove("MORTAR_TOKEN")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    let started = || {
        let out = read();
        async move { out == "hello\n" }
    };
    eventually(
        "the command starts with the value",
        Duration::from_secs(20),
        started,
    )
    .await;
    put(&http, &node, "greeting", json!("bye")).await;
    let restarted = || {
        let out = read();
        async move { out == "hello\nbye\n" }
    };
    eventually(
        "restarted with the new value",
        Duration::from_secs(20),
        restarted,
    )
    .await;
    run.kill().await.unwrap();

    // A command that ends by itself ends the run with its exit code.
    let status = tokio::process::Command::new(mortar_bin())
        .args(["config", "run", "--ns", "app", "--env", "base"])
        .args(["--", "sh", "-c", "exit 7"])
        .env("MORTAR_URL", node.url(""))
        .env_remove("MORTAR_TOKEN")
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_export_round_trip_yaml_json_and_env() {
    let node = Node::start(NodeConfig::named("config-import"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.yaml");
    std::fs::write(
        &file,
        "db:\n  pool:\n    max: 10\n  hosts: [a, b]\ngreeting: hi\n",
    )
    .unwrap();
    let url = node.url("");
    let run = move |args: Vec<String>| {
        let url = url.clone();
        async move {
            let o = tokio::process::Command::new(mortar_bin())
                .args(&args)
                .env("MORTAR_URL", url)
                .env_remove("MORTAR_TOKEN")
                .output()
                .await
                .unwrap();
            assert!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8(o.stdout).unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let out = run(s(&[
        "config",
        "import",
        "app",
        "base",
        file.to_str().unwrap(),
    ]))
    .await;
    assert!(out.starts_with("3 keys"), "{out}");
    let yaml = run(s(&["config", "export", "app", "base", "--format", "yaml"])).await;
    assert_eq!(yaml, "db.hosts:\n- a\n- b\ndb.pool.max: 10\ngreeting: hi\n");
    let env = run(s(&["config", "export", "app", "base"])).await;
    assert!(
        env.contains("DB_POOL_MAX='10'\n") && env.contains("GREETING='hi'\n"),
        "{env}"
    );
    // --replace: the environment ends up holding exactly the file.
    let json = dir.path().join("app.json");
    std::fs::write(&json, r#"{"greeting": "hello"}"#).unwrap();
    run(s(&[
        "config",
        "import",
        "app",
        "base",
        json.to_str().unwrap(),
        "--replace",
    ]))
    .await;
    let exported: Value = serde_json::from_str(
        &run(s(&["config", "export", "app", "base", "--format", "json"])).await,
    )
    .unwrap();
    assert_eq!(exported, json!({"greeting": "hello"}));
}

/// A secret's plaintext never reaches the server's logs, at any level, whatever is done with
/// it: written, read, listed, watched, rolled back, or refused by a schema.
#[tokio::test]
async fn secrets_never_reach_the_logs() {
    const PLAIN: &str = "hunter2-never-logged";
    let mut node = Node::start(
        NodeConfig::named("config-secret-logs")
            .env(
                "MORTAR_CONFIG__SECRET_KEY",
                "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            )
            .env("RUST_LOG", "trace,hyper=info,h2=info,sqlx=trace"),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let url = |p: &str| node.url(&format!("/v1/config/app/prod{p}"));
    let r = http
        .put(url("/db.password?secret=true"))
        .json(&PLAIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for path in [
        "/db.password",
        "",
        "/history",
        "/watch?wait_ms=0&after_revision=0",
    ] {
        let body = http
            .get(url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!body.is_empty(), "{path}");
    }
    // A schema that refuses the value: the 422 and its log lines name the key, not the value.
    let r = http
        .put(node.url("/v1/config/app/schema"))
        .json(
            &serde_json::json!({"type": "object", "properties": {"db.password": {"maxLength": 3}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let text = r.text().await.unwrap();
    assert!(!text.contains(PLAIN), "{text}");
    let r = http
        .post(url("/rollback"))
        .json(&serde_json::json!({"to_revision": 0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success() || r.status().is_client_error());
    node.terminate().unwrap();
    let logs = node.logs();
    assert!(logs.contains("request served"), "the access log ran");
    assert!(
        !logs.contains(PLAIN),
        "the plaintext is in the logs:\n{logs}"
    );
}
