//! `mortar lock acquire|renew|release|status|list|force-release` against a real node.

use mortar_testkit::{Node, NodeConfig};

#[tokio::test]
async fn acquire_status_renew_release_list() {
    let node = Node::start(NodeConfig::named("lock-cli")).await.unwrap();
    let url = node.url("");
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| mortar_testkit::cli(&url, args);
        let acquired = run(&[
            "lock",
            "acquire",
            "jobs/daily",
            "--ttl",
            "30s",
            "--owner",
            "cli-test",
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_str(&acquired.1).unwrap();
        let lease = v["lease_id"].as_str().unwrap().to_owned();
        let busy = run(&["lock", "acquire", "jobs/daily", "--ttl", "30s"]);
        let run_busy = run(&["lock", "run", "jobs/daily", "--", "true"]);
        assert_eq!(run_busy.0, Some(75), "lock run: held → 75: {}", run_busy.2);
        assert!(run_busy.2.contains("held by `cli-test`"), "{}", run_busy.2);
        let status = run(&["lock", "status", "jobs/daily"]);
        let list = run(&["lock", "list", "--prefix", "jobs/"]);
        let renewed = run(&["lock", "renew", "jobs/daily", &lease, "--ttl", "60s"]);
        let released = run(&["lock", "release", "jobs/daily", &lease]);
        let again = run(&["lock", "release", "jobs/daily", &lease]);
        let bad_ttl = run(&["lock", "acquire", "x", "--ttl", "soon"]);
        (v, busy, status, list, renewed, released, again, bad_ttl)
    })
    .await
    .unwrap();
    let (v, busy, status, list, renewed, released, again, bad_ttl) = out;
    assert_eq!(v["owner"], "cli-test");
    assert_eq!(busy.0, Some(1));
    assert!(busy.2.contains("held by `cli-test`"), "{}", busy.2);
    assert!(
        status.1.starts_with("NAME") && status.1.contains("cli-test"),
        "{}",
        status.1
    );
    assert!(list.1.contains("jobs/daily"), "{}", list.1);
    assert!(renewed.1.contains("fencing token"), "{}", renewed.1);
    assert_eq!(released.0, Some(0));
    assert_eq!(again.0, Some(1));
    assert!(again.2.contains("gone"), "{}", again.2);
    assert_eq!(bad_ttl.0, Some(2), "clap rejects a bad duration");
}

#[tokio::test]
async fn force_release_and_lease_ids_in_status() {
    let node = Node::start(NodeConfig::named("lock-cli-force"))
        .await
        .unwrap();
    let url = node.url("");
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| mortar_testkit::cli(&url, args);
        let mut leases = Vec::new();
        for owner in ["w1", "w2"] {
            let (_, out, err) = run(&[
                "lock",
                "acquire",
                "pool/db",
                "--ttl",
                "60s",
                "--permits",
                "2",
                "--owner",
                owner,
                "--json",
            ]);
            let v: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|_| panic!("{err}"));
            leases.push(v["lease_id"].as_str().unwrap().to_owned());
        }
        let status = run(&["lock", "show", "pool/db"]);
        let one = run(&[
            "lock",
            "force-release",
            "pool/db",
            "--lease-id",
            &leases[0],
            "--reason",
            "w1 hung",
        ]);
        let renew = run(&["lock", "renew", "pool/db", &leases[0]]);
        let rest = run(&["lock", "force-release", "pool/db", "--json"]);
        let none = run(&["lock", "force-release", "pool/db"]);
        let help = run(&["lock", "force-release", "--help"]);
        (leases, status, one, renew, rest, none, help)
    })
    .await
    .unwrap();
    let (leases, status, one, renew, rest, none, help) = out;
    // Auth is off on this node: the caller has full rights, lease ids included.
    assert!(
        status.1.lines().next().unwrap().ends_with("LEASE"),
        "{}",
        status.1
    );
    for lease in &leases {
        assert!(status.1.contains(lease.as_str()), "{}", status.1);
    }
    assert_eq!(one.0, Some(0), "{}", one.2);
    assert!(
        one.1.starts_with("force-released 1 lease(s) of pool/db"),
        "{}",
        one.1
    );
    assert!(
        one.1.contains("w1") && one.1.contains(&leases[0]) && !one.1.contains("w2"),
        "{}",
        one.1
    );
    assert_eq!(renew.0, Some(1), "the evicted lease is gone: {}", renew.2);
    assert!(renew.2.contains("gone"), "{}", renew.2);
    let v: serde_json::Value = serde_json::from_str(&rest.1).unwrap();
    assert_eq!(v["released"][0]["owner"], "w2", "{v}");
    assert_eq!(none.0, Some(1));
    assert!(none.2.contains("nobody holds lock `pool/db`"), "{}", none.2);
    assert!(
        help.1.contains("--lease-id") && help.1.contains("--reason"),
        "{}",
        help.1
    );
}
