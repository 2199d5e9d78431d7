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
            let (code, out, err) = mortar_testkit::cli(&url, args);
            (code, format!("{out}{err}"))
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

/// Runs `mortar resilience <args>` against `url`: exit code and stdout + stderr.
fn mortar(url: &str, args: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(mortar_bin())
        .arg("resilience")
        .args(args)
        .env("MORTAR_URL", url)
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
}

#[tokio::test]
async fn create_update_apply_delete_and_definitions_survive_a_restart() {
    let mut node = Node::start(
        NodeConfig::named("resilience-define")
            .env("MORTAR_RESILIENCE__BREAKERS__FIXED__MINIMUM_CALLS", "5"),
    )
    .await
    .unwrap();
    let url = node.url("");
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        "window = \"time\"\nwindow_ms = 30000\nfailure_rate_threshold = 25\n",
    )
    .unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let u = url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let created = mortar(
            &u,
            &[
                "create",
                "payments",
                "--failure-rate",
                "30",
                "--wait-open",
                "10s",
                "--slow-call",
                "250ms",
                "--json",
            ],
        );
        let again = mortar(&u, &["create", "payments"]);
        let updated = mortar(
            &u,
            &["update", "payments", "--minimum-calls", "4", "--json"],
        );
        let applied = mortar(&u, &["apply", "search", "--file", &path, "--json"]);
        let fixed = mortar(&u, &["update", "fixed", "--minimum-calls", "1"]);
        let bad = mortar(&u, &["update", "payments", "--failure-rate", "0"]);
        let permit = mortar(&u, &["acquire", "payments"]);
        let recorded = mortar(
            &u,
            &[
                "record",
                "payments",
                permit.1.trim(),
                "failure",
                "--duration",
                "20ms",
            ],
        );
        let doomed = mortar(&u, &["create", "doomed"]);
        let deleted = mortar(&u, &["delete", "doomed"]);
        let list = mortar(&u, &["list"]);
        (
            created, again, updated, applied, fixed, bad, recorded, doomed, deleted, list,
        )
    })
    .await
    .unwrap();
    let (created, again, updated, applied, fixed, bad, recorded, doomed, deleted, list) = out;
    let v: serde_json::Value = serde_json::from_str(&created.1).unwrap();
    assert_eq!(v["config"]["failure_rate_threshold"], 30.0);
    assert_eq!(v["config"]["wait_open_ms"], 10_000, "durations take units");
    assert_eq!(v["config"]["slow_call_ms"], 250);
    assert_eq!(again.0, Some(1));
    assert!(
        again.1.contains("already exists") && again.1.contains("update"),
        "{}",
        again.1
    );
    let v: serde_json::Value = serde_json::from_str(&updated.1).unwrap();
    assert_eq!(v["config"]["minimum_calls"], 4);
    assert_eq!(
        v["config"]["wait_open_ms"], 10_000,
        "update keeps unset settings"
    );
    let v: serde_json::Value = serde_json::from_str(&applied.1).unwrap();
    assert_eq!(
        (
            v["config"]["window"].as_str(),
            v["config"]["window_ms"].as_u64()
        ),
        (Some("time"), Some(30_000))
    );
    assert_eq!(fixed.0, Some(1));
    assert!(fixed.1.contains("mortar.toml"), "{}", fixed.1);
    assert_eq!(bad.0, Some(1));
    assert!(bad.1.contains("failure_rate_threshold"), "{}", bad.1);
    assert_eq!(recorded.0, Some(0), "{}", recorded.1);
    assert!(
        recorded.1.contains("closed (counted: true)"),
        "{}",
        recorded.1
    );
    assert_eq!((doomed.0, deleted.0), (Some(0), Some(0)));
    assert!(
        list.1.contains("SOURCE") && list.1.contains("payments") && !list.1.contains("doomed"),
        "{}",
        list.1
    );

    // Embedded mode: the definitions are in the node's SQLite file.
    node.restart().await.unwrap();
    let u = node.url("");
    let (shown, gone) = tokio::task::spawn_blocking(move || {
        (
            mortar(&u, &["show", "payments", "--json"]),
            mortar(&u, &["show", "doomed"]),
        )
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&shown.1).unwrap();
    assert_eq!(
        (v["source"].as_str(), v["config"]["minimum_calls"].as_u64()),
        (Some("api"), Some(4))
    );
    assert_eq!(
        v["calls"], 0,
        "state is not stored: a restarted node starts closed and empty"
    );
    assert_eq!(gone.0, Some(1));
}
