//! The command set, answering as Redis does (same replies, same error texts).

// k, v, a, s, e: the names Redis's own documentation uses for keys, values, args and ranges.
#![allow(clippy::many_single_char_names)]

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::resp::{Reply, format_double};
use crate::store::{Store, Value, now_ms};

/// Per-connection state.
#[derive(Debug, Default)]
pub struct Session {
    pub proto: u8,
    pub name: Option<Bytes>,
    pub authed: bool,
    pub id: u64,
    pub quit: bool,
}

/// What the server knows that commands report (INFO, HELLO).
pub trait ServerInfo {
    fn connected_clients(&self) -> u64;
    fn commands_processed(&self) -> u64;
    fn started_ms(&self) -> u64;
    /// The admin token, if auth is on.
    fn password(&self) -> Option<&str>;
}

const MAX_STRING: usize = 512 * 1024 * 1024;

fn arity(name: &str) -> Reply {
    Reply::err(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn syntax() -> Reply {
    Reply::err("ERR syntax error")
}

fn not_int() -> Reply {
    Reply::err("ERR value is not an integer or out of range")
}

fn int(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// A command name in upper case, in `buf` (no allocation per command); "" when it cannot be
/// one we know (longer than any, or not UTF-8).
fn upper_name<'a>(b: &[u8], buf: &'a mut [u8; 32]) -> &'a str {
    let Some(dst) = buf.get_mut(..b.len()) else {
        return "";
    };
    dst.copy_from_slice(b);
    dst.make_ascii_uppercase();
    std::str::from_utf8(dst).unwrap_or("")
}

/// Executes one command.
pub fn execute(
    store: &Store,
    server: &dyn ServerInfo,
    session: &mut Session,
    args: &[Bytes],
) -> Reply {
    let Some(first) = args.first() else {
        return Reply::err("ERR empty command");
    };
    let mut name = [0u8; 32];
    let cmd = upper_name(first, &mut name);
    let a = &args[1..];
    if server.password().is_some() && !session.authed && !matches!(cmd, "AUTH" | "HELLO" | "QUIT") {
        return Reply::err("NOAUTH Authentication required.");
    }
    match cmd {
        "PING" => match a {
            [] => Reply::Simple("PONG"),
            [m] => Reply::Bulk(m.clone()),
            _ => arity("ping"),
        },
        "ECHO" => match a {
            [m] => Reply::Bulk(m.clone()),
            _ => arity("echo"),
        },
        "QUIT" => {
            session.quit = true;
            Reply::ok()
        }
        "SELECT" => match a {
            [db] if int(db) == Some(0) => Reply::ok(),
            [db] if int(db).is_some() => Reply::err("ERR DB index is out of range"),
            [_] => not_int(),
            _ => arity("select"),
        },
        "AUTH" => auth(server, session, a),
        "HELLO" => hello(server, session, a),
        "CLIENT" => client(session, a),
        "COMMAND" => match a.first().map(|s| upper(s)).as_deref() {
            None | Some("DOCS" | "INFO") => Reply::Array(Vec::new()),
            Some("COUNT") => Reply::Int(COMMANDS.len() as i64),
            Some(_) => syntax(),
        },
        "INFO" => info(store, server, a),
        "CONFIG" => config(store, a),
        "TIME" => match a {
            [] => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from(now.as_secs().to_string())),
                    Reply::Bulk(Bytes::from(now.subsec_micros().to_string())),
                ])
            }
            _ => arity("time"),
        },
        "DBSIZE" => Reply::Int(store.counts().0 as i64),
        "FLUSHDB" | "FLUSHALL" => {
            store.clear();
            Reply::ok()
        }
        "GET" => match a {
            [k] => store.get(k).map_or(Reply::Null, |v| Reply::Bulk(v.data)),
            _ => arity("get"),
        },
        "SET" => set(store, a),
        "SETNX" => match a {
            [k, v] => Reply::Int(i64::from(set_if(store, k, v.clone(), None, Cond::Nx))),
            _ => arity("setnx"),
        },
        "SETEX" | "PSETEX" => match a {
            [k, t, v] => {
                let unit = if cmd == "SETEX" { 1000 } else { 1 };
                match int(t) {
                    Some(n) if n > 0 => {
                        store.set(
                            k,
                            &Value {
                                data: v.clone(),
                                expires_at_ms: Some(
                                    now_ms().saturating_add((n as u64).saturating_mul(unit)),
                                ),
                            },
                        );
                        Reply::ok()
                    }
                    Some(_) => Reply::err(format!(
                        "ERR invalid expire time in '{}' command",
                        cmd.to_ascii_lowercase()
                    )),
                    None => not_int(),
                }
            }
            _ => arity(&cmd.to_ascii_lowercase()),
        },
        "GETSET" => match a {
            [k, v] => store.update(k, |old| {
                (
                    Some(Value {
                        data: v.clone(),
                        expires_at_ms: None,
                    }),
                    old.map_or(Reply::Null, |o| Reply::Bulk(o.data)),
                )
            }),
            _ => arity("getset"),
        },
        "GETDEL" => match a {
            [k] => store.remove(k).map_or(Reply::Null, |v| Reply::Bulk(v.data)),
            _ => arity("getdel"),
        },
        "GETEX" => getex(store, a),
        "MGET" => {
            if a.is_empty() {
                return arity("mget");
            }
            Reply::Array(
                a.iter()
                    .map(|k| store.get(k).map_or(Reply::Null, |v| Reply::Bulk(v.data)))
                    .collect(),
            )
        }
        "MSET" => {
            if a.is_empty() || !a.len().is_multiple_of(2) {
                return arity("mset");
            }
            for kv in a.chunks_exact(2) {
                store.set(
                    &kv[0],
                    &Value {
                        data: kv[1].clone(),
                        expires_at_ms: None,
                    },
                );
            }
            Reply::ok()
        }
        "MSETNX" => {
            if a.is_empty() || !a.len().is_multiple_of(2) {
                return arity("msetnx");
            }
            // Not atomic against a concurrent writer of the same keys; see the crate docs.
            if a.chunks_exact(2).any(|kv| store.peek(&kv[0]).is_some()) {
                return Reply::Int(0);
            }
            for kv in a.chunks_exact(2) {
                store.set(
                    &kv[0],
                    &Value {
                        data: kv[1].clone(),
                        expires_at_ms: None,
                    },
                );
            }
            Reply::Int(1)
        }
        "DEL" | "UNLINK" => {
            if a.is_empty() {
                return arity(&cmd.to_ascii_lowercase());
            }
            Reply::Int(a.iter().filter(|k| store.remove(k).is_some()).count() as i64)
        }
        "EXISTS" => {
            if a.is_empty() {
                return arity("exists");
            }
            Reply::Int(a.iter().filter(|k| store.peek(k).is_some()).count() as i64)
        }
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => expire(store, cmd, a),
        "TTL" | "PTTL" => match a {
            [k] => match store.peek(k) {
                None => Reply::Int(-2),
                Some(Value {
                    expires_at_ms: None,
                    ..
                }) => Reply::Int(-1),
                Some(Value {
                    expires_at_ms: Some(at),
                    ..
                }) => {
                    let left = at.saturating_sub(now_ms());
                    Reply::Int(if cmd == "TTL" {
                        left.div_ceil(1000) as i64
                    } else {
                        left as i64
                    })
                }
            },
            _ => arity(&cmd.to_ascii_lowercase()),
        },
        "PERSIST" => match a {
            [k] => store.update(k, |v| match v {
                Some(v) if v.expires_at_ms.is_some() => (
                    Some(Value {
                        expires_at_ms: None,
                        ..v
                    }),
                    Reply::Int(1),
                ),
                other => (other, Reply::Int(0)),
            }),
            _ => arity("persist"),
        },
        "TYPE" => match a {
            [k] => Reply::Simple(if store.peek(k).is_some() {
                "string"
            } else {
                "none"
            }),
            _ => arity("type"),
        },
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => incr(store, cmd, a),
        "INCRBYFLOAT" => match a {
            [k, by] => {
                let Some(by) = std::str::from_utf8(by)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|f| f.is_finite())
                else {
                    return Reply::err("ERR value is not a valid float");
                };
                store.update(k, |v| {
                    let (cur, ttl) = match &v {
                        Some(v) => match std::str::from_utf8(&v.data)
                            .ok()
                            .and_then(|s| s.parse::<f64>().ok())
                        {
                            Some(f) => (f, v.expires_at_ms),
                            None => {
                                return (
                                    Some(v.clone()),
                                    Reply::err("ERR value is not a valid float"),
                                );
                            }
                        },
                        None => (0.0, None),
                    };
                    let next = cur + by;
                    if !next.is_finite() {
                        return (v, Reply::err("ERR increment would produce NaN or Infinity"));
                    }
                    let text = Bytes::from(format_double(next));
                    (
                        Some(Value {
                            data: text.clone(),
                            expires_at_ms: ttl,
                        }),
                        Reply::Bulk(text),
                    )
                })
            }
            _ => arity("incrbyfloat"),
        },
        "APPEND" => match a {
            [k, add] => store.update(k, |v| {
                let (mut data, ttl) = v.map_or((BytesMut::new(), None), |v| {
                    (BytesMut::from(&v.data[..]), v.expires_at_ms)
                });
                if data.len() + add.len() > MAX_STRING {
                    return (
                        Some(Value {
                            data: data.freeze(),
                            expires_at_ms: ttl,
                        }),
                        Reply::err("ERR string exceeds maximum allowed size (proto-max-bulk-len)"),
                    );
                }
                data.extend_from_slice(add);
                let n = data.len() as i64;
                (
                    Some(Value {
                        data: data.freeze(),
                        expires_at_ms: ttl,
                    }),
                    Reply::Int(n),
                )
            }),
            _ => arity("append"),
        },
        "STRLEN" => match a {
            [k] => Reply::Int(store.peek(k).map_or(0, |v| v.data.len() as i64)),
            _ => arity("strlen"),
        },
        "GETRANGE" | "SUBSTR" => match a {
            [k, s, e] => {
                let (Some(s), Some(e)) = (int(s), int(e)) else {
                    return not_int();
                };
                let data = store.get(k).map(|v| v.data).unwrap_or_default();
                Reply::Bulk(range(&data, s, e))
            }
            _ => arity("getrange"),
        },
        "SETRANGE" => match a {
            [k, off, v] => {
                let Some(off) = int(off) else {
                    return not_int();
                };
                if off < 0 {
                    return Reply::err("ERR offset is out of range");
                }
                let off = off as usize;
                if off + v.len() > MAX_STRING {
                    return Reply::err(
                        "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                    );
                }
                store.update(k, |cur| {
                    if v.is_empty() {
                        let n = cur.as_ref().map_or(0, |c| c.data.len() as i64);
                        return (cur, Reply::Int(n));
                    }
                    let (mut data, ttl) = cur.map_or((BytesMut::new(), None), |c| {
                        (BytesMut::from(&c.data[..]), c.expires_at_ms)
                    });
                    if data.len() < off + v.len() {
                        data.resize(off + v.len(), 0);
                    }
                    data[off..off + v.len()].copy_from_slice(v);
                    let n = data.len() as i64;
                    (
                        Some(Value {
                            data: data.freeze(),
                            expires_at_ms: ttl,
                        }),
                        Reply::Int(n),
                    )
                })
            }
            _ => arity("setrange"),
        },
        "KEYS" => match a {
            [p] => Reply::Array(
                store
                    .keys()
                    .into_iter()
                    .filter(|k| glob(p, k))
                    .map(Reply::Bulk)
                    .collect(),
            ),
            _ => arity("keys"),
        },
        "SCAN" => scan(store, a),
        _ => {
            let shown: Vec<String> = a
                .iter()
                .take(8)
                .map(|x| format!("'{}' ", String::from_utf8_lossy(x)))
                .collect();
            Reply::err(format!(
                "ERR unknown command '{}', with args beginning with: {}",
                String::from_utf8_lossy(first),
                shown.concat()
            ))
        }
    }
}

/// Commands we answer (COMMAND COUNT).
pub const COMMANDS: &[&str] = &[
    "PING",
    "ECHO",
    "QUIT",
    "SELECT",
    "AUTH",
    "HELLO",
    "CLIENT",
    "COMMAND",
    "INFO",
    "CONFIG",
    "TIME",
    "DBSIZE",
    "FLUSHDB",
    "FLUSHALL",
    "GET",
    "SET",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETSET",
    "GETDEL",
    "GETEX",
    "MGET",
    "MSET",
    "MSETNX",
    "DEL",
    "UNLINK",
    "EXISTS",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "TTL",
    "PTTL",
    "PERSIST",
    "TYPE",
    "INCR",
    "DECR",
    "INCRBY",
    "DECRBY",
    "INCRBYFLOAT",
    "APPEND",
    "STRLEN",
    "GETRANGE",
    "SUBSTR",
    "SETRANGE",
    "KEYS",
    "SCAN",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cond {
    Always,
    Nx,
    Xx,
}

/// Sets under a condition; returns whether it was set.
fn set_if(store: &Store, k: &Bytes, data: Bytes, expires_at_ms: Option<u64>, cond: Cond) -> bool {
    store.update(k, |cur| {
        let ok = match cond {
            Cond::Always => true,
            Cond::Nx => cur.is_none(),
            Cond::Xx => cur.is_some(),
        };
        if ok {
            (
                Some(Value {
                    data,
                    expires_at_ms,
                }),
                true,
            )
        } else {
            (cur, false)
        }
    })
}

/// Parses EX/PX/EXAT/PXAT `n` into an absolute deadline.
fn deadline(opt: &str, n: &[u8], cmd: &str) -> Result<u64, Reply> {
    let n = int(n).ok_or_else(not_int)?;
    if n <= 0 {
        return Err(Reply::err(format!(
            "ERR invalid expire time in '{cmd}' command"
        )));
    }
    let n = n as u64;
    Ok(match opt {
        "EX" => now_ms().saturating_add(n.saturating_mul(1000)),
        "PX" => now_ms().saturating_add(n),
        "EXAT" => n.saturating_mul(1000),
        _ => n,
    })
}

fn set(store: &Store, a: &[Bytes]) -> Reply {
    let [k, v, opts @ ..] = a else {
        return arity("set");
    };
    let (mut cond, mut ttl, mut keep, mut get) = (Cond::Always, None, false, false);
    let mut i = 0;
    while i < opts.len() {
        let o = upper(&opts[i]);
        match o.as_str() {
            "NX" if cond == Cond::Always => cond = Cond::Nx,
            "XX" if cond == Cond::Always => cond = Cond::Xx,
            "GET" => get = true,
            "KEEPTTL" if ttl.is_none() => keep = true,
            "EX" | "PX" | "EXAT" | "PXAT" if ttl.is_none() && !keep && i + 1 < opts.len() => {
                match deadline(&o, &opts[i + 1], "set") {
                    Ok(d) => ttl = Some(d),
                    Err(e) => return e,
                }
                i += 1;
            }
            _ => return syntax(),
        }
        i += 1;
    }
    let data = v.clone();
    if cond == Cond::Always && !keep && !get {
        // Plain SET: nothing to read back, so no read-modify-write.
        store.set(
            k,
            &Value {
                data,
                expires_at_ms: ttl,
            },
        );
        return Reply::ok();
    }
    let (set, old) = store.update(k, |cur| {
        let ok = match cond {
            Cond::Always => true,
            Cond::Nx => cur.is_none(),
            Cond::Xx => cur.is_some(),
        };
        let old = cur.as_ref().map(|c| c.data.clone());
        if ok {
            let expires_at_ms = if keep {
                cur.as_ref().and_then(|c| c.expires_at_ms)
            } else {
                ttl
            };
            (
                Some(Value {
                    data,
                    expires_at_ms,
                }),
                (true, old),
            )
        } else {
            (cur, (false, old))
        }
    });
    match (get, set) {
        (true, _) => old.map_or(Reply::Null, Reply::Bulk),
        (false, true) => Reply::ok(),
        (false, false) => Reply::Null,
    }
}

fn getex(store: &Store, a: &[Bytes]) -> Reply {
    let [k, opts @ ..] = a else {
        return arity("getex");
    };
    let change: Option<Option<u64>> = match opts {
        [] => None,
        [p] if upper(p) == "PERSIST" => Some(None),
        [o, n] => {
            let o = upper(o);
            if !matches!(o.as_str(), "EX" | "PX" | "EXAT" | "PXAT") {
                return syntax();
            }
            match deadline(&o, n, "getex") {
                Ok(d) => Some(Some(d)),
                Err(e) => return e,
            }
        }
        _ => return syntax(),
    };
    match change {
        None => store.get(k).map_or(Reply::Null, |v| Reply::Bulk(v.data)),
        Some(ttl) => store.update(k, |cur| match cur {
            Some(v) => {
                let reply = Reply::Bulk(v.data.clone());
                (
                    Some(Value {
                        expires_at_ms: ttl,
                        ..v
                    }),
                    reply,
                )
            }
            None => (None, Reply::Null),
        }),
    }
}

fn expire(store: &Store, cmd: &str, a: &[Bytes]) -> Reply {
    let name = cmd.to_ascii_lowercase();
    let [k, n, flags @ ..] = a else {
        return arity(&name);
    };
    let Some(n) = int(n) else { return not_int() };
    let at = match cmd {
        "EXPIRE" => (now_ms() as i64).saturating_add(n.saturating_mul(1000)),
        "PEXPIRE" => (now_ms() as i64).saturating_add(n),
        "EXPIREAT" => n.saturating_mul(1000),
        _ => n,
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for f in flags {
        match upper(f).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            other => return Reply::err(format!("ERR Unsupported option {other}")),
        }
    }
    if nx && (xx || gt || lt) {
        return Reply::err("ERR NX and XX, GT or LT options at the same time are not compatible");
    }
    if gt && lt {
        return Reply::err("ERR GT and LT options at the same time are not compatible");
    }
    store.update(k, |cur| {
        let Some(v) = cur else {
            return (None, Reply::Int(0));
        };
        let current = v.expires_at_ms.map(|t| t as i64);
        let ok = match current {
            None => !(xx || gt),
            Some(c) => !nx && (!gt || at > c) && (!lt || at < c),
        };
        if !ok {
            return (Some(v), Reply::Int(0));
        }
        if at <= now_ms() as i64 {
            return (None, Reply::Int(1));
        }
        (
            Some(Value {
                expires_at_ms: Some(at as u64),
                ..v
            }),
            Reply::Int(1),
        )
    })
}

fn incr(store: &Store, cmd: &str, a: &[Bytes]) -> Reply {
    let by = match (cmd, a) {
        ("INCR", [_]) => 1,
        ("DECR", [_]) => -1,
        ("INCRBY", [_, n]) => match int(n) {
            Some(n) => n,
            None => return not_int(),
        },
        ("DECRBY", [_, n]) => match int(n).and_then(i64::checked_neg) {
            Some(n) => n,
            None => return not_int(),
        },
        _ => return arity(&cmd.to_ascii_lowercase()),
    };
    store.update(&a[0], |v| {
        let (cur, ttl) = match &v {
            Some(v) => match int(&v.data) {
                Some(n) => (n, v.expires_at_ms),
                None => return (Some(v.clone()), not_int()),
            },
            None => (0, None),
        };
        match cur.checked_add(by) {
            Some(n) => (
                Some(Value {
                    data: Bytes::from(n.to_string()),
                    expires_at_ms: ttl,
                }),
                Reply::Int(n),
            ),
            None => (v, Reply::err("ERR increment or decrement would overflow")),
        }
    })
}

fn range(data: &[u8], s: i64, e: i64) -> Bytes {
    let len = data.len() as i64;
    if len == 0 {
        return Bytes::new();
    }
    let s = if s < 0 { (len + s).max(0) } else { s };
    let e = if e < 0 { len + e } else { e.min(len - 1) };
    if s > e || s >= len {
        return Bytes::new();
    }
    Bytes::copy_from_slice(&data[s as usize..=e as usize])
}

fn scan(store: &Store, a: &[Bytes]) -> Reply {
    let [cursor, opts @ ..] = a else {
        return arity("scan");
    };
    let Some(cursor) = std::str::from_utf8(cursor)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Reply::err("ERR invalid cursor");
    };
    let (mut pattern, mut count) = (None, 10usize);
    let mut i = 0;
    while i < opts.len() {
        match (upper(&opts[i]).as_str(), opts.get(i + 1)) {
            ("MATCH", Some(p)) => pattern = Some(p.clone()),
            ("COUNT", Some(n)) => match int(n) {
                Some(n) if n > 0 => count = n as usize,
                Some(_) => return syntax(),
                None => return not_int(),
            },
            ("TYPE", Some(_)) => {}
            _ => return syntax(),
        }
        i += 2;
    }
    // The cursor is a position in the keys ordered by a hash: stable across calls while keys
    // come and go, so a key present for the whole scan is returned (at least once).
    let mut keys: Vec<(u64, Bytes)> = store
        .keys()
        .into_iter()
        .map(|k| (key_hash(&k), k))
        .filter(|(h, _)| *h >= cursor)
        .collect();
    keys.sort_unstable_by_key(|(h, _)| *h);
    let next = keys.get(count).map_or(0, |(h, _)| *h);
    let batch = keys
        .into_iter()
        .take(count)
        .filter(|(_, k)| pattern.as_ref().is_none_or(|p| glob(p, k)))
        .map(|(_, k)| Reply::Bulk(k))
        .collect();
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(next.to_string())),
        Reply::Array(batch),
    ])
}

/// A stable 63-bit hash, never 0 (0 is the "done" cursor).
fn key_hash(k: &[u8]) -> u64 {
    // FNV-1a: stable across processes, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in k {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1).max(1)
}

/// Redis glob: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && glob(rest, &s[1..]),
        Some((b'[', rest)) => {
            let Some(close) = rest.iter().skip(1).position(|&c| c == b']').map(|i| i + 1) else {
                return s.first() == Some(&b'[') && glob(rest, &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (neg, set) = match rest[..close].split_first() {
                Some((b'^', set)) => (true, set),
                _ => (false, &rest[..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    let (lo, hi) = (set[i].min(set[i + 2]), set[i].max(set[i + 2]));
                    hit |= (lo..=hi).contains(&c);
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != neg && glob(&rest[close + 1..], &s[1..])
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            s.first() == Some(&rest[0]) && glob(&rest[1..], &s[1..])
        }
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

fn auth(server: &dyn ServerInfo, session: &mut Session, a: &[Bytes]) -> Reply {
    let ([pass] | [_, pass]) = a else {
        return arity("auth");
    };
    let Some(expected) = server.password() else {
        return Reply::err(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        );
    };
    if subtle_eq(pass, expected.as_bytes()) {
        session.authed = true;
        Reply::ok()
    } else {
        Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
    }
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hello(server: &dyn ServerInfo, session: &mut Session, a: &[Bytes]) -> Reply {
    let mut i = 0;
    if let Some(v) = a.first() {
        match int(v) {
            Some(p @ (2 | 3)) => session.proto = p as u8,
            Some(_) | None => return Reply::err("NOPROTO unsupported protocol version"),
        }
        i = 1;
    }
    while i < a.len() {
        match (upper(&a[i]).as_str(), a.get(i + 1), a.get(i + 2)) {
            ("AUTH", Some(user), Some(pass)) => {
                if let Reply::Error(e) = auth(server, session, &[user.clone(), pass.clone()]) {
                    return Reply::Error(e);
                }
                i += 3;
            }
            ("SETNAME", Some(name), _) => {
                session.name = Some(name.clone());
                i += 2;
            }
            _ => return syntax(),
        }
    }
    if server.password().is_some() && !session.authed {
        return Reply::err(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
        );
    }
    let s = |v: &str| Reply::Bulk(Bytes::copy_from_slice(v.as_bytes()));
    Reply::Map(vec![
        (s("server"), s("redis")),
        (s("version"), s(REDIS_VERSION)),
        (s("proto"), Reply::Int(i64::from(session.proto.max(2)))),
        (s("id"), Reply::Int(session.id as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Reply::Array(Vec::new())),
    ])
}

/// The Redis version we speak (clients check it for features).
pub const REDIS_VERSION: &str = "7.2.0";

fn client(session: &mut Session, a: &[Bytes]) -> Reply {
    match (a.first().map(|s| upper(s)).as_deref(), &a[a.len().min(1)..]) {
        (Some("SETNAME"), [name]) => {
            if name.iter().any(|c| *c == b' ' || *c == b'\n') {
                return Reply::err(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            session.name = Some(name.clone());
            Reply::ok()
        }
        (Some("GETNAME"), []) => session.name.clone().map_or(Reply::Null, Reply::Bulk),
        (Some("ID"), []) => Reply::Int(session.id as i64),
        (Some("SETINFO"), [_, _]) => Reply::ok(),
        (Some(sub), _) => Reply::err(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            sub.to_ascii_lowercase()
        )),
        (None, _) => arity("client"),
    }
}

/// `CONFIG GET pattern [pattern …]`: the settings tools ask for (redis-benchmark, queue
/// libraries checking the eviction policy), read-only — they come from `[cache]` in
/// mortar.toml, so `CONFIG SET` says so.
fn config(store: &Store, a: &[Bytes]) -> Reply {
    match a.split_first() {
        Some((sub, patterns)) if sub.eq_ignore_ascii_case(b"GET") => {
            if patterns.is_empty() {
                return arity("config|get");
            }
            let params = [
                ("maxmemory", store.max_memory().to_string()),
                ("maxmemory-policy", store.policy().redis_name().to_owned()),
                ("databases", "1".to_owned()),
                ("save", String::new()),
                ("appendonly", "no".to_owned()),
            ];
            let pairs = params
                .into_iter()
                .filter(|(name, _)| {
                    patterns
                        .iter()
                        .any(|p| glob(&p.to_ascii_lowercase(), name.as_bytes()))
                })
                .map(|(name, value)| {
                    (
                        Reply::Bulk(Bytes::from_static(name.as_bytes())),
                        Reply::Bulk(Bytes::from(value)),
                    )
                })
                .collect();
            Reply::Map(pairs)
        }
        Some((sub, _)) if sub.eq_ignore_ascii_case(b"SET") => Reply::err(
            "ERR CONFIG SET is not supported: set [cache] in mortar.toml (or MORTAR_CACHE__* variables) and restart",
        ),
        Some((sub, _)) => Reply::err(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(sub)
        )),
        None => arity("config"),
    }
}

/// INFO, or `INFO section [section …]` (case-insensitive; `all`, `everything` and `default` are
/// every section, an unknown one adds nothing), as Redis 7 answers.
fn info(store: &Store, server: &dyn ServerInfo, sections: &[Bytes]) -> Reply {
    let wants = |name: &str| {
        sections.is_empty()
            || sections.iter().any(|s| {
                [name, "all", "everything", "default"]
                    .iter()
                    .any(|n| s.eq_ignore_ascii_case(n.as_bytes()))
            })
    };
    // Only the sections asked for are computed (the keyspace one walks every shard).
    let mut text = Vec::new();
    if wants("server") {
        let uptime = (now_ms().saturating_sub(server.started_ms())) / 1000;
        text.push(format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nmortar_version:{}\r\nredis_mode:standalone\r\nuptime_in_seconds:{uptime}\r\n",
            mortar_core::VERSION
        ));
    }
    if wants("clients") {
        text.push(format!(
            "# Clients\r\nconnected_clients:{}\r\n",
            server.connected_clients()
        ));
    }
    if wants("memory") {
        text.push(format!(
            "# Memory\r\nused_memory:{}\r\nmaxmemory:{}\r\nmaxmemory_policy:{}\r\n",
            store.used_memory(),
            store.max_memory(),
            store.policy().redis_name(),
        ));
    }
    if wants("stats") {
        let st = &store.stats;
        text.push(format!(
            "# Stats\r\ntotal_commands_processed:{}\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\nexpired_keys:{}\r\nevicted_keys:{}\r\nmortar_invalidations_received:{}\r\n",
            server.commands_processed(),
            st.hits.load(Ordering::Relaxed),
            st.misses.load(Ordering::Relaxed),
            st.expired.load(Ordering::Relaxed),
            st.evicted.load(Ordering::Relaxed),
            st.invalidations.load(Ordering::Relaxed),
        ));
    }
    if wants("keyspace") {
        let (keys, volatile) = store.counts();
        text.push(format!(
            "# Keyspace\r\ndb0:keys={keys},expires={volatile},avg_ttl=0\r\n"
        ));
    }
    Reply::Bulk(Bytes::from(text.join("\r\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"user:*", b"user:42"));
        assert!(!glob(b"user:*", b"users"));
        assert!(glob(b"h?llo", b"hello"));
        assert!(glob(b"h[ae]llo", b"hallo"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-c]llo", b"hbllo"));
        assert!(glob(b"a\\*b", b"a*b"));
        assert!(!glob(b"a\\*b", b"axb"));
    }

    #[test]
    fn ranges_like_getrange() {
        assert_eq!(range(b"This is a string", 0, 3), Bytes::from("This"));
        assert_eq!(range(b"This is a string", -3, -1), Bytes::from("ing"));
        assert_eq!(
            range(b"This is a string", 0, -1),
            Bytes::from("This is a string")
        );
        assert_eq!(range(b"This is a string", 10, 100), Bytes::from("string"));
        assert_eq!(range(b"abc", 2, 1), Bytes::new());
    }
}
