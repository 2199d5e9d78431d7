//! Through a real Redis client (redis-rs): every command against mortar's RESP server, and the
//! same script against the real Redis on 6379 (MORTAR_TEST_REDIS_URL) — the replies must match.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mortar_cache::{CacheConfig, CacheService};
use mortar_core::http::Listeners;
use redis::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mortar_resp(
    password: Option<&str>,
) -> (String, Arc<CacheService>, tokio::sync::watch::Sender<bool>) {
    mortar_resp_with(&CacheConfig::default(), password)
}

fn mortar_resp_with(
    cfg: &CacheConfig,
    password: Option<&str>,
) -> (String, Arc<CacheService>, tokio::sync::watch::Sender<bool>) {
    let svc = CacheService::new(cfg, password.map(str::to_owned));
    let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let url = format!("redis://{}", listeners.local_addr());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let busy_poll = CacheConfig::default().resp_busy_poll();
    tokio::spawn(mortar_cache::server::serve(
        listeners,
        svc.clone(),
        busy_poll,
        rx,
    ));
    (url, svc, tx)
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Runs a command, returning the reply or the error text (so errors can be compared too).
async fn run(c: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> Result<Value, String> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<Value>(c).await.map_err(|e| {
        // redis-rs splits "ERR msg" into a kind and a detail; compare the whole text.
        let s = e.to_string();
        s.split_once(": ").map_or(s.clone(), |(_, d)| d.to_owned())
    })
}

/// The script: (command, whether the reply can be compared exactly with Redis).
fn script(p: &str) -> Vec<Vec<String>> {
    let k = |s: &str| format!("{p}{s}");
    let lines: Vec<Vec<String>> = vec![
        vec!["SET".into(), k("a"), "hello".into()],
        vec!["GET".into(), k("a")],
        vec!["GET".into(), k("missing")],
        vec!["SET".into(), k("a"), "x".into(), "NX".into()],
        vec![
            "SET".into(),
            k("a"),
            "world".into(),
            "XX".into(),
            "GET".into(),
        ],
        vec!["SET".into(), k("new"), "v".into(), "XX".into()],
        vec!["SET".into(), k("a"), "v".into(), "NX".into(), "XX".into()],
        vec!["SET".into(), k("a"), "v".into(), "EX".into(), "0".into()],
        vec!["SET".into(), k("a"), "v".into(), "EX".into(), "ten".into()],
        vec!["SET".into(), k("a"), "v".into(), "BOGUS".into()],
        vec!["SET".into(), k("t"), "v".into(), "EX".into(), "100".into()],
        vec!["TTL".into(), k("t")],
        vec!["SET".into(), k("t"), "w".into(), "KEEPTTL".into()],
        vec!["TTL".into(), k("t")],
        vec!["PERSIST".into(), k("t")],
        vec!["TTL".into(), k("t")],
        vec!["TTL".into(), k("missing")],
        vec!["PTTL".into(), k("missing")],
        vec!["EXPIRE".into(), k("t"), "100".into(), "XX".into()],
        vec!["EXPIRE".into(), k("t"), "100".into(), "NX".into()],
        vec!["EXPIRE".into(), k("t"), "50".into(), "GT".into()],
        vec!["EXPIRE".into(), k("t"), "50".into(), "LT".into()],
        vec![
            "EXPIRE".into(),
            k("t"),
            "50".into(),
            "NX".into(),
            "XX".into(),
        ],
        vec!["EXPIRE".into(), k("missing"), "10".into()],
        vec!["SETNX".into(), k("n"), "1".into()],
        vec!["SETNX".into(), k("n"), "2".into()],
        vec!["INCR".into(), k("n")],
        vec!["INCRBY".into(), k("n"), "10".into()],
        vec!["DECR".into(), k("n")],
        vec!["DECRBY".into(), k("n"), "5".into()],
        vec!["INCR".into(), k("a")],
        vec!["SET".into(), k("big"), "9223372036854775807".into()],
        vec!["INCR".into(), k("big")],
        vec!["INCRBYFLOAT".into(), k("f"), "10.5".into()],
        vec!["INCRBYFLOAT".into(), k("f"), "0.1".into()],
        vec!["INCRBYFLOAT".into(), k("f"), "x".into()],
        vec!["APPEND".into(), k("s"), "Hello".into()],
        vec!["APPEND".into(), k("s"), " World".into()],
        vec!["STRLEN".into(), k("s")],
        vec!["STRLEN".into(), k("missing")],
        vec!["GETRANGE".into(), k("s"), "0".into(), "4".into()],
        vec!["GETRANGE".into(), k("s"), "-5".into(), "-1".into()],
        vec!["SETRANGE".into(), k("s"), "6".into(), "Redis".into()],
        vec!["GET".into(), k("s")],
        vec!["SETRANGE".into(), k("pad"), "3".into(), "x".into()],
        vec!["GET".into(), k("pad")],
        vec!["MSET".into(), k("m1"), "1".into(), k("m2"), "2".into()],
        vec!["MGET".into(), k("m1"), k("missing"), k("m2")],
        vec!["MSETNX".into(), k("m1"), "x".into(), k("m3"), "3".into()],
        vec!["MSETNX".into(), k("m3"), "3".into(), k("m4"), "4".into()],
        vec!["EXISTS".into(), k("m1"), k("m3"), k("missing"), k("m1")],
        vec!["DEL".into(), k("m1"), k("missing")],
        vec!["UNLINK".into(), k("m2")],
        vec!["GETSET".into(), k("g"), "one".into()],
        vec!["GETSET".into(), k("g"), "two".into()],
        vec!["GETDEL".into(), k("g")],
        vec!["GETDEL".into(), k("g")],
        vec!["SET".into(), k("e"), "v".into()],
        vec!["GETEX".into(), k("e"), "PX".into(), "100000".into()],
        vec!["GETEX".into(), k("e"), "PERSIST".into()],
        vec!["TTL".into(), k("e")],
        vec!["TYPE".into(), k("e")],
        vec!["TYPE".into(), k("missing")],
        vec!["GET".into()],
        vec!["GET".into(), k("a"), k("b")],
        vec!["SETEX".into(), k("x"), "-1".into(), "v".into()],
        vec!["PSETEX".into(), k("x"), "5000".into(), "v".into()],
        vec!["NOSUCHCOMMAND".into(), "arg".into()],
        vec!["PING".into()],
        vec!["PING".into(), "hi".into()],
        vec!["ECHO".into(), "bin\u{0}ary".into()],
        vec!["SELECT".into(), "0".into()],
        vec!["CLIENT".into(), "SETNAME".into(), "tester".into()],
        vec!["CLIENT".into(), "GETNAME".into()],
        vec!["CONFIG".into(), "GET".into(), "nosuchparam*".into()],
        vec!["CONFIG".into()],
        vec!["CONFIG".into(), "GET".into()],
        vec!["CONFIG".into(), "BOGUS".into()],
        vec!["TIME".into(), "extra".into()],
    ];
    lines
}

async fn transcript(url: &str, prefix: &str) -> Vec<(String, Result<Value, String>)> {
    let mut c = conn(url).await;
    let mut out = Vec::new();
    for line in script(prefix) {
        let args: Vec<&str> = line.iter().map(String::as_str).collect();
        let shown = line.join(" ").replace(prefix, "");
        out.push((shown, run(&mut c, &args).await));
    }
    out
}

#[tokio::test]
async fn mortar_answers_like_redis() {
    let (url, _svc, _stop) = mortar_resp(None);
    let mine = transcript(&url, "").await;
    // Spot checks that hold without a reference server.
    let get = |cmd: &str| {
        mine.iter()
            .find(|(c, _)| c == cmd)
            .map(|(_, r)| r.clone())
            .unwrap()
    };
    assert_eq!(get("GET a"), Ok(Value::BulkString(b"hello".to_vec())));
    assert_eq!(get("GET missing"), Ok(Value::Nil));
    assert_eq!(
        get("NOSUCHCOMMAND arg"),
        Err("unknown command 'NOSUCHCOMMAND', with args beginning with: 'arg' ".into())
    );
    assert_eq!(
        get("GET"),
        Err("wrong number of arguments for 'get' command".into())
    );
    assert_eq!(
        get("INCR big"),
        Err("increment or decrement would overflow".into())
    );

    let Some(redis_url) = mortar_testkit::redis_url("mortar_answers_like_redis (reference Redis)")
    else {
        return;
    };
    let prefix = format!("mortar-test:{}:", mortar_core::ids::new_id());
    let reference = transcript(&redis_url, &prefix).await;
    let mut c = conn(&redis_url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let mut diffs = Vec::new();
    for ((cmd, mine), (_, theirs)) in mine.iter().zip(&reference) {
        // The unknown-command error echoes the name as sent; the reference got the same name.
        if mine != theirs {
            diffs.push(format!("{cmd}\n  mortar: {mine:?}\n  redis:  {theirs:?}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "replies differ from Redis:\n{}",
        diffs.join("\n")
    );
}

/// INFO with sections, checked the same way on mortar and on the reference Redis.
async fn check_info_sections(url: &str) {
    let mut c = conn(url).await;
    let mut info = async |sections: &[&str]| -> String {
        let mut cmd = redis::cmd("INFO");
        cmd.arg(sections);
        cmd.query_async(&mut c).await.unwrap()
    };
    let memory = info(&["memory"]).await;
    assert!(
        memory.contains("# Memory") && memory.contains("used_memory:"),
        "{url}: {memory}"
    );
    assert!(
        !memory.contains("# Clients") && !memory.contains("# Server"),
        "{url}: {memory}"
    );
    let two = info(&["CLIENTS", "memory"]).await;
    assert!(
        two.contains("# Clients\r\nconnected_clients:"),
        "{url}: {two}"
    );
    assert!(
        two.contains("# Memory") && !two.contains("# Stats"),
        "{url}: {two}"
    );
    assert_eq!(info(&["nosuchsection"]).await, "", "{url}");
    for every in [&[][..], &["all"], &["everything"], &["default"]] {
        let text = info(every).await;
        for section in ["# Server", "# Clients", "# Memory", "# Stats", "# Keyspace"] {
            assert!(
                text.contains(section),
                "{url}: INFO {every:?} lacks {section}:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn info_sections_like_redis() {
    let (url, _svc, _stop) = mortar_resp(None);
    check_info_sections(&url).await;
    if let Some(redis_url) = mortar_testkit::redis_url("info_sections_like_redis (reference Redis)")
    {
        check_info_sections(&redis_url).await;
    }
}

#[tokio::test]
async fn config_get_and_time_answer_what_tools_ask() {
    let (url, _svc, _stop) = mortar_resp(None);
    let mut c = conn(&url).await;
    let policy: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("MAXMEMORY*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        policy,
        [
            "maxmemory",
            &(256 * 1024 * 1024).to_string(),
            "maxmemory-policy",
            "tinylfu"
        ]
    );
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .arg("appendonly")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(save, ["save", "", "appendonly", "no"]);
    let set = run(&mut c, &["CONFIG", "SET", "maxmemory", "1"]).await;
    assert!(set.unwrap_err().contains("mortar.toml"));
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let now = mortar_core::clock::unix_time().as_secs();
    assert!(
        secs.abs_diff(now) <= 2 && micros < 1_000_000,
        "{secs} {micros}"
    );
}

#[tokio::test]
async fn pipelining_keys_scan_info_dbsize_flush() {
    let (url, _svc, _stop) = mortar_resp(None);
    let mut c = conn(&url).await;
    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.cmd("SET").arg(format!("user:{i}")).arg(i).ignore();
    }
    pipe.cmd("DBSIZE");
    let (n,): (i64,) = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(n, 500);
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("user:1?")
        .query_async(&mut c)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(keys.len(), 10);
    // SCAN returns every key exactly once across the iteration.
    let mut seen = std::collections::HashSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(37)
            .query_async(&mut c)
            .await
            .unwrap();
        for k in batch {
            assert!(seen.insert(k), "a key came twice");
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen.len(), 500);
    let info: String = redis::cmd("INFO").query_async(&mut c).await.unwrap();
    for field in [
        "redis_version:",
        "connected_clients:",
        "used_memory:",
        "keyspace_hits:",
        "db0:keys=500",
    ] {
        assert!(info.contains(field), "INFO lacks {field}:\n{info}");
    }
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut c).await.unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn hello_3_speaks_resp3_and_auth_uses_the_token() {
    let (url, _svc, _stop) = mortar_resp(Some("s3cret-token-value"));
    let addr = url.trim_start_matches("redis://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let read = async |s: &mut tokio::net::TcpStream| {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    s.write_all(b"GET k\r\n").await.unwrap();
    assert_eq!(read(&mut s).await, "-NOAUTH Authentication required.\r\n");
    s.write_all(b"AUTH wrong\r\n").await.unwrap();
    assert!(read(&mut s).await.starts_with("-WRONGPASS"));
    s.write_all(b"HELLO 3 AUTH default s3cret-token-value\r\n")
        .await
        .unwrap();
    let hello = read(&mut s).await;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    s.write_all(b"GET missing\r\n").await.unwrap();
    assert_eq!(read(&mut s).await, "_\r\n", "RESP3 null");
    s.write_all(b"HELLO 4\r\n").await.unwrap();
    assert!(read(&mut s).await.starts_with("-NOPROTO"));
    s.write_all(b"QUIT\r\n").await.unwrap();
    assert_eq!(read(&mut s).await, "+OK\r\n");
}

/// Reads until the server closes the connection (a reset after the reply counts as closed).
async fn read_until_closed(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn before_auth_large_lengths_are_refused_and_memory_stays_bounded() {
    let (url, _svc, _stop) = mortar_resp(Some("s3cret-token-value"));
    let addr = url.trim_start_matches("redis://").to_owned();
    for (header, error) in [
        (
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$62914560\r\n"[..],
            "-ERR Protocol error: unauthenticated bulk length\r\n",
        ),
        (
            b"*11\r\n",
            "-ERR Protocol error: unauthenticated multibulk length\r\n",
        ),
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(header).await.unwrap();
        assert_eq!(read_until_closed(&mut s).await, error);
    }
    // After AUTH the configured limit applies again.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"AUTH s3cret-token-value\r\n").await.unwrap();
    let mut ok = [0u8; 5];
    s.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    let value = vec![b'v'; 100_000];
    s.write_all(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", value.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(&value).await.unwrap();
    s.write_all(b"\r\n").await.unwrap();
    s.read_exact(&mut ok).await.unwrap();
    assert_eq!(&ok, b"+OK\r\n");

    // The attack: 10 unauthenticated clients each sending a 60 MB value.
    let before = rss_bytes();
    let chunk: Arc<[u8]> = vec![b'x'; 1 << 20].into();
    let mut attackers = Vec::new();
    for _ in 0..10 {
        let (addr, chunk) = (addr.clone(), chunk.clone());
        attackers.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut sent = 0usize;
            if s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$62914560\r\n")
                .await
                .is_ok()
            {
                while sent < 60 << 20 {
                    let w = tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await;
                    if !matches!(w, Ok(Ok(()))) {
                        break;
                    }
                    sent += chunk.len();
                }
            }
            sent
        }));
    }
    for a in attackers {
        let sent = a.await.unwrap();
        assert!(
            sent < 60 << 20,
            "the server stopped reading ({sent} bytes sent)"
        );
    }
    let grew = rss_bytes().saturating_sub(before);
    assert!(grew < 32 << 20, "memory grew by {grew} bytes");
}

#[tokio::test]
async fn connections_past_max_clients_are_refused() {
    let cfg = CacheConfig {
        max_clients: 3,
        ..CacheConfig::default()
    };
    let (url, _svc, _stop) = mortar_resp_with(&cfg, None);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(conn(&url).await);
    }
    for c in &mut held {
        assert_eq!(
            run(c, &["PING"]).await,
            Ok(Value::SimpleString("PONG".into()))
        );
    }
    let addr = url.trim_start_matches("redis://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert_eq!(
        read_until_closed(&mut s).await,
        "-ERR max number of clients reached\r\n"
    );
    drop(held);
    // The count follows closed connections.
    let mut again = None;
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"PING\r\n").await.unwrap();
        let mut b = [0u8; 7];
        if s.read_exact(&mut b).await.is_ok() && &b == b"+PONG\r\n" {
            again = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a slot frees when a client leaves");
}

#[tokio::test]
async fn protocol_errors_are_answered_then_the_connection_closes() {
    let (url, _svc, _stop) = mortar_resp(None);
    let addr = url.trim_start_matches("redis://").to_owned();
    for bad in [
        &b"*1\r\n$99999999999\r\n"[..],
        b"*-\r\n",
        b"*1\r\n+PING\r\n",
        b"SET \"unbalanced\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(bad).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("-ERR Protocol error"),
            "{:?} → {text}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[tokio::test]
async fn ttls_expire_and_memory_stays_bounded() {
    let cfg = CacheConfig {
        max_memory: 2 * 1024 * 1024,
        ..CacheConfig::default()
    };
    let svc = CacheService::new(&cfg, None);
    let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let url = format!("redis://{}", listeners.local_addr());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let busy_poll = cfg.resp_busy_poll();
    tokio::spawn(mortar_cache::server::serve(
        listeners,
        svc.clone(),
        busy_poll,
        rx,
    ));
    let mut c = conn(&url).await;
    let _: () = redis::cmd("SET")
        .arg("short")
        .arg("v")
        .arg("PX")
        .arg(30)
        .query_async(&mut c)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    loop {
        let v: Option<String> = redis::cmd("GET")
            .arg("short")
            .query_async(&mut c)
            .await
            .unwrap();
        if v.is_none() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let value = "x".repeat(1000);
    for i in 0..10_000 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(&value)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let used = svc.store.used_memory();
    assert!(used <= cfg.max_memory, "{used} bytes > max_memory");
    assert!(
        svc.store
            .stats
            .evicted
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

/// The process's CPU time so far (user + system), from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses): utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10) // USER_HZ is 100 on Linux
}

/// `cache.resp_busy_poll_us` (on by default): a loop kept busy by clients polls through its
/// short idle gaps (the idle-polling counter grows), and once the clients stop it sleeps again:
/// the counter stops and the process burns (almost) no CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_follows_the_load() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let (url, svc, _tx) = mortar_resp(None);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut c = conn(&url).await;
            while !stop.load(Relaxed) {
                let _: Option<Vec<u8>> = redis::cmd("GET")
                    .arg("busy")
                    .query_async(&mut c)
                    .await
                    .unwrap();
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while svc.busy_poll_us.load(Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the loaded loop never busy-polled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // A spell of polling ends at most 200 µs after the last request.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (polled, cpu) = (svc.busy_poll_us.load(Relaxed), process_cpu());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        svc.busy_poll_us.load(Relaxed),
        polled,
        "still polling with no clients"
    );
    let used = process_cpu().saturating_sub(cpu);
    assert!(
        used < Duration::from_millis(150),
        "an idle server used {used:?} of CPU in 500 ms"
    );
}
