//! End to end through the `mortar` binary: configuration, the listener's hygiene (slow
//! headers, idle connections, connection limit), graceful shutdown, OTLP export, promtool,
//! the CLI, and readiness when a backend dies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mortar_testkit::{Node, NodeConfig, mortar_bin};
use serde_json::Value;

const ADMIN: &str = "e2e-admin-token-0123456789";

fn mortar(args: &[&str], dir: &std::path::Path, env: &[(&str, &str)]) -> Output {
    Command::new(mortar_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("MORTAR_DATABASE_URL")
        .env_remove("MORTAR_REDIS_URL")
        .env_remove("MORTAR_URL")
        .env_remove("MORTAR_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run mortar")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn a_typo_in_the_config_file_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mortar.toml"), "lisen = \"127.0.0.1:0\"\n").unwrap();
    let out = mortar(&["serve"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("lisen") && err.contains("unknown field") && err.contains("mortar.toml"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("mortar.toml"),
        "[http]\nmax_connections = \"lots\"\n",
    )
    .unwrap();
    let err = stderr(&mortar(&["serve"], dir.path(), &[]));
    assert!(
        err.contains("http.max_connections") && err.contains("invalid type"),
        "{err}"
    );

    std::fs::write(
        dir.path().join("mortar.toml"),
        "[http]\nmax_connections = 0\n",
    )
    .unwrap();
    let err = stderr(&mortar(&["serve"], dir.path(), &[]));
    assert!(
        err.contains("http.max_connections") && err.contains("at least 1"),
        "{err}"
    );

    let err = stderr(&mortar(
        &["serve", "--config", "missing.toml"],
        dir.path(),
        &[],
    ));
    assert!(
        err.contains("missing.toml") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn a_bad_environment_variable_fails_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = mortar(
        &["serve"],
        dir.path(),
        &[("MORTAR_HTTP__MAX_BODY_BYTES", "huge")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("http.max_body_bytes") && err.contains("environment"),
        "{err}"
    );
    let err = stderr(&mortar(
        &["serve"],
        dir.path(),
        &[("MORTAR_HTTP__MAX_BODYBYTES", "1")],
    ));
    assert!(err.contains("max_bodybytes"), "{err}");
}

#[test]
fn print_config_shows_precedence_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mortar.toml"),
        "listen = \"127.0.0.1:1111\"\n[http]\nmax_body_bytes = 5\n",
    )
    .unwrap();
    let env = [
        ("MORTAR_LISTEN", "127.0.0.1:2222"),
        ("MORTAR_AUTH__ADMIN_TOKEN", ADMIN),
    ];
    let out = stdout(&mortar(&["serve", "--print-config"], dir.path(), &env));
    assert!(
        out.contains("listen = \"127.0.0.1:2222\""),
        "env beats file:\n{out}"
    );
    assert!(
        out.contains("max_body_bytes = 5"),
        "file beats defaults:\n{out}"
    );
    assert!(out.contains("admin_token = \"<redacted>\"") && !out.contains(ADMIN));
    assert!(
        out.contains("# largest request body accepted"),
        "keys are documented:\n{out}"
    );
    let out = stdout(&mortar(
        &["serve", "--print-config", "--listen", "127.0.0.1:3333"],
        dir.path(),
        &env,
    ));
    assert!(
        out.contains("listen = \"127.0.0.1:3333\""),
        "flag beats env:\n{out}"
    );
}

#[test]
fn refuses_a_public_listen_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = mortar(&["serve", "--listen", "0.0.0.0:0"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--insecure"), "{}", stderr(&out));
    assert!(stderr(&out).contains("`listen`"), "{}", stderr(&out));
}

#[test]
fn refuses_a_public_resp_listener_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = mortar(
        &["serve", "--listen", "127.0.0.1:0"],
        dir.path(),
        &[("MORTAR_CACHE__RESP_LISTEN", "0.0.0.0:0")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`cache.resp_listen`") && stderr(&out).contains("--insecure"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn resp_listen_flag_and_a_taken_port_named_by_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = stdout(&mortar(
        &["serve", "--print-config", "--resp-listen", "127.0.0.1:7777"],
        dir.path(),
        &[("MORTAR_CACHE__RESP_LISTEN", "127.0.0.1:7000")],
    ));
    assert!(
        out.contains("resp_listen = \"127.0.0.1:7777\""),
        "the flag beats env:\n{out}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let out = mortar(
        &["serve", "--listen", "127.0.0.1:0", "--resp-listen", &port],
        dir.path(),
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("cache.resp_listen") && stderr(&out).contains("--resp-listen"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains('\x1b'),
        "no colour codes when stderr is not a terminal: {:?}",
        stderr(&out)
    );
}

#[tokio::test]
async fn insecure_flag_allows_a_public_listen() {
    let public = "0.0.0.0:0".parse().unwrap();
    let node = Node::start(NodeConfig::named("public").arg("--insecure").listen(public))
        .await
        .unwrap();
    assert!(node.addr.ip().is_unspecified());
}

fn raw_connect(node: &Node) -> TcpStream {
    let s = TcpStream::connect(node.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the peer closes; returns what was read.
fn read_to_close(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).map(|_| out)
}

#[tokio::test]
async fn a_client_sending_headers_slowly_is_cut_off() {
    let node = Node::start(
        NodeConfig::named("slowloris").env("MORTAR_HTTP__HEADER_READ_TIMEOUT_MS", "500"),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let handle = std::thread::spawn({
        let mut s = raw_connect(&node);
        move || {
            // One byte every 200 ms: the headers would take ~8 s to arrive.
            for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: yes\r\n\r\n" {
                if s.write_all(&[*b]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
                let mut probe = [0u8; 1];
                s.set_nonblocking(true).unwrap();
                let closed = matches!(s.read(&mut probe), Ok(0));
                s.set_nonblocking(false).unwrap();
                if closed {
                    return true;
                }
            }
            false
        }
    });
    let cut_off = tokio::task::spawn_blocking(move || handle.join().unwrap())
        .await
        .unwrap();
    assert!(cut_off, "the server waited for the whole slow header");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "cut off after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let node = Node::start(NodeConfig::named("idle").env("MORTAR_HTTP__IDLE_TIMEOUT_MS", "300"))
        .await
        .unwrap();
    let mut s = raw_connect(&node);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let start = Instant::now();
    let got = tokio::task::spawn_blocking(move || read_to_close(&mut s))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    // The node logs `listening` only once the app is built; skip the readiness probe so no
    // other connection competes for the only slot.
    let mut cfg = NodeConfig::named("limit").env("MORTAR_HTTP__MAX_CONNECTIONS", "1");
    cfg.wait_ready = false;
    let node = Node::start(cfg).await.unwrap();
    let mut first = raw_connect(&node);
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    let mut second = raw_connect(&node);
    second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let early = second.read(&mut buf);
    assert!(
        early.is_err(),
        "served a second connection while the limit is 1: {early:?}"
    );

    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let got = tokio::task::spawn_blocking(move || read_to_close(&mut second))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
}

async fn metric(node: &Node, name: &str) -> f64 {
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut node = Node::start(NodeConfig::named("graceful")).await.unwrap();
    let url = node.url("/debug/pprof/profile?seconds=2");
    let in_flight = tokio::spawn(async move {
        let r = reqwest::get(url).await.unwrap();
        (r.status(), r.bytes().await.unwrap().len())
    });
    // Wait until the profile request is being served (the metrics request itself is one).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "mortar_http_requests_in_flight").await < 2.0 {
        assert!(Instant::now() < deadline, "profile request never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.send_sigterm().unwrap();
    let (status, len) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert!(len > 0);
    let exit = tokio::task::spawn_blocking(move || {
        let status = node.wait().unwrap();
        (status, node.logs())
    })
    .await
    .unwrap();
    assert_eq!(exit.0.code(), Some(0), "{}", exit.1);
    assert!(
        exit.1.contains("shutting down") && exit.1.contains("stopped"),
        "{}",
        exit.1
    );
    assert!(
        !exit.1.contains("\"level\":\"ERROR\""),
        "a clean shutdown logs no error:\n{}",
        exit.1
    );
}

#[tokio::test]
async fn sigterm_answers_waiting_clients_at_once_then_exits() {
    let mut node = Node::start(NodeConfig::named("stop-waits")).await.unwrap();
    let http = reqwest::Client::new();
    let held = http
        .post(node.url("/v1/locks/stop-waits/acquire"))
        .json(&serde_json::json!({"ttl_ms": 60_000, "owner": "holder"}))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    let mut waits = Vec::new();
    for i in 0..3 {
        let (c, url) = (http.clone(), node.url("/v1/locks/stop-waits/acquire"));
        waits.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .json(&serde_json::json!({"ttl_ms": 1000, "wait_ms": 60_000, "owner": format!("w{i}")}))
                .send()
                .await
                .expect("a lock waiter gets a response");
            let retry = r.headers().get("retry-after").cloned();
            (r.status().as_u16(), retry, Instant::now())
        }));
        let (c, url) = (http.clone(), node.url("/v1/jobs/lease"));
        waits.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .json(&serde_json::json!({"queues": ["stop-waits"], "wait_ms": 60_000, "worker": format!("w{i}")}))
                .send()
                .await
                .expect("a waiting lease gets a response");
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["items"], serde_json::json!([]), "{body}");
            (status, None, Instant::now())
        }));
    }
    // Every waiter is waiting before the signal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&node, "mortar_http_requests_in_flight").await < 7.0 {
        assert!(Instant::now() < deadline, "the waiters never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let signalled = Instant::now();
    node.send_sigterm().unwrap();
    let mut last = signalled;
    for w in waits {
        let (status, retry, at) = w.await.unwrap();
        assert!(
            matches!((status, retry.is_some()), (503, true) | (200, false)),
            "status {status}, retry-after {retry:?}"
        );
        last = last.max(at);
    }
    assert!(
        last - signalled < Duration::from_secs(5),
        "waiters answered {:?} after SIGTERM (their wait_ms is 60 s)",
        last - signalled
    );
    let exit =
        tokio::task::spawn_blocking(move || (node.wait().unwrap(), node.logs(), Instant::now()))
            .await
            .unwrap();
    assert_eq!(exit.0.code(), Some(0), "{}", exit.1);
    assert!(
        exit.2 - last < Duration::from_secs(2),
        "exited {:?} after the last response",
        exit.2 - last
    );
}

#[tokio::test]
async fn sigterm_closes_idle_resp_connections_and_exits_zero() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let resp = format!("127.0.0.1:{port}");
    let mut node =
        Node::start(NodeConfig::named("resp-stop").env("MORTAR_CACHE__RESP_LISTEN", &resp))
            .await
            .unwrap();
    // Two idle clients, one of them halfway through a command.
    let mut idle = TcpStream::connect(&resp).unwrap();
    idle.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    idle.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    let mut partial = TcpStream::connect(&resp).unwrap();
    partial.write_all(b"*2\r\n$3\r\nGET\r\n").unwrap();
    node.send_sigterm().unwrap();
    let exit = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::task::spawn_blocking(move || (node.wait().unwrap(), node.logs())),
    )
    .await
    .expect("mortar did not exit within 10 s of SIGTERM with idle RESP clients")
    .unwrap();
    assert_eq!(exit.0.code(), Some(0), "{}", exit.1);
    for mut c in [idle, partial] {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut rest = Vec::new();
        // Closed with nothing more said (a reset if the half command was still unread).
        match c.read_to_end(&mut rest) {
            Ok(n) => assert_eq!(n, 0, "{rest:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_request_id() {
    let node = Node::start(NodeConfig::named("logs").env("MORTAR_LOG__LEVEL", "debug"))
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .get(node.url("/no-such-route"))
        .header("x-request-id", "req-e2e-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = node.logs();
        let lines: Vec<Value> = logs
            .lines()
            .filter_map(|l| {
                l.split_once("] ")
                    .and_then(|(_, json)| serde_json::from_str(json).ok())
            })
            .filter(|v: &Value| v["span"]["request_id"] == "req-e2e-42")
            .collect();
        if let Some(line) = lines
            .iter()
            .find(|v| v["fields"]["message"] == "request served")
        {
            assert_eq!(line["fields"]["status"], 404);
            assert_eq!(line["span"]["trace_id"].as_str().unwrap().len(), 32);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no request log line with the id:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn traces_are_exported_over_otlp() {
    use std::sync::{Arc, Mutex};
    type Exports = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Exports = Arc::default();
    let sink = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                sink.lock().unwrap().push((ct, body.to_vec()));
                http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, collector).await.unwrap() });

    let endpoint = format!("http://{collector_addr}");
    let mut node =
        Node::start(NodeConfig::named("otlp").env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint))
            .await
            .unwrap();
    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = reqwest::Client::new()
        .get(node.url("/healthz"))
        .header("traceparent", format!("00-{trace_hex}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    let tp = r.headers()["traceparent"].to_str().unwrap().to_owned();
    assert!(tp.contains(trace_hex), "{tp}");
    // Shutdown flushes the batch exporter.
    let status = tokio::task::spawn_blocking(move || node.terminate().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let got = received.lock().unwrap().clone();
    assert!(!got.is_empty(), "the collector received nothing");
    assert!(got.iter().all(|(ct, _)| ct == "application/x-protobuf"));
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    assert!(
        got.iter()
            .any(|(_, body)| body.windows(16).any(|w| w == trace_bytes.as_slice())),
        "no exported span belongs to the caller's trace"
    );
}

#[tokio::test]
async fn metrics_pass_promtool() {
    let node = Node::start(NodeConfig::named("promtool")).await.unwrap();
    for path in ["/healthz", "/readyz", "/nope", "/v1/status"] {
        reqwest::get(node.url(path)).await.unwrap();
    }
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "promtool is required in CI (Debian package prometheus)"
        );
        eprintln!("SKIPPED promtool check: install the Debian package prometheus");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        stdout(&out),
        stderr(&out)
    );
}

#[tokio::test]
async fn cli_status_and_keys() {
    let node = Node::start(NodeConfig::named("cli").env("MORTAR_AUTH__ADMIN_TOKEN", ADMIN))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = node.url("");
    let cli = |args: &[&str], token: Option<&str>| {
        let mut env = vec![("MORTAR_URL", url.as_str())];
        if let Some(t) = token {
            env.push(("MORTAR_TOKEN", t));
        }
        let args = args.to_vec();
        let dir = dir.path().to_owned();
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        mortar(&args, &dir, &env_refs)
    };

    let out = cli(&["status"], Some(ADMIN));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("embedded mode") && text.contains("sqlite") && text.contains("ok"),
        "{text}"
    );

    let out = cli(&["status", "--json"], Some(ADMIN));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "embedded");

    let out = cli(&["status"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Authorization: Bearer"),
        "{}",
        stderr(&out)
    );

    let out = cli(
        &[
            "keys",
            "create",
            "--name",
            "ci",
            "--scope",
            "jobs:write",
            "--json",
        ],
        Some(ADMIN),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let key: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = key["secret"].as_str().unwrap();
    let id = key["id"].as_str().unwrap();

    let out = cli(&["status"], Some(secret));
    assert!(
        out.status.success(),
        "an API key may read status: {}",
        stderr(&out)
    );

    let out = cli(&["keys", "list"], Some(ADMIN));
    let text = stdout(&out);
    assert!(
        text.starts_with("ID")
            && text.contains(id)
            && text.contains("jobs:write")
            && !text.contains(secret),
        "{text}"
    );

    let out = cli(
        &[
            "keys",
            "create",
            "--name",
            "bad",
            "--scope",
            "jobs:everything",
        ],
        Some(ADMIN),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a level"), "{}", stderr(&out));

    let out = cli(&["keys", "revoke", id], Some(ADMIN));
    assert!(stdout(&out).contains("revoked"), "{}", stderr(&out));
    assert_eq!(cli(&["status"], Some(secret)).status.code(), Some(1));

    let out = mortar(&["status", "--url", "http://127.0.0.1:1"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot reach"), "{}", stderr(&out));
}

#[tokio::test]
async fn readiness_names_a_backend_that_died() {
    // A private Redis we can kill without disturbing anyone else.
    let Some(svc) = mortar_testkit::services("readiness_names_a_backend_that_died") else {
        return;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let redis_dir = tempfile::tempdir().unwrap();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .current_dir(redis_dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (Debian package redis-server) is needed for this test");
    let redis_url = format!("redis://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = svc.create_database().await.unwrap();
    let node = Node::start(
        NodeConfig::named("readiness")
            .env("MORTAR_DATABASE_URL", &db.url)
            .env("MORTAR_REDIS_URL", &redis_url),
    )
    .await
    .unwrap();
    redis.kill().unwrap();
    redis.wait().unwrap();
    let r = reqwest::get(node.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["dependency"], "redis", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("redis"), "{body}");
    let postgres = body["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "postgres")
        .unwrap();
    assert_eq!(postgres["ok"], true);
    // Liveness is unaffected.
    assert_eq!(
        reqwest::get(node.url("/healthz")).await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn every_request_but_probes_gets_an_access_line() {
    let node = Node::start(NodeConfig::named("access")).await.unwrap();
    let http = reqwest::Client::new();
    for path in ["/healthz", "/metrics", "/v1/status", "/nope"] {
        http.get(node.url(path)).send().await.unwrap();
    }
    node.wait_for_log("\"path\":\"/nope\"", Duration::from_secs(10))
        .await
        .unwrap();
    let served: Vec<Value> = node
        .logs()
        .lines()
        .filter_map(|l| {
            let json = l.split_once("] ").map_or(l, |(_, rest)| rest);
            serde_json::from_str::<Value>(json).ok()
        })
        .filter(|v| v["fields"]["message"] == "request served")
        .collect();
    let paths: Vec<&str> = served
        .iter()
        .filter_map(|v| v["fields"]["path"].as_str())
        .collect();
    assert_eq!(paths, ["/v1/status", "/nope"], "{served:#?}");
    let status = served[0]["fields"]["status"].as_u64();
    assert_eq!(status, Some(200));
    assert_eq!(served[1]["fields"]["status"].as_u64(), Some(404));
    assert_eq!(served[0]["span"]["route"], "/v1/status", "{:#?}", served[0]);
}
