//! The command set, answering as Redis does (same replies, same error texts): the session and
//! dispatch here, the commands by family in `strings`, `counters`, `keys` and `admin`.

// k, v, a, s, e: the names Redis's own documentation uses for keys, values, args and ranges.
#![allow(clippy::many_single_char_names)]

mod admin;
mod counters;
mod keys;
mod strings;

use bytes::Bytes;

use crate::resp::Reply;
use crate::store::Store;

pub use admin::REDIS_VERSION;
pub use keys::glob;

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
    // The families' command names are disjoint; the hot string commands are tried first.
    strings::execute(store, cmd, a)
        .or_else(|| keys::execute(store, cmd, a))
        .or_else(|| counters::execute(store, cmd, a))
        .or_else(|| admin::execute(store, server, session, cmd, a))
        .unwrap_or_else(|| unknown(first, a))
}

fn unknown(name: &[u8], a: &[Bytes]) -> Reply {
    let shown: Vec<String> = a
        .iter()
        .take(8)
        .map(|x| format!("'{}' ", String::from_utf8_lossy(x)))
        .collect();
    Reply::err(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(name),
        shown.concat()
    ))
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
