//! Redis backend: one Lua script per operation (atomic per name; every key of a name shares a
//! hash tag), Redis's clock, leases and lines that expire by themselves.
//!
//! Safety model, honestly: Redis acknowledges before its data reaches disk, and a Redis without
//! persistence forgets everything on restart. Then current leases vanish — holders learn it
//! on their next renewal (410), but a holder paused longer than that can still act, so protect
//! the resource with the fencing token. Tokens themselves stay safe across such a restart:
//! each is at least Redis's clock in microseconds, so new tokens exceed every earlier one
//! (unless Redis's clock steps back). PostgreSQL is the choice when losing a lease on a
//! database restart is not acceptable.

use futures_util::future::{BoxFuture, FutureExt};
use mortar_core::storage::Redis;
use redis::Value;

use super::{AcquireArgs, Acquired, LockInfo, LockStore, StoreError};
use crate::engine::{Holder, Waiter};

const SCRIPT: &str = include_str!("lock.lua");

pub struct RedisStore {
    redis: Redis,
    script: redis::Script,
    /// This node's id in the node-lease hash (its waiters carry it).
    node: String,
    node_lease_ms: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.redis.prefix)
            .finish_non_exhaustive()
    }
}

fn err(e: &redis::RedisError) -> StoreError {
    StoreError::new("redis", e)
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn num(v: &Value) -> u64 {
    text(v).parse().unwrap_or(0)
}

/// Parses a holder's `lease_id, token, expires, acquired, owner` (see `flat` in lock.lua).
fn holder(h: &[Value]) -> Holder {
    Holder {
        lease_id: text(&h[0]),
        token: num(&h[1]),
        expires_at_ms: num(&h[2]),
        acquired_at_ms: num(&h[3]),
        owner: text(&h[4]),
    }
}

/// Parses `now, n_holders, holders × 5, waiters × 3` (see `flat` in lock.lua).
fn parse_info(name: &str, permits: u32, items: &[Value]) -> LockInfo {
    let now_ms = items.first().map_or(0, num);
    let n = items.get(1).map_or(0, num) as usize;
    let holders = items[2..2 + 5 * n].chunks_exact(5).map(holder).collect();
    let waiters = items[2 + 5 * n..]
        .chunks_exact(3)
        .map(|w| Waiter {
            ticket: text(&w[0]),
            until_ms: num(&w[1]),
            owner: text(&w[2]),
        })
        .collect();
    LockInfo {
        name: name.to_owned(),
        permits,
        holders,
        waiters,
        now_ms,
    }
}

impl RedisStore {
    pub fn new(redis: Redis) -> Self {
        Self::with_node_lease(redis, crate::config::LockConfig::default().node_lease_ms)
    }

    /// A store whose node renews a liveness lease of `node_lease_ms` (see [`LockStore::heartbeat`]).
    pub fn with_node_lease(redis: Redis, node_lease_ms: u64) -> Self {
        Self {
            redis,
            script: redis::Script::new(SCRIPT),
            node: mortar_core::ids::new_id(),
            node_lease_ms: node_lease_ms.to_string(),
        }
    }

    fn keys(&self, name: &str) -> [String; 7] {
        let [h, line, w, permits, fence, seq] = ["h", "line", "w", "permits", "fence", "seq"]
            .map(|k| self.redis.key("lock", &format!("{{{name}}}:{k}")));
        [
            h,
            line,
            w,
            permits,
            fence,
            seq,
            self.redis.key("lock", "nodes"),
        ]
    }

    async fn run(&self, name: &str, args: &[&str]) -> Result<Value, StoreError> {
        let mut inv = self.script.prepare_invoke();
        for k in self.keys(name) {
            inv.key(k);
        }
        for a in args {
            inv.arg(*a);
        }
        let mut conn = self.redis.conn();
        inv.invoke_async(&mut conn).await.map_err(|e| {
            // Redis unreachable: the lock routes answer 503 at once until the probe sees it back.
            if mortar_core::storage::gate::is_redis_connection_error(&e) {
                self.redis.gate.trip(&e.to_string());
            }
            err(&e)
        })
    }
}

impl LockStore for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn acquire<'a>(&'a self, a: AcquireArgs<'a>) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        async move {
            let lease_id = mortar_core::ids::new_id();
            let (ttl, permits) = (a.ttl_ms.to_string(), a.permits.to_string());
            let v = self
                .run(
                    a.name,
                    &[
                        "acquire",
                        &lease_id,
                        a.owner,
                        &ttl,
                        &permits,
                        a.ticket.unwrap_or(""),
                    ],
                )
                .await?;
            let Value::Array(items) = v else {
                return Err(StoreError::new("redis", "unexpected reply"));
            };
            match text(&items[0]).as_str() {
                "granted" => Ok(Acquired::Granted(Holder {
                    lease_id,
                    owner: a.owner.to_owned(),
                    token: num(&items[1]),
                    expires_at_ms: num(&items[2]),
                    acquired_at_ms: num(&items[3]),
                })),
                "mismatch" => Ok(Acquired::PermitsMismatch {
                    existing: num(&items[1]) as u32,
                }),
                _ => Ok(Acquired::Busy(parse_info(a.name, a.permits, &items[1..]))),
            }
        }
        .boxed()
    }

    fn enqueue<'a>(
        &'a self,
        name: &'a str,
        waiter: Waiter,
        permits: u32,
        wait_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            self.run(
                name,
                &[
                    "enqueue",
                    &waiter.ticket,
                    &waiter.owner,
                    &wait_ms.to_string(),
                    &permits.to_string(),
                    &self.node,
                    &self.node_lease_ms,
                ],
            )
            .await
            .map(drop)
        }
        .boxed()
    }

    fn dequeue<'a>(
        &'a self,
        name: &'a str,
        ticket: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move { self.run(name, &["dequeue", ticket]).await.map(drop) }.boxed()
    }

    fn renew<'a>(
        &'a self,
        name: &'a str,
        lease_id: &'a str,
        ttl_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Holder>, StoreError>> {
        async move {
            match self
                .run(name, &["renew", lease_id, &ttl_ms.to_string()])
                .await?
            {
                Value::Array(v) if v.len() == 4 => Ok(Some(Holder {
                    lease_id: lease_id.to_owned(),
                    token: num(&v[0]),
                    expires_at_ms: num(&v[1]),
                    acquired_at_ms: num(&v[2]),
                    owner: text(&v[3]),
                })),
                _ => Ok(None),
            }
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        lease_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            Ok(matches!(
                self.run(name, &["release", lease_id]).await?,
                Value::Int(1)
            ))
        }
        .boxed()
    }

    fn force_release<'a>(
        &'a self,
        name: &'a str,
        lease_id: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<Holder>, StoreError>> {
        async move {
            let Value::Array(items) = self.run(name, &["evict", lease_id.unwrap_or("")]).await?
            else {
                return Ok(Vec::new());
            };
            let mut evicted: Vec<Holder> = items.chunks_exact(5).map(holder).collect();
            evicted.sort_by_key(|h| h.token);
            Ok(evicted)
        }
        .boxed()
    }

    fn inspect<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<LockInfo>, StoreError>> {
        async move {
            let Value::Array(items) = self.run(name, &["inspect"]).await? else {
                return Ok(None);
            };
            let permits = num(&items[0]) as u32;
            let info = parse_info(name, permits, &items[1..]);
            Ok((!info.holders.is_empty() || !info.waiters.is_empty()).then_some(info))
        }
        .boxed()
    }

    fn heartbeat(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            self.run("", &["heartbeat", &self.node, &self.node_lease_ms])
                .await
                .map(drop)
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<LockInfo>, StoreError>> {
        async move {
            let pattern = self
                .redis
                .key("lock", &format!("{{{}*}}:h", glob_escape(prefix)));
            let mut conn = self.redis.conn();
            let mut cursor = 0u64;
            let mut names = Vec::new();
            let head = self.redis.key("lock", "{");
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| err(&e))?;
                for k in keys {
                    if let Some(n) = k.strip_prefix(&head).and_then(|r| r.strip_suffix("}:h"))
                        && n > after
                    {
                        names.push(n.to_owned());
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            names.sort();
            let mut out = Vec::new();
            for n in names {
                if out.len() >= limit {
                    break;
                }
                if let Some(i) = self.inspect(&n).await? {
                    out.push(i);
                }
            }
            Ok(out)
        }
        .boxed()
    }
}

fn glob_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}
