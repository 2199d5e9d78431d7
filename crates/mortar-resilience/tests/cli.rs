//! `mortar resilience …` against a real node with a breaker configured through the environment.

use std::process::Command;

use mortar_testkit::{Node, NodeConfig, mortar_bin};

#[tokio::test]
async fn list_show_force_open_force_close_reset() {
    let node = Node::start(
        NodeConfig::named("resilience-cli")
            .env("MORTAR_RESILIENCE__BREAKERS__PAYMENTS__MINIMUM_CALLS", "5")
            .env("MORTAR_RESILIENCE__BREAKERS__PAYMENTS__WINDOW", "time"),
    )
    .await
    .unwrap();
    let url = node.url("");
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            let o = Command::new(mortar_bin())
                .args(args)
                .env("MORTAR_URL", &url)
                .env_remove("MORTAR_TOKEN")
                .output()
                .unwrap();
            (
                o.status.code(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            )
        };
        let list = run(&["resilience", "list"]);
        let opened = run(&["resilience", "force-open", "payments"]);
        let shown = run(&["resilience", "show", "payments", "--json"]);
        let closed = run(&["resilience", "force-close", "payments"]);
        let reset = run(&["resilience", "reset", "payments"]);
        let missing = run(&["resilience", "show", "nope"]);
        (list, opened, shown, closed, reset, missing)
    })
    .await
    .unwrap();
    let (list, opened, shown, closed, reset, missing) = out;
    assert!(
        list.1.starts_with("NAME") && list.1.contains("payments") && list.1.contains("closed"),
        "{}",
        list.1
    );
    assert!(opened.1.contains("forced_open"), "{}", opened.1);
    let v: serde_json::Value = serde_json::from_str(&shown.1).unwrap();
    assert_eq!(v["state"], "forced_open");
    assert_eq!(v["config"]["minimum_calls"], 5);
    assert_eq!(v["config"]["window"], "time");
    assert!(closed.1.contains("closed") && reset.0 == Some(0));
    assert_eq!(missing.0, Some(1));
    assert!(
        missing.1.contains("no circuit breaker named `nope`"),
        "{}",
        missing.1
    );
}
