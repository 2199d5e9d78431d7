//! `mortar jobs …` through the binary against a real node: the commands' happy paths, bad
//! input (a clear message, exit code 1), paging and filters, idempotency keys, duration flags,
//! `work --exec` (its log, timeouts and cancellation), and a worker killed with SIGKILL
//! mid-job.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mortar_jobs::client::{Job, JobsClient};
use mortar_testkit::{Node, NodeConfig, mortar_bin};
use serde_json::{Value, json};

fn mortar(node: &Node, args: &[&str]) -> Output {
    Command::new(mortar_bin())
        .args(args)
        .env("MORTAR_URL", node.url(""))
        .env_remove("MORTAR_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(node: &Node, args: &[&str]) -> String {
    let out = mortar(node, args);
    assert!(
        out.status.success(),
        "mortar {args:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json_of(node: &Node, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(node, &all)).unwrap()
}

/// Runs a command that must fail with exit code 1; returns its stderr.
fn fails(node: &Node, args: &[&str]) -> String {
    let out = mortar(node, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "mortar {args:?}: {stderr}");
    assert!(stderr.starts_with("mortar: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

async fn until_state(client: &JobsClient, id: &str, states: &[&str]) -> Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let job = client.get(id).await.unwrap();
        if states.contains(&job.state.as_str()) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never reached {states:?}: {job:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn enqueue_get_list_cancel_retry_and_bad_input() {
    let node = Node::start(NodeConfig::named("jobs-cli")).await.unwrap();
    let out = ok(
        &node,
        &[
            "jobs",
            "enqueue",
            "mail",
            "welcome",
            "--payload",
            r#"{"user":42}"#,
            "--priority",
            "3",
            "--max-attempts",
            "4",
        ],
    );
    assert!(out.starts_with("enqueued "), "{out}");
    assert!(out.contains("on mail (welcome, available)"), "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();

    let job = json_of(&node, &["jobs", "get", &id]);
    assert_eq!(job["payload"], json!({"user": 42}));
    assert_eq!(
        (job["priority"].as_i64(), job["max_attempts"].as_i64()),
        (Some(3), Some(4))
    );
    let detail = ok(&node, &["jobs", "get", &id]);
    assert!(detail.contains("state            available"), "{detail}");
    assert!(
        detail.contains(r#"payload          {"user":42}"#),
        "{detail}"
    );

    let later = json_of(
        &node,
        &["jobs", "enqueue", "mail", "digest", "--delay", "1h"],
    );
    assert_eq!(later["state"], "scheduled");
    let list = ok(&node, &["jobs", "list", "--queue", "mail"]);
    assert!(list.starts_with("ID"), "{list}");
    assert!(list.contains(&id) && list.contains("scheduled"), "{list}");
    let only = json_of(&node, &["jobs", "list", "--state", "scheduled"]);
    assert_eq!(only["items"].as_array().unwrap().len(), 1);

    let later_id = later["id"].as_str().unwrap();
    assert_eq!(
        ok(&node, &["jobs", "cancel", later_id]),
        format!("{later_id} is cancelled\n")
    );
    let e = fails(&node, &["jobs", "cancel", later_id]);
    assert!(e.contains("is cancelled: only"), "{e}");
    assert_eq!(
        ok(&node, &["jobs", "retry", later_id]),
        format!("{later_id} is available\n")
    );

    // Bad input: a clear message on stderr, exit code 1, never a panic.
    let e = fails(
        &node,
        &["jobs", "enqueue", "mail", "k", "--payload", "{not json"],
    );
    assert!(e.contains("--payload is not JSON"), "{e}");
    let e = fails(
        &node,
        &["jobs", "enqueue", "mail", "k", "--priority", "500"],
    );
    assert!(e.contains("priority"), "{e}");
    let e = fails(&node, &["jobs", "enqueue", "bad queue", "k"]);
    assert!(e.contains("queue"), "{e}");
    let e = fails(&node, &["jobs", "get", "01NOSUCHJOB"]);
    assert!(e.contains("no job `01NOSUCHJOB`"), "{e}");
    let e = fails(&node, &["jobs", "list", "--state", "exploded"]);
    assert!(e.contains("state"), "{e}");
    // A server that is not there: exit code 2 and says so.
    let out = Command::new(mortar_bin())
        .args(["jobs", "list", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[tokio::test]
async fn dlq_queues_pause_and_resume() {
    let node = Node::start(NodeConfig::named("jobs-cli-dlq"))
        .await
        .unwrap();
    let client = JobsClient::connect(&node.url(""));
    // Two jobs that die at once.
    let mut dead = Vec::new();
    for _ in 0..2 {
        let j = client
            .enqueue(&json!({"queue": "dlq", "kind": "k", "max_attempts": 1}))
            .await
            .unwrap();
        let leased = client
            .lease(&["dlq".into()], 1, Duration::ZERO, "t")
            .await
            .unwrap();
        let l = &leased[0];
        client
            .fail(&l.id, l.lease_id.as_deref().unwrap(), "boom", true, None)
            .await
            .unwrap();
        dead.push(j.id);
    }
    let dlq = ok(&node, &["jobs", "dlq", "--queue", "dlq"]);
    assert!(
        dlq.contains(&dead[0]) && dlq.contains(&dead[1]) && dlq.contains("dead"),
        "{dlq}"
    );
    assert_eq!(
        ok(&node, &["jobs", "dlq", "--queue", "dlq", "--retry"]),
        "retried 2 dead job(s)\n"
    );
    for id in &dead {
        assert_eq!(client.get(id).await.unwrap().state, "available");
    }
    let queues = json_of(&node, &["jobs", "queues"]);
    let q = queues["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "dlq")
        .unwrap_or_else(|| panic!("{queues}"));
    assert_eq!(q["depth"]["available"], 2, "{q}");
    let table = ok(&node, &["jobs", "queues"]);
    assert!(table.starts_with("QUEUE"), "{table}");

    assert_eq!(ok(&node, &["jobs", "pause", "dlq"]), "paused dlq\n");
    let leased = client
        .lease(&["dlq".into()], 10, Duration::ZERO, "t")
        .await
        .unwrap();
    assert!(
        leased.is_empty(),
        "a paused queue leases nothing: {leased:?}"
    );
    assert!(ok(&node, &["jobs", "queues"]).contains("paused"));
    assert_eq!(ok(&node, &["jobs", "resume", "dlq"]), "resumed dlq\n");
    let leased = client
        .lease(&["dlq".into()], 10, Duration::ZERO, "t")
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    for l in &leased {
        client
            .fail(&l.id, l.lease_id.as_deref().unwrap(), "again", false, None)
            .await
            .unwrap();
    }
    assert_eq!(
        ok(&node, &["jobs", "dlq", "--queue", "dlq", "--discard"]),
        "discarded 2 dead job(s)\n"
    );
    let gone = client.get(&dead[0]).await.unwrap_err();
    assert!(
        matches!(
            gone,
            mortar_core::client::ClientError::Problem { status: 404, .. }
        ),
        "{gone:?}"
    );
}

#[tokio::test]
async fn work_exec_runs_a_command_per_job() {
    let node = Node::start(NodeConfig::named("jobs-cli-work"))
        .await
        .unwrap();
    let client = JobsClient::connect(&node.url(""));
    let fast = json!({"base_ms": 10, "max_ms": 20});
    let echo = client
        .enqueue(&json!({"queue": "sh", "kind": "echo", "payload": {"n": 7}, "backoff": fast}))
        .await
        .unwrap()
        .id;
    let text = client
        .enqueue(&json!({"queue": "sh", "kind": "text", "backoff": fast}))
        .await
        .unwrap()
        .id;
    let failing = client
        .enqueue(&json!({"queue": "sh", "kind": "fail", "max_attempts": 2, "backoff": fast}))
        .await
        .unwrap()
        .id;
    // echo: stdout is the payload plus the environment, as JSON; text: plain text;
    // fail: exit 3 with a message on stderr.
    let script = r#"case "$MORTAR_JOB_KIND" in
  echo) printf '{"stdin":%s,"id":"%s","attempt":%s,"queue":"%s"}' "$(cat)" "$MORTAR_JOB_ID" "$MORTAR_JOB_ATTEMPT" "$MORTAR_JOB_QUEUE" ;;
  text) echo "hello from $MORTAR_JOB_KIND" ;;
  *) echo "went wrong on attempt $MORTAR_JOB_ATTEMPT" >&2; exit 3 ;;
esac"#;
    let worker = tokio::process::Command::new(mortar_bin())
        .args([
            "jobs",
            "work",
            "--queue",
            "sh",
            "--concurrency",
            "2",
            "--exec",
            script,
        ])
        .env("MORTAR_URL", node.url(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let e = until_state(&client, &echo, &["completed", "dead"]).await;
    assert_eq!(
        e.result,
        Some(json!({"stdin": {"n": 7}, "id": echo, "attempt": 1, "queue": "sh"}))
    );
    let t = until_state(&client, &text, &["completed", "dead"]).await;
    assert_eq!(t.result, Some(json!("hello from text")));
    // The server writes a failure's error just after the state (not in one transaction), so
    // wait for both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let f = loop {
        let f = until_state(&client, &failing, &["completed", "dead"]).await;
        if f.errors.len() >= 2 || tokio::time::Instant::now() > deadline {
            break f;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((f.state.as_str(), f.attempt), ("dead", 2));
    assert_eq!(f.errors[0].error, "exit code 3: went wrong on attempt 1");
    assert_eq!(f.errors[1].error, "exit code 3: went wrong on attempt 2");

    // SIGTERM: a graceful stop with a summary.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), worker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stopped: 2 completed, 2 failed"),
        "{stdout}"
    );
    // One line per job start and end on stderr: id, queue/kind, attempt, outcome, run time.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("mortar: job {echo} (sh/echo, attempt 1) started")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "mortar: job {echo} (sh/echo, attempt 1) completed in "
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "mortar: job {failing} (sh/fail, attempt 2) failed in "
        )) && stderr.contains("s: exit code 3: went wrong on attempt 2"),
        "{stderr}"
    );

    // Bad input: no command.
    let o = mortar(&node, &["jobs", "work", "--queue", "sh", "--exec", " "]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--exec needs a command"));
}

#[tokio::test]
async fn a_worker_killed_mid_job_loses_the_job_to_the_next_attempt() {
    // Leases of 600 ms; the job may run a minute.
    let node = Node::start(NodeConfig::named("jobs-cli-kill").env("MORTAR_JOBS__LEASE_MS", "600"))
        .await
        .unwrap();
    let client = JobsClient::connect(&node.url(""));
    let id = client
        .enqueue(&json!({"queue": "k9", "kind": "slow", "timeout_ms": 60_000}))
        .await
        .unwrap()
        .id;
    // The command runs far longer than the lease; the worker's heartbeats keep it.
    let mut worker = Command::new(mortar_bin())
        .args(["jobs", "work", "--queue", "k9", "--exec", "sleep 5"])
        .env("MORTAR_URL", node.url(""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = until_state(&client, &id, &["running"]).await;
    assert_eq!(running.attempt, 1);
    let killed_lease = running.lease_id.clone().unwrap();
    worker.kill().unwrap(); // SIGKILL
    worker.wait().unwrap();

    // The lease runs out (no more heartbeats); the job is leased again, attempt counted.
    let again = client
        .lease(&["k9".into()], 1, Duration::from_secs(10), "rescuer")
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "the job comes back after its lease expires");
    assert_eq!((again[0].id.as_str(), again[0].attempt), (id.as_str(), 2));
    assert_ne!(again[0].lease_id.as_deref(), Some(killed_lease.as_str()));

    let first = client.get(&id).await.unwrap();
    assert!(
        first.errors[0].error.starts_with("lease expired"),
        "{first:#?}"
    );

    // The killed worker's lease can no longer complete it.
    let late = client.complete(&id, &killed_lease, None).await.unwrap_err();
    assert!(
        matches!(
            late,
            mortar_core::client::ClientError::Problem { status: 409, .. }
        ),
        "{late:?}"
    );
    let done = client
        .complete(&id, again[0].lease_id.as_deref().unwrap(), None)
        .await
        .unwrap();
    assert_eq!((done.state.as_str(), done.attempt), ("completed", 2));
}

#[tokio::test]
async fn list_pages_kinds_idempotency_keys_and_duration_flags() {
    let node = Node::start(NodeConfig::named("jobs-cli-flags"))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for kind in ["a", "b", "a"] {
        let j = json_of(&node, &["jobs", "enqueue", "pages", kind]);
        ids.push(j["id"].as_str().unwrap().to_owned());
    }
    // A page at a time: the table says how to ask for the next one.
    let first = ok(&node, &["jobs", "list", "--queue", "pages", "--limit", "1"]);
    assert!(first.contains(&ids[0]), "{first}");
    let hint = format!("(more after {}: add --cursor {})", ids[0], ids[0]);
    assert!(first.contains(&hint), "{first}");
    let second = ok(
        &node,
        &[
            "jobs", "list", "--queue", "pages", "--limit", "1", "--cursor", &ids[0],
        ],
    );
    assert!(
        second.contains(&ids[1]) && !second.contains(&ids[0]),
        "{second}"
    );
    // By kind.
    let a = json_of(&node, &["jobs", "list", "--queue", "pages", "--kind", "a"]);
    let got: Vec<&str> = a["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0].as_str(), ids[2].as_str()]);

    // An Idempotency-Key: the same command again returns the first job.
    let once = ok(
        &node,
        &[
            "jobs",
            "enqueue",
            "pay",
            "charge",
            "--idempotency-key",
            "order-7",
        ],
    );
    let again = ok(
        &node,
        &[
            "jobs",
            "enqueue",
            "pay",
            "charge",
            "--idempotency-key",
            "order-7",
        ],
    );
    let id = once.split_whitespace().nth(1).unwrap();
    assert!(
        again.contains(id) && again.contains("(duplicate: the existing job)"),
        "{once}{again}"
    );
    let e = fails(
        &node,
        &[
            "jobs",
            "enqueue",
            "pay",
            "charge",
            "--idempotency-key",
            "order-7",
            "--payload",
            r#"{"x":1}"#,
        ],
    );
    assert!(
        e.contains("Idempotency-Key"),
        "another body with the same key: {e}"
    );

    // One duration syntax; the API's `_ms` spellings as aliases.
    let j = json_of(&node, &["jobs", "enqueue", "d", "k", "--timeout", "2s"]);
    assert_eq!(j["timeout_ms"], 2000);
    let j = json_of(
        &node,
        &[
            "jobs",
            "enqueue",
            "d",
            "k",
            "--timeout-ms",
            "1500",
            "--delay-ms",
            "60000",
        ],
    );
    assert_eq!(
        (&j["timeout_ms"], &j["state"]),
        (&json!(1500), &json!("scheduled"))
    );
    let out = mortar(&node, &["jobs", "enqueue", "d", "k", "--timeout", "1.5s"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("whole numbers only"));

    // Help for every verb.
    for verb in [
        "pause", "resume", "get", "retry", "cancel", "dlq", "list", "enqueue", "work",
    ] {
        let help = ok(&node, &["jobs", verb, "--help"]);
        assert!(help.lines().count() > 3, "{verb}: {help}");
    }
}

#[tokio::test]
async fn work_exec_stops_a_command_at_its_timeout_and_when_its_job_is_cancelled() {
    // Leases of 600 ms: heartbeats every 200 ms, which is how the cancellation arrives.
    let node = Node::start(NodeConfig::named("jobs-cli-stop").env("MORTAR_JOBS__LEASE_MS", "600"))
        .await
        .unwrap();
    let client = JobsClient::connect(&node.url(""));
    let dir = tempfile::tempdir().unwrap();
    let slow = client
        .enqueue(&json!({"queue": "stop", "kind": "slow", "timeout_ms": 1000, "max_attempts": 1}))
        .await
        .unwrap()
        .id;
    let long = client
        .enqueue(&json!({"queue": "stop", "kind": "long", "timeout_ms": 60_000}))
        .await
        .unwrap()
        .id;
    // Each command notes its pid, then waits on a child of its own; SIGTERM ends both.
    let script = format!(
        r#"echo $$ > "{}/$MORTAR_JOB_KIND.pid"; sleep 30 & wait"#,
        dir.path().display()
    );
    let worker = tokio::process::Command::new(mortar_bin())
        .args([
            "jobs",
            "work",
            "--queue",
            "stop",
            "--concurrency",
            "2",
            "--term-grace",
            "2s",
            "--exec",
            &script,
        ])
        .env("MORTAR_URL", node.url(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    until_state(&client, &long, &["running"]).await;
    let asked = ok(&node, &["jobs", "cancel", &long]);
    assert_eq!(
        asked,
        format!(
            "{long} is running: cancellation requested; its worker stops it at its next heartbeat\n"
        )
    );
    let cancelled = until_state(&client, &long, &["cancelled"]).await;
    assert!(
        cancelled.errors[0]
            .error
            .starts_with("cancelled while running"),
        "{cancelled:#?}"
    );
    let dead = until_state(&client, &slow, &["dead"]).await;
    assert_eq!(dead.errors[0].error, "timed out after 1000 ms", "{dead:#?}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), worker.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("1 timed out, 1 cancelled"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "mortar: job {slow} (stop/slow, attempt 1) timed out after 1000 ms (ran "
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "mortar: job {long} (stop/long, attempt 1) cancelled after "
        )),
        "{stderr}"
    );
    // Both commands are gone: killed, not left running.
    for kind in ["slow", "long"] {
        let pid: i32 = std::fs::read_to_string(dir.path().join(format!("{kind}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH),
            "the {kind} command is still running"
        );
    }
}
