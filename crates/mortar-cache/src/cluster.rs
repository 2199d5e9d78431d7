//! Cluster mode: Redis is the shared tier (L2), each node keeps a near-cache (L1).

//!
//! * Reads: an L1 hit answers at once; a miss reads Redis (value and remaining TTL) and fills
//!   L1 for at most `l1_ttl_ms` — the cap bounds staleness even if an invalidation is lost.
//! * Writes run on Redis (atomic there), then drop the key from this node's L1 and publish an
//!   invalidation that every other node's subscriber applies to its L1.
//! * A fetch's reply and an invalidation travel on different connections, so a reply read
//!   before a write may be handled after that write's invalidation. [`Epochs`] keeps such a
//!   reply out of L1: a fill stands only if no invalidation of the key's stripe (or of
//!   everything) arrived while the fetch was in flight; otherwise the caller still gets the
//!   value, and the next read goes to Redis.
//! * When the subscription breaks, L1 is cleared on reconnect (we may have missed messages).
//! * Redis unreachable: L1 hits are still served; misses and writes fail fast with an error.
//!
//! Keys live in Redis as `<redis_prefix>cache:<key>`, so several deployments can share one Redis.

// a, c, k, v: command args, the Redis command, keys, values.
#![allow(clippy::many_single_char_names)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use mortar_core::storage::Redis;

use crate::commands::{ServerInfo, Session, execute};
use crate::resp::Reply;
use crate::service::CacheService;
use crate::store::{Value, now_ms};

/// The shared tier of a node.
#[derive(Clone)]
pub struct L2 {
    pub redis: Redis,
    pub node_id: String,
    pub l1_ttl_ms: u64,
    pub timeout: Duration,
    channel: String,
    epochs: Arc<Epochs>,
}

/// Invalidation counters, one per stripe of keys (by hash) plus one for "everything", so a
/// fetch can tell whether an invalidation of its key arrived while it was in flight.
///
/// Protocol (both sides `SeqCst`): an invalidation bumps the counter, then drops the key from
/// L1; a fill reads the counter before the fetch, stores into L1, then reads it again and
/// drops its own fill if it moved. Either the second read sees the bump, or the bump (and the
/// drop after it) comes later and removes the fill — a stale value never stays in L1.
pub struct Epochs {
    stripes: Box<[AtomicU64]>,
    all: AtomicU64,
    hasher: foldhash::fast::FixedState,
}

/// What a fill compares against: the key's stripe and the "everything" counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u64, u64);

impl Epochs {
    const STRIPES: usize = 1024;

    pub fn new() -> Self {
        Self {
            stripes: (0..Self::STRIPES).map(|_| AtomicU64::new(0)).collect(),
            all: AtomicU64::new(0),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    fn stripe(&self, key: &[u8]) -> &AtomicU64 {
        use std::hash::BuildHasher as _;
        &self.stripes[self.hasher.hash_one(key) as usize % Self::STRIPES]
    }

    pub fn read(&self, key: &[u8]) -> Epoch {
        Epoch(
            self.stripe(key).load(Ordering::SeqCst),
            self.all.load(Ordering::SeqCst),
        )
    }

    /// Drops `key` from `store` so that no fill in flight puts an older value back.
    pub fn invalidate(&self, store: &crate::store::Store, key: &[u8]) {
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
        store.remove(key);
    }

    /// Empties `store` so that no fill in flight puts an older value back.
    pub fn invalidate_all(&self, store: &crate::store::Store) {
        self.all.fetch_add(1, Ordering::SeqCst);
        store.clear();
    }

    /// Stores a value fetched since `before` — unless an invalidation of its key came in
    /// meanwhile. Returns whether the fill stands.
    pub fn fill(
        &self,
        store: &crate::store::Store,
        key: &[u8],
        value: &Value,
        before: Epoch,
    ) -> bool {
        if self.read(key) != before {
            return false;
        }
        store.set(key, value);
        fence(Ordering::SeqCst);
        if self.read(key) != before {
            store.remove(key);
            return false;
        }
        true
    }
}

impl Default for Epochs {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("prefix", &self.redis.prefix)
            .finish_non_exhaustive()
    }
}

/// Where a command's keys are.
enum Keys {
    None,
    First,
    All,
    Pairs,
}

fn shape(cmd: &str) -> Option<(Keys, bool)> {
    // (where the keys are, whether it writes)
    Some(match cmd {
        "GET" | "TTL" | "PTTL" | "TYPE" | "STRLEN" | "GETRANGE" | "SUBSTR" => (Keys::First, false),
        "SET" | "SETNX" | "SETEX" | "PSETEX" | "GETSET" | "GETDEL" | "GETEX" | "EXPIRE"
        | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "PERSIST" | "INCR" | "DECR" | "INCRBY"
        | "DECRBY" | "INCRBYFLOAT" | "APPEND" | "SETRANGE" => (Keys::First, true),
        "MGET" | "EXISTS" => (Keys::All, false),
        "DEL" | "UNLINK" => (Keys::All, true),
        "MSET" | "MSETNX" => (Keys::Pairs, true),
        "KEYS" | "SCAN" | "DBSIZE" | "FLUSHDB" | "FLUSHALL" => (Keys::None, true),
        _ => return None,
    })
}

impl L2 {
    pub fn new(redis: Redis, l1_ttl_ms: u64, timeout: Duration) -> Self {
        let channel = redis.key("cache", "invalidate");
        Self {
            redis,
            node_id: mortar_core::ids::new_id(),
            l1_ttl_ms,
            timeout,
            channel,
            epochs: Arc::new(Epochs::new()),
        }
    }

    fn key(&self, k: &[u8]) -> Vec<u8> {
        let mut v = self.redis.key("cache", "").into_bytes();
        v.extend_from_slice(k);
        v
    }

    fn strip<'a>(&self, k: &'a [u8]) -> &'a [u8] {
        let p = self.redis.key("cache", "");
        k.strip_prefix(p.as_bytes()).unwrap_or(k)
    }

    /// `Err` at once while Redis is known to be down (its gate is open).
    fn gate(&self) -> Result<(), Reply> {
        self.redis
            .gate
            .check()
            .map_err(|d| unavailable(&d.to_string()))
    }

    /// A failed call: trips the gate when Redis is unreachable.
    fn failed(&self, e: &redis::RedisError) -> Reply {
        if mortar_core::storage::gate::is_redis_connection_error(e) {
            self.redis.gate.trip(&e.to_string());
        }
        unavailable(&e.to_string())
    }

    async fn query(&self, cmd: redis::Cmd) -> Result<redis::Value, Reply> {
        self.gate()?;
        let mut conn = self.redis.conn();
        match tokio::time::timeout(self.timeout, cmd.query_async::<redis::Value>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.code().is_some() => Err(Reply::err(format!(
                "{} {}",
                e.code().unwrap_or("ERR"),
                e.detail().unwrap_or_default()
            ))),
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(unavailable(&format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    async fn publish(&self, keys: &[Bytes]) {
        let mut msg = self.node_id.clone().into_bytes();
        for k in keys {
            msg.push(b'\n');
            msg.extend_from_slice(k);
        }
        let _ = self
            .query(redis::cmd("PUBLISH").arg(&self.channel).arg(msg).clone())
            .await;
    }
}

fn unavailable(why: &str) -> Reply {
    Reply::err(format!("ERR shared cache tier (redis) unavailable: {why}"))
}

fn to_reply(v: redis::Value) -> Reply {
    use redis::Value as V;
    match v {
        V::Nil => Reply::Null,
        V::Int(i) => Reply::Int(i),
        V::BulkString(b) => Reply::Bulk(Bytes::from(b)),
        V::Array(items) | V::Set(items) => Reply::Array(items.into_iter().map(to_reply).collect()),
        V::SimpleString(s) => Reply::Status(s),
        V::Okay => Reply::ok(),
        V::Double(d) => Reply::Double(d),
        V::Boolean(b) => Reply::Int(i64::from(b)),
        V::Map(pairs) => Reply::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (to_reply(k), to_reply(v)))
                .collect(),
        ),
        V::VerbatimString { text, .. } => Reply::Bulk(Bytes::from(text)),
        V::ServerError(e) => {
            Reply::err(format!("{} {}", e.code(), e.details().unwrap_or_default()))
        }
        other => Reply::err(format!("ERR unexpected reply from redis: {other:?}")),
    }
}

/// Executes a command in cluster mode.
pub async fn execute_cluster(
    svc: &CacheService,
    l2: &L2,
    session: &mut Session,
    args: &[Bytes],
) -> Reply {
    let cmd = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
    let Some((keys, writes)) = shape(&cmd) else {
        // Connection and server commands are answered locally.
        return execute(&svc.store, svc, session, args);
    };
    if svc.password().is_some() && !session.authed {
        return Reply::err("NOAUTH Authentication required.");
    }
    let a = &args[1..];
    match cmd.as_str() {
        "GET" if a.len() == 1 => return get(svc, l2, &a[0]).await,
        "KEYS" if a.len() == 1 => {
            let pattern = l2.key(&a[0]);
            return match l2.query(redis::cmd("KEYS").arg(pattern).clone()).await {
                Ok(redis::Value::Array(items)) => Reply::Array(
                    items
                        .into_iter()
                        .filter_map(|k| match k {
                            redis::Value::BulkString(b) => {
                                Some(Reply::Bulk(Bytes::copy_from_slice(l2.strip(&b))))
                            }
                            _ => None,
                        })
                        .collect(),
                ),
                Ok(other) => to_reply(other),
                Err(e) => e,
            };
        }
        "DBSIZE" | "FLUSHDB" | "FLUSHALL" | "SCAN" => return prefix_wide(svc, l2, &cmd, a).await,
        _ => {}
    }
    let mut c = redis::cmd(&cmd);
    let mut touched = Vec::new();
    for (i, arg) in a.iter().enumerate() {
        let is_key = match keys {
            Keys::First => i == 0,
            Keys::All => true,
            Keys::Pairs => i % 2 == 0,
            Keys::None => false,
        };
        if is_key {
            c.arg(l2.key(arg));
            touched.push(arg.clone());
        } else {
            c.arg(arg.as_ref());
        }
    }
    let reply = match l2.query(c).await {
        Ok(v) => to_reply(v),
        Err(e) => return e,
    };
    if writes && !touched.is_empty() && !matches!(reply, Reply::Error(_)) {
        for k in &touched {
            l2.epochs.invalidate(&svc.store, k);
        }
        l2.publish(&touched).await;
    }
    reply
}

async fn get(svc: &CacheService, l2: &L2, key: &Bytes) -> Reply {
    if let Some(v) = svc.store.get(key) {
        return Reply::Bulk(v.data);
    }
    // An invalidation landing while the fetch is in flight keeps its reply out of L1 (it may
    // predate the write). A second fetch, sent after that invalidation, can fill L1 — a write
    // on one node followed by reads on the others is the common case.
    let mut tries = 2;
    loop {
        tries -= 1;
        let before = l2.epochs.read(key);
        let (data, pttl) = match fetch(l2, key).await {
            Ok((Some(data), pttl)) => (Bytes::from(data), pttl),
            Ok((None, _)) => return Reply::Null,
            Err(e) => return e,
        };
        let cap = now_ms() + l2.l1_ttl_ms;
        let until = if pttl > 0 {
            (now_ms() + pttl as u64).min(cap)
        } else {
            cap
        };
        let value = Value {
            data,
            expires_at_ms: Some(until),
        };
        if l2.epochs.fill(&svc.store, key, &value, before) || tries == 0 {
            return Reply::Bulk(value.data);
        }
    }
}

/// A key's value and remaining TTL (ms; negative when none) from Redis.
async fn fetch(l2: &L2, key: &[u8]) -> Result<(Option<Vec<u8>>, i64), Reply> {
    let mut pipe = redis::pipe();
    pipe.cmd("GET")
        .arg(l2.key(key))
        .cmd("PTTL")
        .arg(l2.key(key));
    l2.gate()?;
    let mut conn = l2.redis.conn();
    match tokio::time::timeout(l2.timeout, pipe.query_async(&mut conn)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(l2.failed(&e)),
        Err(_) => Err(unavailable(&format!(
            "no answer within {} ms",
            l2.timeout.as_millis()
        ))),
    }
}

/// Commands over every key of this deployment (SCAN MATCH on the prefix).
async fn prefix_wide(svc: &CacheService, l2: &L2, cmd: &str, a: &[Bytes]) -> Reply {
    if cmd == "SCAN" {
        let Some(cursor) = a.first() else {
            return Reply::err("ERR wrong number of arguments for 'scan' command");
        };
        let mut pattern = l2.key(b"*");
        let mut count = 10u64;
        let mut i = 1;
        while i + 1 < a.len() {
            match String::from_utf8_lossy(&a[i]).to_ascii_uppercase().as_str() {
                "MATCH" => pattern = l2.key(&a[i + 1]),
                "COUNT" => count = String::from_utf8_lossy(&a[i + 1]).parse().unwrap_or(10),
                _ => return Reply::err("ERR syntax error"),
            }
            i += 2;
        }
        return match l2
            .query(
                redis::cmd("SCAN")
                    .arg(cursor.as_ref())
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(count)
                    .clone(),
            )
            .await
        {
            Ok(redis::Value::Array(mut parts)) if parts.len() == 2 => {
                let keys = match parts.pop() {
                    Some(redis::Value::Array(ks)) => ks
                        .into_iter()
                        .filter_map(|k| match k {
                            redis::Value::BulkString(b) => {
                                Some(Reply::Bulk(Bytes::copy_from_slice(l2.strip(&b))))
                            }
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                Reply::Array(vec![to_reply(parts.remove(0)), Reply::Array(keys)])
            }
            Ok(other) => to_reply(other),
            Err(e) => e,
        };
    }
    // DBSIZE / FLUSH*: walk our prefix.
    let mut cursor = 0u64;
    let mut n = 0i64;
    loop {
        let r = l2
            .query(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(l2.key(b"*"))
                    .arg("COUNT")
                    .arg(1000)
                    .clone(),
            )
            .await;
        let (next, keys) = match r {
            Ok(v) => match redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(v) {
                Ok(x) => x,
                Err(e) => return Reply::err(format!("ERR {e}")),
            },
            Err(e) => return e,
        };
        n += keys.len() as i64;
        if cmd != "DBSIZE"
            && !keys.is_empty()
            && let Err(e) = l2.query(redis::cmd("UNLINK").arg(&keys).clone()).await
        {
            return e;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if cmd == "DBSIZE" {
        return Reply::Int(n);
    }
    l2.epochs.invalidate_all(&svc.store);
    l2.publish(&[Bytes::from_static(b"*")]).await;
    Reply::ok()
}

/// Applies other nodes' invalidations to this node's L1, for as long as the service lives.
pub fn spawn_subscriber(svc: &Arc<CacheService>, l2: L2, url: String) {
    let weak = Arc::downgrade(svc);
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let Some(svc) = weak.upgrade() else { return };
            let sub = async {
                let client = redis::Client::open(url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&l2.channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(5), sub).await {
                Ok(Ok(pubsub)) => {
                    if !first {
                        // We may have missed invalidations while disconnected.
                        l2.epochs.invalidate_all(&svc.store);
                        tracing::info!("cache: invalidation channel back; L1 cleared");
                    }
                    first = false;
                    drop(svc);
                    let mut stream = pubsub.into_on_message();
                    while let Some(msg) = stream.next().await {
                        let Some(svc) = weak.upgrade() else { return };
                        let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                        let mut parts = payload.split(|b| *b == b'\n');
                        if parts.next() == Some(l2.node_id.as_bytes()) {
                            continue;
                        }
                        for k in parts {
                            if k == b"*" {
                                l2.epochs.invalidate_all(&svc.store);
                            } else {
                                l2.epochs.invalidate(&svc.store, k);
                            }
                        }
                        svc.store
                            .stats
                            .invalidations
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::warn!("cache: invalidation channel lost; reconnecting");
                }
                _ => {
                    drop(svc);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Policy, Store};

    fn value(v: u64) -> Value {
        Value {
            data: Bytes::from(v.to_string()),
            expires_at_ms: None,
        }
    }

    fn read(store: &Store, key: &[u8]) -> Option<u64> {
        store
            .peek(key)
            .map(|v| std::str::from_utf8(&v.data).unwrap().parse().unwrap())
    }

    #[test]
    fn a_fill_stands_unless_its_key_was_invalidated_in_flight() {
        let store = Store::new(64 << 20, Policy::TinyLfu);
        let e = Epochs::new();

        let before = e.read(b"k");
        assert!(e.fill(&store, b"k", &value(1), before));
        assert_eq!(read(&store, b"k"), Some(1));

        let before = e.read(b"k");
        e.invalidate(&store, b"k");
        assert!(
            !e.fill(&store, b"k", &value(1), before),
            "fetched before the invalidation"
        );
        assert_eq!(read(&store, b"k"), None);

        let before = e.read(b"k");
        e.invalidate_all(&store);
        assert!(
            !e.fill(&store, b"k", &value(1), before),
            "fetched before a flush"
        );
        assert_eq!(read(&store, b"k"), None);

        // Another stripe's invalidation leaves the fill alone.
        let other = (0..10_000u32)
            .map(|i| format!("o{i}"))
            .find(|o| !std::ptr::eq(e.stripe(o.as_bytes()), e.stripe(b"k")))
            .unwrap();
        let before = e.read(b"k");
        e.invalidate(&store, other.as_bytes());
        assert!(e.fill(&store, b"k", &value(2), before));
        assert_eq!(read(&store, b"k"), Some(2));
    }

    /// A writer bumps the value in a stand-in for Redis and invalidates; readers fetch and
    /// fill at any moment. Once the writer is done, L1 holds the last value or nothing — a
    /// plain `set` after the fetch leaves an older value behind in some of these runs.
    #[test]
    fn racing_fills_never_leave_an_older_value() {
        use std::sync::atomic::AtomicBool;
        for _ in 0..30 {
            let store = Store::new(64 << 20, Policy::TinyLfu);
            let e = Epochs::new();
            let redis = AtomicU64::new(0);
            let done = AtomicBool::new(false);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        while !done.load(Ordering::Relaxed) {
                            if store.peek(b"k").is_none() {
                                let before = e.read(b"k");
                                let v = redis.load(Ordering::SeqCst);
                                std::hint::spin_loop();
                                e.fill(&store, b"k", &value(v), before);
                            }
                        }
                    });
                }
                for v in 1..=2_000 {
                    redis.store(v, Ordering::SeqCst);
                    e.invalidate(&store, b"k");
                }
                done.store(true, Ordering::Relaxed);
            });
            let last = redis.load(Ordering::SeqCst);
            let cached = read(&store, b"k");
            assert!(
                cached.is_none() || cached == Some(last),
                "L1 kept {cached:?}, Redis has {last}"
            );
        }
    }
}
