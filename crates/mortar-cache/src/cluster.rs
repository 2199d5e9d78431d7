//! Cluster mode: Redis is the shared tier (L2), each node keeps a near-cache (L1).

//!
//! * Reads: an L1 hit answers at once; a miss reads Redis (value and remaining TTL) and fills
//!   L1 for at most `l1_ttl_ms` — the cap bounds staleness even if an invalidation is lost.
//! * Writes run on Redis (atomic there), then drop the key from this node's L1 and publish an
//!   invalidation that every other node's subscriber applies to its L1.
//! * When the subscription breaks, L1 is cleared on reconnect (we may have missed messages).
//! * Redis unreachable: L1 hits are still served; misses and writes fail fast with an error.
//!
//! Keys live in Redis as `<redis_prefix>cache:<key>`, so several deployments can share one Redis.

// a, c, k, v: command args, the Redis command, keys, values.
#![allow(clippy::many_single_char_names)]

use std::sync::Arc;
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

    async fn query(&self, cmd: redis::Cmd) -> Result<redis::Value, Reply> {
        // The shared connection, not the event loop's own (`Redis::conn()`): its replies are
        // read on the runtime the invalidation subscriber runs on. Read on another thread, a
        // fetch's reply more often overtakes an earlier write's invalidation, which then
        // empties the near-cache entry just filled (safe, but a needless miss).
        let mut conn = self.redis.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<redis::Value>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.code().is_some() => Err(Reply::err(format!(
                "{} {}",
                e.code().unwrap_or("ERR"),
                e.detail().unwrap_or_default()
            ))),
            Ok(Err(e)) => Err(unavailable(&e.to_string())),
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
            svc.store.remove(k);
        }
        l2.publish(&touched).await;
    }
    reply
}

async fn get(svc: &CacheService, l2: &L2, key: &Bytes) -> Reply {
    if let Some(v) = svc.store.get(key) {
        return Reply::Bulk(v.data);
    }
    let mut pipe = redis::pipe();
    pipe.cmd("GET")
        .arg(l2.key(key))
        .cmd("PTTL")
        .arg(l2.key(key));
    let mut conn = l2.redis.conn.clone();
    let r = tokio::time::timeout(
        l2.timeout,
        pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut conn),
    )
    .await;
    match r {
        Ok(Ok((Some(data), pttl))) => {
            let cap = now_ms() + l2.l1_ttl_ms;
            let until = if pttl > 0 {
                (now_ms() + pttl as u64).min(cap)
            } else {
                cap
            };
            let data = Bytes::from(data);
            svc.store.set(
                key,
                &Value {
                    data: data.clone(),
                    expires_at_ms: Some(until),
                },
            );
            Reply::Bulk(data)
        }
        Ok(Ok((None, _))) => Reply::Null,
        Ok(Err(e)) => unavailable(&e.to_string()),
        Err(_) => unavailable(&format!("no answer within {} ms", l2.timeout.as_millis())),
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
    svc.store.clear();
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
                        svc.store.clear();
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
                                svc.store.clear();
                            } else {
                                svc.store.remove(k);
                            }
                        }
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
