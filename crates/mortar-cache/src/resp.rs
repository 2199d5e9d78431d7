//! The Redis protocol: an incremental, bounded parser for client commands (RESP arrays of bulk
//! strings, and inline commands as `redis-cli` and telnet send them) and the reply encoder for
//! RESP2 and RESP3. Every length is checked against [`Limits`] before anything is allocated, so
//! hostile input gets an error, never a panic or an unbounded allocation.

use bytes::{Buf, Bytes, BytesMut};

/// Protocol limits (Redis: `proto-max-bulk-len` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bulk: usize,
    pub max_args: usize,
    pub max_inline: usize,
    /// These are the limits of a connection that has not authenticated yet: lengths past them
    /// get Redis's `unauthenticated …` errors.
    pub pre_auth: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bulk: 64 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline: 64 * 1024,
            pre_auth: false,
        }
    }
}

impl Limits {
    /// Before `AUTH` on a server with a password: Redis 7's bounds (10 arguments of at most
    /// 16 KiB), so an unauthenticated client can make the server buffer at most ~160 KiB.
    pub const PRE_AUTH: Limits = Limits {
        max_bulk: 16 * 1024,
        max_args: 10,
        max_inline: 16 * 1024,
        pre_auth: true,
    };

    fn array_too_long(&self) -> ProtocolError {
        if self.pre_auth {
            ProtocolError::UnauthenticatedArrayLength
        } else {
            ProtocolError::ArrayLength
        }
    }

    fn bulk_too_long(&self) -> ProtocolError {
        if self.pre_auth {
            ProtocolError::UnauthenticatedBulkLength
        } else {
            ProtocolError::BulkLength
        }
    }
}

/// A protocol error: the connection answers it and closes (as Redis does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    ArrayLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedArrayLength,
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    Quotes,
    #[error("Protocol error: missing CRLF after bulk")]
    Crlf,
}

/// Parses one command from `buf`, consuming it. `Ok(None)`: need more bytes (nothing consumed).
pub fn parse_command(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, limits);
    }
    // Scan without consuming until the whole command is here.
    let mut pos = 0;
    let Some((n, next)) = read_int_line(buf, pos + 1)? else {
        return if buf.len() > limits.max_inline {
            Err(ProtocolError::ArrayLength)
        } else {
            Ok(None)
        };
    };
    if n < 0 {
        buf.advance(next);
        return Ok(Some(Vec::new()));
    }
    if n as usize > limits.max_args {
        return Err(limits.array_too_long());
    }
    pos = next;
    let mut spans = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError::ExpectedBulk(buf[pos] as char));
        }
        let Some((len, start)) = read_int_line(buf, pos + 1)? else {
            return Ok(None);
        };
        if len < 0 {
            return Err(ProtocolError::BulkLength);
        }
        if len as usize > limits.max_bulk {
            return Err(limits.bulk_too_long());
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            // Reserve what the declared bulk needs (bounded by max_bulk) so reads do not
            // reallocate many times for large values.
            buf.reserve(end + 2 - buf.len());
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::Crlf);
        }
        spans.push((start, end));
        pos = end + 2;
    }
    let frozen = buf.split_to(pos).freeze();
    Ok(Some(
        spans.into_iter().map(|(s, e)| frozen.slice(s..e)).collect(),
    ))
}

/// Reads `<digits>\r\n` at `from`; returns the number and the index after the CRLF.
fn read_int_line(buf: &[u8], from: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(rel) = buf
        .get(from..)
        .and_then(|b| b.iter().position(|&c| c == b'\r'))
    else {
        return Ok(None);
    };
    let end = from + rel;
    if end + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[end + 1] != b'\n' || rel == 0 || rel > 20 {
        return Err(ProtocolError::BulkLength);
    }
    let text = std::str::from_utf8(&buf[from..end]).map_err(|_| ProtocolError::BulkLength)?;
    let n: i64 = text.parse().map_err(|_| ProtocolError::BulkLength)?;
    Ok(Some((n, end + 2)))
}

/// An inline command: words separated by spaces, with "double" and 'single' quotes.
fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&c| c == b'\n') else {
        return if buf.len() > limits.max_inline {
            Err(ProtocolError::InlineTooBig)
        } else {
            Ok(None)
        };
    };
    if nl > limits.max_inline {
        return Err(ProtocolError::InlineTooBig);
    }
    let line = buf.split_to(nl + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut word = Vec::new();
        match line[i] {
            q @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(ProtocolError::Quotes);
                    };
                    i += 1;
                    if c == q {
                        break;
                    }
                    if c == b'\\' && q == b'"' {
                        let Some(&e) = line.get(i) else {
                            return Err(ProtocolError::Quotes);
                        };
                        i += 1;
                        word.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            other => other,
                        });
                    } else {
                        word.push(c);
                    }
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(Bytes::from(word));
    }
    Ok(Some(args))
}

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(&'static str),
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Reply>),
    /// RESP3 map (RESP2: a flat array).
    Map(Vec<(Reply, Reply)>),
    /// RESP3 double (RESP2: a bulk string).
    Double(f64),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Simple("OK")
    }

    pub fn err(msg: impl Into<String>) -> Self {
        Reply::Error(msg.into())
    }

    pub fn bulk(b: impl Into<Bytes>) -> Self {
        Reply::Bulk(b.into())
    }

    /// Appends the encoding of `self` for protocol version `proto` (2 or 3).
    pub fn encode(&self, out: &mut BytesMut, proto: u8) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Status(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(e) => line(out, b'-', e.as_bytes()),
            Reply::Int(n) => line(out, b':', itoa::Buffer::new().format(*n).as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', itoa::Buffer::new().format(b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null if proto >= 3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(
                    out,
                    b'*',
                    itoa::Buffer::new().format(items.len()).as_bytes(),
                );
                for i in items {
                    i.encode(out, proto);
                }
            }
            Reply::Map(pairs) => {
                if proto >= 3 {
                    line(
                        out,
                        b'%',
                        itoa::Buffer::new().format(pairs.len()).as_bytes(),
                    );
                } else {
                    line(
                        out,
                        b'*',
                        itoa::Buffer::new().format(pairs.len() * 2).as_bytes(),
                    );
                }
                for (k, v) in pairs {
                    k.encode(out, proto);
                    v.encode(out, proto);
                }
            }
            Reply::Double(d) => {
                let text = format_double(*d);
                if proto >= 3 {
                    line(out, b',', text.as_bytes());
                } else {
                    Reply::Bulk(Bytes::from(text)).encode(out, proto);
                }
            }
        }
    }
}

fn line(out: &mut BytesMut, prefix: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.extend_from_slice(&[prefix]);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Formats a float as Redis does for INCRBYFLOAT (no exponent, no trailing zeros).
pub fn format_double(d: f64) -> String {
    if d.fract() == 0.0 && d.abs() < 1e17 {
        return format!("{d:.0}");
    }
    let s = format!("{d:.17}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    // Prefer the shortest representation that round-trips.
    let short = format!("{d}");
    if short.parse::<f64>().ok() == Some(d) && !short.contains('e') {
        short
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(cmd) = parse_command(&mut buf, &Limits::default())? {
            out.push(cmd);
        }
        Ok(out)
    }

    fn encode_command(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn parses_pipelined_commands_and_waits_for_more() {
        let cmds = parse_all(b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n")
            .unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(
            cmds[1],
            vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("v\r\n")]
        );
        let mut partial = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$5\r\nhel"[..]);
        assert_eq!(
            parse_command(&mut partial, &Limits::default()).unwrap(),
            None
        );
        assert_eq!(partial.len(), 20, "nothing consumed");
        partial.extend_from_slice(b"lo\r\n");
        assert_eq!(
            parse_command(&mut partial, &Limits::default())
                .unwrap()
                .unwrap()[1],
            Bytes::from("hello")
        );
    }

    #[test]
    fn parses_inline_commands_with_quotes() {
        let cmds = parse_all(b"SET key \"hello world\\n\" 'x y'\r\nPING\n").unwrap();
        assert_eq!(
            cmds[0],
            vec![
                Bytes::from("SET"),
                Bytes::from("key"),
                Bytes::from("hello world\n"),
                Bytes::from("x y")
            ]
        );
        assert_eq!(cmds[1], vec![Bytes::from("PING")]);
        assert_eq!(
            parse_all(b"SET \"open\r\n").unwrap_err(),
            ProtocolError::Quotes
        );
    }

    #[test]
    fn limits_are_enforced_before_allocation() {
        let limits = Limits {
            max_bulk: 10,
            max_args: 3,
            max_inline: 16,
            pre_auth: false,
        };
        let mut b = BytesMut::from(&b"*4\r\n"[..]);
        assert_eq!(
            parse_command(&mut b, &limits),
            Err(ProtocolError::ArrayLength)
        );
        let mut b = BytesMut::from(&b"*1\r\n$999999999999\r\n"[..]);
        assert_eq!(
            parse_command(&mut b, &limits),
            Err(ProtocolError::BulkLength)
        );
        let mut b = BytesMut::from(&b"*1\r\n$-5\r\n"[..]);
        assert_eq!(
            parse_command(&mut b, &limits),
            Err(ProtocolError::BulkLength)
        );
        let mut b = BytesMut::from(&b"*1\r\n+OK\r\n"[..]);
        assert_eq!(
            parse_command(&mut b, &limits),
            Err(ProtocolError::ExpectedBulk('+'))
        );
        let mut b = BytesMut::from(&b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..]);
        assert_eq!(
            parse_command(&mut b, &limits),
            Err(ProtocolError::InlineTooBig)
        );
        let mut b = BytesMut::from(&b"*1\r\n$2\r\nabXY"[..]);
        assert_eq!(parse_command(&mut b, &limits), Err(ProtocolError::Crlf));
        let mut b = BytesMut::from(&b"*x\r\n"[..]);
        assert!(parse_command(&mut b, &limits).is_err());
    }

    #[test]
    fn before_auth_lengths_get_redis_unauthenticated_errors() {
        let pre = Limits::PRE_AUTH;
        let mut b = BytesMut::from(&b"*11\r\n"[..]);
        assert_eq!(
            parse_command(&mut b, &pre),
            Err(ProtocolError::UnauthenticatedArrayLength)
        );
        let mut b = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$62914560\r\n"[..]);
        let e = parse_command(&mut b, &pre).unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: unauthenticated bulk length");
        assert!(b.capacity() < 64 * 1024, "nothing reserved for the value");
        let mut b = BytesMut::from(&b"*2\r\n$4\r\nAUTH\r\n$16384\r\n"[..]);
        assert_eq!(parse_command(&mut b, &pre), Ok(None), "16 KiB is allowed");
        let mut b = BytesMut::from(vec![b'a'; 17 * 1024].as_slice());
        assert_eq!(
            parse_command(&mut b, &pre),
            Err(ProtocolError::InlineTooBig)
        );
    }

    #[test]
    fn encodes_resp2_and_resp3() {
        let mut out = BytesMut::new();
        Reply::Array(vec![
            Reply::bulk("a"),
            Reply::Null,
            Reply::Int(-3),
            Reply::ok(),
            Reply::err("ERR x"),
        ])
        .encode(&mut out, 2);
        assert_eq!(
            &out[..],
            b"*5\r\n$1\r\na\r\n$-1\r\n:-3\r\n+OK\r\n-ERR x\r\n"
        );
        let mut out = BytesMut::new();
        Reply::Map(vec![(Reply::bulk("k"), Reply::Double(1.5))]).encode(&mut out, 3);
        assert_eq!(&out[..], b"%1\r\n$1\r\nk\r\n,1.5\r\n");
        let mut out = BytesMut::new();
        Reply::Null.encode(&mut out, 3);
        assert_eq!(&out[..], b"_\r\n");
    }

    #[test]
    fn doubles_format_like_redis() {
        assert_eq!(format_double(10.5), "10.5");
        assert_eq!(format_double(3.0), "3");
        assert_eq!(format_double(5.0e3), "5000");
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8), split in 0usize..200) {
            let wire = encode_command(&args);
            // Any split point: the first half alone is incomplete (or a whole command).
            let cut = split.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let first = parse_command(&mut buf, &Limits::default()).unwrap();
            if cut < wire.len() {
                prop_assert!(first.is_none());
                buf.extend_from_slice(&wire[cut..]);
            }
            let parsed = match first { Some(p) => p, None => parse_command(&mut buf, &Limits::default()).unwrap().unwrap() };
            let parsed: Vec<Vec<u8>> = parsed.iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(parsed, args);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&input[..]);
            let limits = Limits { max_bulk: 1024, max_args: 64, max_inline: 128, pre_auth: false };
            for _ in 0..8 {
                match parse_command(&mut buf, &limits) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
