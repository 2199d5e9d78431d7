//! `mortar ratelimit …` and `mortar bench ratelimit` against a real node.

use std::process::{Command, Output};

use mortar_testkit::{Node, NodeConfig, mortar_bin};

fn mortar(node: &Node, args: &[&str]) -> Output {
    Command::new(mortar_bin())
        .args(args)
        .env("MORTAR_URL", node.url(""))
        .env_remove("MORTAR_TOKEN")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn policy_check_peek_reset_and_bench() {
    let node = Node::start(NodeConfig::named("rl-cli")).await.unwrap();
    let out = tokio::task::spawn_blocking({
        let node_url = node.url("");
        move || {
            let n = |args: &[&str]| {
                Command::new(mortar_bin())
                    .args(args)
                    .env("MORTAR_URL", &node_url)
                    .env_remove("MORTAR_TOKEN")
                    .output()
                    .unwrap()
            };
            let set = n(&[
                "ratelimit",
                "policy",
                "set",
                "login",
                "--algorithm",
                "fixed_window",
                "--limit",
                "2",
                "--window-ms",
                "60000",
            ]);
            assert!(set.status.success(), "{}", text(&set));
            assert!(text(&set).contains("login") && text(&set).contains("fixed_window"));
            let list = n(&["ratelimit", "policy", "list"]);
            assert!(
                text(&list).starts_with("NAME") && text(&list).contains("login"),
                "{}",
                text(&list)
            );

            let first = n(&["ratelimit", "check", "login", "user:/1"]);
            assert_eq!(first.status.code(), Some(0), "{}", text(&first));
            assert!(
                text(&first).contains("allowed") && text(&first).contains("1 of 2 left"),
                "{}",
                text(&first)
            );
            n(&["ratelimit", "check", "login", "user:/1"]);
            let denied = n(&["ratelimit", "check", "login", "user:/1"]);
            assert_eq!(
                denied.status.code(),
                Some(3),
                "denied exits 3: {}",
                text(&denied)
            );
            assert!(text(&denied).contains("DENIED"), "{}", text(&denied));

            let peek = n(&["ratelimit", "peek", "login", "user:/1", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&peek.stdout).unwrap();
            assert_eq!(v["remaining"], 0);
            assert!(
                n(&["ratelimit", "reset", "login", "user:/1"])
                    .status
                    .success()
            );
            assert_eq!(
                n(&["ratelimit", "check", "login", "user:/1"]).status.code(),
                Some(0)
            );

            let bad = n(&[
                "ratelimit",
                "policy",
                "set",
                "x",
                "--algorithm",
                "leaky",
                "--limit",
                "1",
                "--window-ms",
                "1",
            ]);
            assert_eq!(bad.status.code(), Some(1));
            assert!(text(&bad).contains("unknown algorithm"), "{}", text(&bad));
            let missing = n(&["ratelimit", "check", "nope", "k"]);
            assert_eq!(missing.status.code(), Some(1));
            assert!(text(&missing).contains("`nope`"));

            let bench = n(&["bench", "ratelimit", "-c", "4", "-d", "1", "--keys", "10"]);
            assert!(bench.status.success(), "{}", text(&bench));
            let policies = n(&["ratelimit", "policy", "list", "--json"]);
            (text(&bench), text(&policies))
        }
    })
    .await
    .unwrap();
    assert!(
        out.0.contains("requests/s") && out.0.contains("p99"),
        "{}",
        out.0
    );
    assert!(out.0.contains(" 0 errors"), "{}", out.0);
    assert!(
        !out.1.contains("bench-"),
        "the temporary policy is deleted: {}",
        out.1
    );
    let _ = mortar(&node, &["status"]);
}
