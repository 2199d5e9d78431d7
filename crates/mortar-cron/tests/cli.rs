//! `mortar cron` against a real node: add with durations, a manual run in the schedule's last
//! run (API and LAST column), and `update` changing only the flags given.

use mortar_testkit::{Node, NodeConfig};
use serde_json::Value;

/// `mortar cron <args>`'s stdout; it must succeed.
fn cron(url: &str, args: &[&str]) -> String {
    let args: Vec<&str> = std::iter::once("cron")
        .chain(args.iter().copied())
        .collect();
    let (code, out, err) = mortar_testkit::cli(url, &args);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    out
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap()
}

#[tokio::test]
async fn update_durations_and_the_latest_run_of_any_kind() {
    let node = Node::start(NodeConfig::named("cron-cli")).await.unwrap();
    let url = node.url("");
    tokio::task::spawn_blocking(move || {
        let added = json(&cron(
            &url,
            &[
                "add",
                "nightly",
                "0 3 * * *",
                "--queue",
                "reports",
                "--kind",
                "build",
                "--catchup-window",
                "30m",
                "--jitter",
                "2s",
                "--json",
            ],
        ));
        assert_eq!(added["catchup_window_ms"], 1_800_000);
        assert_eq!(added["jitter_ms"], 2000);
        assert!(added.get("last_run").is_none());

        // A manual run is the latest run; the scheduler's own last fire is unchanged.
        cron(&url, &["trigger", "nightly"]);
        let shown = json(&cron(&url, &["show", "nightly", "--json"]));
        assert_eq!(shown["last_run"]["kind"], "manual", "{shown}");
        assert!(shown.get("last_fire_at").is_none(), "{shown}");
        let listed = json(&cron(&url, &["list", "--json"]));
        assert_eq!(listed["items"][0]["last_run"]["kind"], "manual");
        let table = cron(&url, &["list"]);
        assert!(table.contains("(manual)"), "{table}");

        // Only what is given changes.
        let updated = json(&cron(
            &url,
            &[
                "update",
                "nightly",
                "--expr",
                "30 4 * * *",
                "--kind",
                "rebuild",
                "--jitter-ms",
                "500",
                "--json",
            ],
        ));
        assert_eq!(updated["expr"], "30 4 * * *");
        assert_eq!(updated["job"]["kind"], "rebuild");
        assert_eq!(updated["job"]["queue"], "reports");
        assert_eq!(updated["jitter_ms"], 500);
        assert_eq!(updated["catchup_window_ms"], 1_800_000);
        assert_eq!(updated["timezone"], "UTC");

        let (code, _, err) =
            mortar_testkit::cli(&url, &["cron", "update", "nightly", "--jitter", "soon"]);
        assert_eq!(code, Some(2));
        assert!(err.contains("not a duration"), "{err}");
    })
    .await
    .unwrap();
}
