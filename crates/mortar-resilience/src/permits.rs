//! HTTP permits (`/acquire` → `/record`): the opaque ids handed to callers in other languages,
//! and the table of this node's permits in flight for node-local breakers.
//!
//! A permit is `l.<node>.<seq>.<expires>` for a node-local breaker (`node` tags this process,
//! `expires` is on its monotonic clock) and `s.<member>` for a shared one (`member` is the
//! entry in the breaker's Redis permit set, see `shared.lua`). It expires, unrecorded, after
//! the breaker's `slow_call_ms` plus [`PERMIT_GRACE_MS`](crate::breaker::PERMIT_GRACE_MS) and
//! then counts as nothing — exactly what dropping an in-process [`Permit`](crate::breaker::Permit)
//! does: a half-open probe's slot is freed, no outcome is counted.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::breaker::{Breaker, Ticket};
use crate::error::PermitError;

/// A permit id, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitId<'a> {
    Local {
        node: &'a str,
        seq: u64,
        expires_ms: u64,
    },
    Shared {
        member: &'a str,
    },
}

/// Most unrecorded permits per breaker (per node for a node-local breaker, in Redis for a
/// shared one): a caller that acquires and never records cannot grow memory without bound.
pub const MAX_IN_FLIGHT: usize = 100_000;

/// Longest permit id accepted.
pub const MAX_PERMIT_LEN: usize = 200;

impl<'a> PermitId<'a> {
    pub fn parse(permit: &'a str) -> Result<Self, PermitError> {
        let malformed = || PermitError::Malformed(truncate(permit));
        if permit.len() > MAX_PERMIT_LEN {
            return Err(malformed());
        }
        if let Some(member) = permit.strip_prefix("s.") {
            // <generation>.<kind>.<token>.<expires>
            let parts: Vec<&str> = member.split('.').collect();
            let ok = parts.len() == 4
                && parts[0].parse::<u64>().is_ok()
                && matches!(parts[1], "n" | "p" | "u")
                && !parts[2].is_empty()
                && parts[2]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && parts[3].parse::<u64>().is_ok();
            return if ok {
                Ok(PermitId::Shared { member })
            } else {
                Err(malformed())
            };
        }
        let mut parts = permit.strip_prefix("l.").ok_or_else(malformed)?.split('.');
        let (Some(node), Some(seq), Some(expires), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        match (seq.parse(), expires.parse()) {
            (Ok(seq), Ok(expires_ms)) if !node.is_empty() => Ok(PermitId::Local {
                node,
                seq,
                expires_ms,
            }),
            _ => Err(malformed()),
        }
    }
}

/// When a shared permit's member expires (Redis time, ms), from its last part.
pub fn member_expiry(member: &str) -> u64 {
    member
        .rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A permit of a node-local breaker, in flight.
pub struct Held {
    pub name: String,
    pub breaker: Arc<Breaker>,
    pub ticket: Ticket,
    issued: quanta::Instant,
}

impl Held {
    /// Milliseconds since it was issued.
    pub fn elapsed_ms(&self) -> u64 {
        self.issued.elapsed().as_millis() as u64
    }
}

/// This node's permits in flight for its local breakers.
pub struct LocalPermits {
    node: String,
    epoch: quanta::Instant,
    seq: AtomicU64,
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    held: HashMap<u64, (u64, Held)>,
    /// (expires_ms, seq), to expire in order.
    by_expiry: BTreeSet<(u64, u64)>,
    /// Permits in flight per breaker.
    per_breaker: HashMap<String, usize>,
}

impl Table {
    fn remove(&mut self, seq: u64) -> Option<(u64, Held)> {
        let (exp, h) = self.held.remove(&seq)?;
        self.by_expiry.remove(&(exp, seq));
        if let Some(n) = self.per_breaker.get_mut(&h.name) {
            *n -= 1;
            if *n == 0 {
                self.per_breaker.remove(&h.name);
            }
        }
        Some((exp, h))
    }
}

impl std::fmt::Debug for LocalPermits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPermits")
            .field("node", &self.node)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl Default for LocalPermits {
    fn default() -> Self {
        Self {
            node: node_tag(),
            epoch: quanta::Instant::now(),
            seq: AtomicU64::new(1),
            inner: Mutex::default(),
        }
    }
}

/// A tag for this process: 10 random lowercase letters and digits.
fn node_tag() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..10)
        .map(|_| char::from(ALPHABET[fastrand::usize(..ALPHABET.len())]))
        .collect()
}

impl LocalPermits {
    /// This process's tag (also part of shared permits, to make them unique).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A number unique in this process.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Keeps `ticket` for `ttl_ms`; returns the permit id, or `None` (the ticket cancelled)
    /// when breaker `name` already has [`MAX_IN_FLIGHT`] permits in flight on this node.
    pub fn issue(
        &self,
        name: &str,
        breaker: Arc<Breaker>,
        ticket: Ticket,
        ttl_ms: u64,
    ) -> Option<String> {
        let full = {
            let mut t = self.lock();
            let n = t.per_breaker.entry(name.to_owned()).or_default();
            let full = *n >= MAX_IN_FLIGHT;
            if !full {
                *n += 1;
            }
            full
        };
        if full {
            breaker.finish_ticket(ticket, None, 0);
            return None;
        }
        let seq = self.next_seq();
        let expires_ms = self.now_ms() + ttl_ms;
        let held = Held {
            name: name.to_owned(),
            breaker,
            ticket,
            issued: quanta::Instant::now(),
        };
        let mut t = self.lock();
        t.held.insert(seq, (expires_ms, held));
        t.by_expiry.insert((expires_ms, seq));
        Some(format!("l.{}.{seq}.{expires_ms}", self.node))
    }

    /// Takes the permit out of flight for `/record` on breaker `name` (whose permits live
    /// `ttl_ms`, for the message). An expired one is cancelled here (freeing its probe slot)
    /// and reported as expired.
    pub fn take(
        &self,
        name: &str,
        ttl_ms: u64,
        node: &str,
        seq: u64,
        expires_ms: u64,
    ) -> Result<Held, PermitError> {
        if node != self.node {
            return Err(PermitError::OtherNode);
        }
        let now = self.now_ms();
        let taken = {
            let mut t = self.lock();
            match t.held.get(&seq) {
                Some((_, h)) if h.name != name => {
                    return Err(PermitError::OtherBreaker(h.name.clone()));
                }
                Some(_) => t.remove(seq),
                None => None,
            }
        };
        match taken {
            Some((exp, h)) if exp <= now => {
                h.breaker.finish_ticket(h.ticket, None, 0);
                Err(PermitError::Expired { ttl_ms })
            }
            Some((_, h)) => Ok(h),
            None if expires_ms <= now => Err(PermitError::Expired { ttl_ms }),
            None => Err(PermitError::Used),
        }
    }

    /// Cancels every permit past its expiry (each frees its probe slot, counts nothing).
    /// Cheap when nothing expired: one look at the earliest expiry.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let expired: Vec<Held> = {
            let mut t = self.lock();
            let mut out = Vec::new();
            while let Some(&(exp, seq)) = t.by_expiry.first() {
                if exp > now {
                    break;
                }
                t.by_expiry.pop_first();
                if let Some((_, h)) = t.remove(seq) {
                    out.push(h);
                }
            }
            out
        };
        for h in &expired {
            h.breaker.finish_ticket(h.ticket, None, 0);
        }
        expired.len()
    }

    /// Permits in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().held.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerConfig;

    #[test]
    fn permit_ids_parse_or_are_malformed() {
        assert_eq!(
            PermitId::parse("l.abc.7.1000"),
            Ok(PermitId::Local {
                node: "abc",
                seq: 7,
                expires_ms: 1000
            })
        );
        assert_eq!(
            PermitId::parse("s.3.p.abc-9.1700000000000"),
            Ok(PermitId::Shared {
                member: "3.p.abc-9.1700000000000"
            })
        );
        assert_eq!(member_expiry("3.p.abc-9.1700000000000"), 1_700_000_000_000);
        for bad in [
            "",
            "l.",
            "l.abc.x.1",
            "l..1.2",
            "l.a.1.2.3",
            "s.1.q.a.2",
            "x.a.1.2",
        ] {
            assert!(
                matches!(PermitId::parse(bad), Err(PermitError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_permit_records_once_and_only_on_its_breaker_and_node() {
        let permits = LocalPermits::default();
        let b = Breaker::new("a", BreakerConfig::default());
        let (ticket, _) = b.acquire_ticket().unwrap();
        let id = permits.issue("a", b.clone(), ticket, 60_000).unwrap();
        let PermitId::Local {
            node,
            seq,
            expires_ms,
        } = PermitId::parse(&id).unwrap()
        else {
            panic!("local")
        };
        assert_eq!(
            permits.take("b", 1, node, seq, expires_ms).err(),
            Some(PermitError::OtherBreaker("a".into()))
        );
        assert_eq!(
            permits.take("a", 1, "other", seq, expires_ms).err(),
            Some(PermitError::OtherNode)
        );
        assert!(permits.take("a", 1, node, seq, expires_ms).is_ok());
        assert_eq!(
            permits.take("a", 1, node, seq, expires_ms).err(),
            Some(PermitError::Used)
        );
        assert!(matches!(
            permits.take("a", 1, node, seq, 0),
            Err(PermitError::Expired { .. })
        ));
    }

    #[test]
    fn permits_in_flight_are_bounded_per_breaker() {
        let permits = LocalPermits::default();
        let b = Breaker::new("busy", BreakerConfig::default());
        let other = Breaker::new("other", BreakerConfig::default());
        for _ in 0..MAX_IN_FLIGHT {
            let (t, _) = b.acquire_ticket().unwrap();
            assert!(permits.issue("busy", b.clone(), t, 60_000).is_some());
        }
        let (t, _) = b.acquire_ticket().unwrap();
        assert!(permits.issue("busy", b.clone(), t, 60_000).is_none());
        let (t, _) = other.acquire_ticket().unwrap();
        let id = permits.issue("other", other.clone(), t, 60_000);
        assert!(id.is_some(), "the bound is per breaker");
        let Ok(PermitId::Local {
            node,
            seq,
            expires_ms,
        }) = PermitId::parse(id.as_deref().unwrap())
        else {
            panic!("local")
        };
        permits.take("other", 1, node, seq, expires_ms).unwrap();
        assert_eq!(permits.in_flight(), MAX_IN_FLIGHT);
    }

    #[test]
    fn expired_probes_free_their_slot() {
        let permits = LocalPermits::default();
        let b = Breaker::new(
            "p",
            BreakerConfig {
                minimum_calls: 1,
                wait_open_ms: 0,
                half_open_calls: 1,
                ..BreakerConfig::default()
            },
        );
        b.force_open();
        b.reset();
        let (t, _) = b.acquire_ticket().unwrap();
        b.finish_ticket(t, Some(true), 1);
        let (probe, _) = b.acquire_ticket().unwrap();
        assert!(probe.is_probe());
        assert!(b.acquire_ticket().is_err(), "one probe at a time");
        permits.issue("p", b.clone(), probe, 0).unwrap();
        assert_eq!(permits.sweep(), 1);
        assert_eq!(permits.in_flight(), 0);
        assert!(
            b.acquire_ticket().unwrap().0.is_probe(),
            "the slot is free again"
        );
    }
}
