//! The counter commands: INCR, DECR, INCRBY, DECRBY and INCRBYFLOAT.

use bytes::Bytes;

use super::{arity, int, not_int};
use crate::resp::{Reply, format_double};
use crate::store::{Store, Value};

/// Answers `cmd` if it is a counter command.
pub(super) fn execute(store: &Store, cmd: &str, a: &[Bytes]) -> Option<Reply> {
    Some(match cmd {
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => incr(store, cmd, a),
        "INCRBYFLOAT" => match a {
            [k, by] => {
                let Some(by) = std::str::from_utf8(by)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .filter(|f| f.is_finite())
                else {
                    return Some(Reply::err("ERR value is not a valid float"));
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
        _ => return None,
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
