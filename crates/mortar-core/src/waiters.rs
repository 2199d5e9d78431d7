//! One registry for requests that wait on this node, in arrival order: lock waiters in each
//! name's line, long-poll leases of the jobs block, and any later block's waits.
//!
//! A waiter [`Waiters::join`]s a line (a key: a lock name, or `()` for one line) with a value
//! (how to wake or answer it) and gets a [`Place`]; dropping the place (the request ended,
//! timed out or was cancelled) takes it out of the line, so nothing is left behind. The side
//! that serves waiters either visits the first of a line in order ([`Waiters::first`]: wake
//! them) or takes those it can serve ([`Waiters::take`]: answer them); [`Place::leave`] tells a
//! waiter whether it was still waiting or has been taken (and its answer is on the way).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lines of waiters by key, each in arrival order.
#[derive(Debug)]
pub struct Waiters<K, T> {
    state: Mutex<State<K, T>>,
}

#[derive(Debug)]
struct State<K, T> {
    next: u64,
    len: usize,
    lines: HashMap<K, BTreeMap<u64, T>>,
}

impl<K: Hash + Eq + Clone, T> Default for Waiters<K, T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                next: 0,
                len: 0,
                lines: HashMap::new(),
            }),
        }
    }
}

impl<K: Hash + Eq + Clone, T> Waiters<K, T> {
    fn lock(&self) -> MutexGuard<'_, State<K, T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the end of `key`'s line with `value`; the place leaves when dropped.
    pub fn join(&self, key: K, value: T) -> Place<'_, K, T> {
        let mut s = self.lock();
        let id = s.next;
        s.next += 1;
        s.len += 1;
        s.lines.entry(key.clone()).or_default().insert(id, value);
        Place {
            waiters: self,
            key,
            id,
        }
    }

    /// Waiters in every line.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f` with `key`'s line, first waiter first; `None` when nobody waits there.
    pub fn first<Q, R>(
        &self,
        key: &Q,
        f: impl FnOnce(&mut dyn Iterator<Item = &T>) -> R,
    ) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let s = self.lock();
        s.lines.get(key).map(|line| f(&mut line.values()))
    }

    /// Takes the waiters of `key`'s line that `pick` accepts, first waiter first.
    pub fn take<Q>(&self, key: &Q, mut pick: impl FnMut(&T) -> bool) -> Vec<T>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut s = self.lock();
        let Some(line) = s.lines.get_mut(key) else {
            return Vec::new();
        };
        let ids: Vec<u64> = line
            .iter()
            .filter(|(_, v)| pick(v))
            .map(|(id, _)| *id)
            .collect();
        let taken: Vec<T> = ids.iter().filter_map(|id| line.remove(id)).collect();
        if line.is_empty() {
            s.lines.remove(key);
        }
        s.len -= taken.len();
        taken
    }

    fn remove(&self, key: &K, id: u64) -> Option<T> {
        let mut s = self.lock();
        let line = s.lines.get_mut(key)?;
        let value = line.remove(&id);
        if line.is_empty() {
            s.lines.remove(key);
        }
        if value.is_some() {
            s.len -= 1;
        }
        value
    }
}

/// A waiter's place in its line; leaves it when dropped.
#[derive(Debug)]
pub struct Place<'a, K: Hash + Eq + Clone, T> {
    waiters: &'a Waiters<K, T>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq + Clone, T> Place<'_, K, T> {
    /// Leaves the line: `Some(value)` if still waiting, `None` if a server took it already
    /// (then its answer is coming).
    pub fn leave(&self) -> Option<T> {
        self.waiters.remove(&self.key, self.id)
    }
}

impl<K: Hash + Eq + Clone, T> Drop for Place<'_, K, T> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_arrival_order_and_places_leave_on_drop() {
        let w: Waiters<&str, u32> = Waiters::default();
        let a = w.join("x", 1);
        let b = w.join("x", 2);
        let _c = w.join("y", 3);
        assert_eq!(w.len(), 3);
        assert_eq!(
            w.first(&"x", |it| it.copied().collect::<Vec<_>>()),
            Some(vec![1, 2])
        );
        drop(a);
        assert_eq!(w.first(&"x", |it| it.next().copied()), Some(Some(2)));
        assert_eq!(b.leave(), Some(2), "still waiting");
        assert_eq!(b.leave(), None);
        assert_eq!(w.first(&"x", |_| ()), None, "an empty line is gone");
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn take_serves_in_order_and_the_taken_know_it() {
        let w: Waiters<(), u32> = Waiters::default();
        let places: Vec<_> = (1..=5).map(|v| w.join((), v)).collect();
        let mut budget = 2;
        let taken = w.take(&(), |v| {
            let ok = v % 2 == 1 && budget > 0;
            budget -= u32::from(ok);
            ok
        });
        assert_eq!(taken, [1, 3]);
        assert_eq!(places[0].leave(), None, "taken: its answer is coming");
        assert_eq!(places[1].leave(), Some(2));
        assert_eq!(w.len(), 2);
    }
}
