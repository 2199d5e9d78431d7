//! The cache's HTTP API and CLI against a real node, sharing entries with its RESP port.

use std::process::Command;

use mortar_testkit::{Node, NodeConfig, mortar_bin};

#[tokio::test]
async fn http_and_resp_share_entries_and_the_cli_works() {
    let resp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = Node::start(NodeConfig::named("cache").env(
        "MORTAR_CACHE__RESP_LISTEN",
        &format!("127.0.0.1:{resp_port}"),
    ))
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let r = http
        .put(node.url("/v1/cache/sessions/abc?ttl_ms=60000"))
        .body(vec![0u8, 159, 146, 150])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = http
        .get(node.url("/v1/cache/sessions/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["mortar-ttl-ms"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 59_000
    );
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        vec![0u8, 159, 146, 150],
        "binary-safe"
    );

    // The same entry through the Redis protocol.
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{resp_port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: Vec<u8> = redis::cmd("GET")
        .arg("sessions:abc")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, vec![0u8, 159, 146, 150]);
    let _: () = redis::cmd("SET")
        .arg("sessions:txt")
        .arg("hello")
        .query_async(&mut c)
        .await
        .unwrap();

    let r = http
        .post(node.url("/v1/cache/sessions/mget"))
        .json(&serde_json::json!({"keys": ["txt", "abc", "nope"]}))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["items"][0]["value"], "hello");
    assert_eq!(v["items"][1]["encoding"], "base64");
    assert!(v["items"][2].get("value").is_none());

    assert_eq!(
        http.delete(node.url("/v1/cache/sessions/abc"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let r = http
        .get(node.url("/v1/cache/sessions/abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        http.put(node.url("/v1/cache/a:b/k"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        422,
        "`:` in a namespace"
    );
    assert_eq!(
        http.put(node.url("/v1/cache/ns/k?ttl_ms=0"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        422
    );
    assert_eq!(
        http.put(node.url("/v1/cache/ns/k?ttl_ms=soon"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    let stats: serde_json::Value = http
        .get(node.url("/v1/cache/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["keys"], 1);
    assert!(stats["hits"].as_u64().unwrap() >= 2);

    let url = node.url("");
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            Command::new(mortar_bin())
                .args(args)
                .env("MORTAR_URL", &url)
                .output()
                .unwrap()
        };
        let set = run(&["cache", "set", "cfg", "mode", "fast", "--ttl-ms", "10000"]);
        let get = run(&["cache", "get", "cfg", "mode"]);
        let stats = run(&["cache", "stats"]);
        let del = run(&["cache", "del", "cfg", "mode"]);
        let gone = run(&["cache", "get", "cfg", "mode"]);
        let resp = format!("redis://127.0.0.1:{resp_port}");
        let bench = run(&[
            "bench", "cache", "--resp", &resp, "-c", "4", "-d", "1", "--keys", "100",
        ]);
        (set, get, stats, del, gone, bench)
    })
    .await
    .unwrap();
    assert!(out.0.status.success());
    assert_eq!(out.1.stdout, b"fast");
    assert!(String::from_utf8_lossy(&out.2.stdout).contains("used_memory"));
    assert!(out.3.status.success());
    assert_eq!(out.4.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.4.stderr).contains("no key `mode`"));
    let bench = String::from_utf8_lossy(&out.5.stdout);
    assert!(
        bench.contains("ops/s") && bench.contains(" 0 errors"),
        "{bench}"
    );
}

/// Keys without a `:` are reachable through the namespace `_`; `-` reads a value from stdin.
#[tokio::test]
async fn keys_without_a_namespace_and_values_from_stdin() {
    let resp_port = mortar_testkit::free_port();
    let node = Node::start(NodeConfig::named("cache-root").env(
        "MORTAR_CACHE__RESP_LISTEN",
        &format!("127.0.0.1:{resp_port}"),
    ))
    .await
    .unwrap();
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{resp_port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query_async(&mut c)
        .await
        .unwrap();
    let r = reqwest::get(node.url("/v1/cache/_/greeting"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");

    let url = node.url("");
    let (set, get) = tokio::task::spawn_blocking(move || {
        let mut set = Command::new(mortar_bin())
            .args(["cache", "set", "_", "blob", "-", "--ttl", "1m"])
            .env("MORTAR_URL", &url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut set.stdin.take().unwrap(), &[0, 1, 2, b'-']).unwrap();
        let set = set.wait_with_output().unwrap();
        let get = Command::new(mortar_bin())
            .args(["cache", "get", "_", "blob"])
            .env("MORTAR_URL", &url)
            .output()
            .unwrap();
        (set, get)
    })
    .await
    .unwrap();
    assert!(set.status.success(), "{set:?}");
    assert_eq!(get.stdout, vec![0, 1, 2, b'-']);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("blob")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((50_000..=60_000).contains(&ttl), "{ttl}");
}
