//! One lock's state and its rules, pure: holders with leases, a FIFO queue of waiters,
//! the permit count fixed while anyone holds or waits. Time is a parameter; tokens come from
//! the caller (the fencing counter lives in durable storage).

use std::collections::VecDeque;

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub lease_id: String,
    pub owner: String,
    pub token: u64,
    pub acquired_at_ms: u64,
    pub expires_at_ms: u64,
}

/// A caller waiting in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub ticket: String,
    pub owner: String,
    /// The waiter gives up (and leaves the line) at this time.
    pub until_ms: u64,
}

/// Why a grant was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No free permit for this caller (held, or others are ahead in line).
    Busy,
    /// The name is a semaphore (or mutex) with another permit count while in use.
    PermitsMismatch { existing: u32 },
}

/// A lock or semaphore.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lock {
    pub permits: u32,
    pub holders: Vec<Holder>,
    pub waiters: VecDeque<Waiter>,
}

impl Lock {
    /// Drops expired leases and waiters who gave up; returns the expired leases.
    pub fn purge(&mut self, now_ms: u64) -> Vec<Holder> {
        let (live, expired): (Vec<_>, Vec<_>) = self
            .holders
            .drain(..)
            .partition(|h| h.expires_at_ms > now_ms);
        self.holders = live;
        self.waiters.retain(|w| w.until_ms > now_ms);
        expired
    }

    /// Nobody holds or waits: the record can go (and the permit count may change).
    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// Checks whether `ticket` (or a newcomer, `None`) may take a permit now. First come, first
    /// served: with free permits `f`, the first `f` waiters may; a newcomer only when nobody waits.
    pub fn may_grant(
        &mut self,
        now_ms: u64,
        permits: u32,
        ticket: Option<&str>,
    ) -> Result<(), Refusal> {
        self.purge(now_ms);
        if self.is_idle() {
            self.permits = permits;
        } else if self.permits != permits {
            return Err(Refusal::PermitsMismatch {
                existing: self.permits,
            });
        }
        let free = (self.permits as usize).saturating_sub(self.holders.len());
        let allowed = match ticket {
            None => self.waiters.is_empty() && free > 0,
            Some(t) => self
                .waiters
                .iter()
                .position(|w| w.ticket == t)
                .is_some_and(|rank| rank < free),
        };
        if allowed { Ok(()) } else { Err(Refusal::Busy) }
    }

    /// Records a grant that `may_grant` allowed (the caller supplies the token).
    pub fn grant(&mut self, holder: Holder, ticket: Option<&str>) {
        if let Some(t) = ticket {
            self.waiters.retain(|w| w.ticket != t);
        }
        self.holders.push(holder);
    }

    /// Extends a live lease; `None` when it is gone (expired or released).
    pub fn renew(&mut self, now_ms: u64, lease_id: &str, ttl_ms: u64) -> Option<&Holder> {
        self.purge(now_ms);
        let h = self.holders.iter_mut().find(|h| h.lease_id == lease_id)?;
        h.expires_at_ms = now_ms + ttl_ms;
        Some(h)
    }

    /// Ends a live lease; false when it is gone.
    pub fn release(&mut self, now_ms: u64, lease_id: &str) -> bool {
        self.purge(now_ms);
        let before = self.holders.len();
        self.holders.retain(|h| h.lease_id != lease_id);
        self.holders.len() < before
    }

    /// Ends live leases by force (an operator's force-release): the one with `lease_id`, or
    /// every holder when `None`. Returns the evicted leases (empty: nothing live matched). The
    /// waiters keep their places; the freed permits go to them exactly as after a release.
    pub fn evict(&mut self, now_ms: u64, lease_id: Option<&str>) -> Vec<Holder> {
        self.purge(now_ms);
        let (evicted, kept): (Vec<_>, Vec<_>) = self
            .holders
            .drain(..)
            .partition(|h| lease_id.is_none_or(|id| h.lease_id == id));
        self.holders = kept;
        evicted
    }

    pub fn enqueue(&mut self, waiter: Waiter) {
        self.waiters.push_back(waiter);
    }

    pub fn dequeue(&mut self, ticket: &str) {
        self.waiters.retain(|w| w.ticket != ticket);
    }

    /// When the next lease expires (a waiter's next chance), if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.holders.iter().map(|h| h.expires_at_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(id: &str, token: u64, expires: u64) -> Holder {
        Holder {
            lease_id: id.into(),
            owner: "o".into(),
            token,
            acquired_at_ms: 0,
            expires_at_ms: expires,
        }
    }

    fn waiter(t: &str, until: u64) -> Waiter {
        Waiter {
            ticket: t.into(),
            owner: "w".into(),
            until_ms: until,
        }
    }

    #[test]
    fn a_mutex_admits_one_and_frees_on_release_or_expiry() {
        let mut l = Lock::default();
        assert!(l.may_grant(0, 1, None).is_ok());
        l.grant(holder("a", 1, 100), None);
        assert_eq!(l.may_grant(50, 1, None), Err(Refusal::Busy));
        assert!(l.release(50, "a"));
        assert!(!l.release(50, "a"), "released twice");
        assert!(l.may_grant(50, 1, None).is_ok());
        l.grant(holder("b", 2, 100), None);
        assert!(l.may_grant(100, 1, None).is_ok(), "expired at 100");
        assert!(
            l.renew(100, "b", 10).is_none(),
            "an expired lease cannot be renewed"
        );
    }

    #[test]
    fn waiters_are_served_in_order_and_newcomers_wait_behind_them() {
        let mut l = Lock::default();
        l.may_grant(0, 2, None).unwrap();
        l.grant(holder("a", 1, 1000), None);
        l.grant(holder("b", 2, 1000), None);
        l.enqueue(waiter("w1", 5000));
        l.enqueue(waiter("w2", 5000));
        assert!(l.release(10, "a"));
        assert_eq!(
            l.may_grant(10, 2, Some("w2")),
            Err(Refusal::Busy),
            "w1 is first"
        );
        assert_eq!(
            l.may_grant(10, 2, None),
            Err(Refusal::Busy),
            "a newcomer cannot jump the line"
        );
        assert!(l.may_grant(10, 2, Some("w1")).is_ok());
        l.grant(holder("c", 3, 1000), Some("w1"));
        assert!(l.release(20, "b"));
        assert!(l.may_grant(20, 2, Some("w2")).is_ok());
    }

    #[test]
    fn waiters_who_gave_up_leave_the_line() {
        let mut l = Lock::default();
        l.may_grant(0, 1, None).unwrap();
        l.grant(holder("a", 1, 100), None);
        l.enqueue(waiter("gone", 50));
        l.enqueue(waiter("next", 500));
        assert!(
            l.may_grant(100, 1, Some("next")).is_ok(),
            "the first waiter's wait ended at 50"
        );
    }

    #[test]
    fn permits_are_fixed_while_in_use() {
        let mut l = Lock::default();
        l.may_grant(0, 3, None).unwrap();
        l.grant(holder("a", 1, 100), None);
        assert_eq!(
            l.may_grant(0, 1, None),
            Err(Refusal::PermitsMismatch { existing: 3 })
        );
        assert!(l.may_grant(100, 1, None).is_ok(), "idle again: redefined");
        assert_eq!(l.permits, 1);
    }

    #[test]
    fn evict_ends_one_lease_or_all_and_keeps_the_line() {
        let mut l = Lock::default();
        l.may_grant(0, 3, None).unwrap();
        l.grant(holder("a", 1, 100), None);
        l.grant(holder("b", 2, 1000), None);
        l.grant(holder("c", 3, 1000), None);
        l.enqueue(waiter("w", 5000));
        assert!(l.evict(10, Some("nope")).is_empty());
        let one = l.evict(10, Some("b"));
        assert_eq!(one.iter().map(|h| h.token).collect::<Vec<_>>(), [2]);
        assert!(l.renew(10, "b", 100).is_none(), "an evicted lease is gone");
        assert!(!l.release(10, "b"));
        // `a` expired at 100: only live leases are evicted (and reported).
        let rest = l.evict(200, None);
        assert_eq!(rest.iter().map(|h| h.token).collect::<Vec<_>>(), [3]);
        assert!(l.holders.is_empty());
        assert_eq!(l.waiters.len(), 1, "the line stays");
        assert!(l.may_grant(200, 3, Some("w")).is_ok(), "the waiter is next");
    }

    #[test]
    fn renew_extends() {
        let mut l = Lock::default();
        l.may_grant(0, 1, None).unwrap();
        l.grant(holder("a", 1, 100), None);
        assert_eq!(l.renew(90, "a", 100).unwrap().expires_at_ms, 190);
        assert_eq!(l.may_grant(150, 1, None), Err(Refusal::Busy));
        assert_eq!(l.next_expiry(), Some(190));
    }
}
