//! The keyspace commands: DEL/UNLINK, EXISTS, TYPE, the expiry family (EXPIRE, TTL,
//! PERSIST, …), and KEYS/SCAN with the Redis glob they match by.

use bytes::Bytes;

use super::{arity, int, not_int, syntax, upper};
use crate::resp::Reply;
use crate::store::{Store, Value, now_ms};

/// Answers `cmd` if it is a keyspace command.
pub(super) fn execute(store: &Store, cmd: &str, a: &[Bytes]) -> Option<Reply> {
    Some(match cmd {
        "DEL" | "UNLINK" => {
            if a.is_empty() {
                return Some(arity(&cmd.to_ascii_lowercase()));
            }
            Reply::Int(a.iter().filter(|k| store.remove(k).is_some()).count() as i64)
        }
        "EXISTS" => {
            if a.is_empty() {
                return Some(arity("exists"));
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
        _ => return None,
    })
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
}
