//! The connection and server commands: PING, ECHO, QUIT, SELECT, AUTH, HELLO, CLIENT,
//! COMMAND, INFO, CONFIG, TIME, DBSIZE and FLUSHDB/FLUSHALL.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{COMMANDS, ServerInfo, Session, arity, glob, int, not_int, syntax, upper};
use crate::resp::Reply;
use crate::store::{Store, now_ms};

/// Answers `cmd` if it is a connection or server command.
pub(super) fn execute(
    store: &Store,
    server: &dyn ServerInfo,
    session: &mut Session,
    cmd: &str,
    a: &[Bytes],
) -> Option<Reply> {
    Some(match cmd {
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
                let now = mortar_core::clock::unix_time();
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
        _ => return None,
    })
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
