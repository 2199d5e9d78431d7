//! The string commands: GET and SET with their variants (NX/XX, EX/PX, GET, KEEPTTL),
//! the multi-key MGET/MSET/MSETNX, and the in-place edits APPEND, STRLEN, GETRANGE, SETRANGE.

use bytes::{Bytes, BytesMut};

use super::{arity, int, not_int, syntax, upper};
use crate::resp::Reply;
use crate::store::{Store, Value, now_ms};

const MAX_STRING: usize = 512 * 1024 * 1024;

/// Answers `cmd` if it is a string command.
pub(super) fn execute(store: &Store, cmd: &str, a: &[Bytes]) -> Option<Reply> {
    Some(match cmd {
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
                return Some(arity("mget"));
            }
            Reply::Array(
                a.iter()
                    .map(|k| store.get(k).map_or(Reply::Null, |v| Reply::Bulk(v.data)))
                    .collect(),
            )
        }
        "MSET" => {
            if a.is_empty() || !a.len().is_multiple_of(2) {
                return Some(arity("mset"));
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
                return Some(arity("msetnx"));
            }
            // Not atomic against a concurrent writer of the same keys; see the crate docs.
            if a.chunks_exact(2).any(|kv| store.peek(&kv[0]).is_some()) {
                return Some(Reply::Int(0));
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
                    return Some(not_int());
                };
                let data = store.get(k).map(|v| v.data).unwrap_or_default();
                Reply::Bulk(range(&data, s, e))
            }
            _ => arity("getrange"),
        },
        "SETRANGE" => match a {
            [k, off, v] => {
                let Some(off) = int(off) else {
                    return Some(not_int());
                };
                if off < 0 {
                    return Some(Reply::err("ERR offset is out of range"));
                }
                let off = off as usize;
                if off + v.len() > MAX_STRING {
                    return Some(Reply::err(
                        "ERR string exceeds maximum allowed size (proto-max-bulk-len)",
                    ));
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
        _ => return None,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
