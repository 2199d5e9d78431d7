//! Watches: revisioned change feeds per topic, and the typed event bus on top of them — built
//! once, so every block that streams (jobs' events, cron fires, later config, flags, events,
//! notifications, the console) gets the same guarantees.
//!
//! * **A topic is a feed of [`Change`]s with monotonic revisions.** Durable topics take their
//!   revisions from the block's store ([`Hub::publish_at`]: a config revision, an event
//!   position); ephemeral topics (job state changes, cron fires) are numbered by the node as they
//!   happen ([`Hub::publish`]), and their cursors carry the node's *epoch* (its start time), so a
//!   cursor from another node or an earlier run is recognised as such.
//! * **A watcher resumes from a [`Cursor`] or never silently skips.** Each node keeps the last
//!   `keep` changes of a topic in memory. A watcher whose cursor is still kept gets every change
//!   after it, in order; one whose cursor is older than what is kept, from another epoch, or
//!   that fell more than `keep` changes behind gets [`Item::Reset`] — re-read the state (the
//!   block's snapshot), then carry on — never a gap (etcd's `ErrCompacted`, etcd #8668, is the
//!   trap this avoids: there a watcher that missed compaction silently loses changes).
//! * **Memory is bounded**: the ring is shared by all watchers of a topic; a watcher is a
//!   position in it, not a queue, so a slow watcher costs nothing but its reset.
//! * **Cross-node** ([`remote`]): durable topics are published by every node from its own
//!   reading of the store, in revision order (never forwarded: a forwarded copy could overtake
//!   a revision the node has yet to read). Ephemeral topics: in cluster mode every node's
//!   changes reach the other nodes' watchers over Redis pub/sub (when configured) or the PostgreSQL NOTIFY channel. Nodes only
//!   forward topics another node watches (interest is announced every 2 s), so nobody pays for a
//!   feed nobody reads. Messages carry a per-sender sequence: a lost message, a dropped
//!   connection or a full send queue turns into a reset for the affected watchers, not a gap.
//! * **Unsubscribe on drop**: a [`Watcher`] is the subscription; dropping it unsubscribes.
//!
//! Publishing on a topic nobody watches (here or on another node) is one map lookup: no
//! serialization, no allocation ([`Hub::wants`]).
//!
//! The typed bus: a domain event implements [`Event`] (its topic, event name and subject) and
//! is published with [`Hub::emit`]; [`Hub::subscribe`] gives a typed [`Subscription`]. SSE,
//! long-poll and WebSocket delivery of any watcher are in [`crate::stream`].

pub mod remote;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::shutdown::Stopping;

/// Changes kept per topic on each node unless configured otherwise.
pub const KEEP: usize = 4096;
/// How long a topic stays watched after its last watcher left, so a client that reconnects
/// (a network blip, a page reload) resumes where it was instead of getting a reset.
pub const LINGER: Duration = Duration::from_secs(30);

/// One change on a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    /// The event's name (`job.completed`, `config.put`): the SSE `event:` field.
    pub event: String,
    /// What the change is about (a queue, a key, a stream): what watchers filter on.
    pub subject: String,
    /// The payload, as JSON text.
    pub data: String,
}

/// Where a watcher is: a revision, and for ephemeral topics the epoch of the node that
/// numbered it. Rendered `"<revision>"` (durable topics) or `"<epoch>-<revision>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Option<u64>,
    pub revision: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.epoch {
            Some(e) => write!(f, "{e}-{}", self.revision),
            None => write!(f, "{}", self.revision),
        }
    }
}

impl std::str::FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a cursor: expected <revision> or <epoch>-<revision>");
        let num = |p: &str| p.parse::<u64>().map_err(|_| bad());
        match s.split_once('-') {
            Some((e, r)) => Ok(Self {
                epoch: Some(num(e)?),
                revision: num(r)?,
            }),
            None => Ok(Self {
                epoch: None,
                revision: num(s)?,
            }),
        }
    }
}

/// What a watcher receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Change(Arc<Change>),
    /// Changes may have been missed before this point (the cursor was compacted away, came from
    /// another node or run, the watcher fell behind, or a cross-node message was lost): re-read
    /// the state, then continue from `cursor`.
    Reset {
        cursor: Cursor,
    },
}

/// A typed domain event on the bus.
pub trait Event: Serialize + DeserializeOwned + Send + 'static {
    /// The topic every event of this type goes to.
    const TOPIC: &'static str;
    /// This event's name (`job.dead`).
    fn event(&self) -> &'static str;
    /// What it is about (a queue, a schedule id): what watchers filter on.
    fn subject(&self) -> &str;
}

/// The node's topics. One per node, in [`crate::storage::Storage::hub`].
pub struct Hub {
    epoch: u64,
    keep: usize,
    keepalive_ms: AtomicU64,
    start: std::time::Instant,
    pub stopping: Stopping,
    topics: Mutex<HashMap<String, Arc<Feed>>>,
    remote: OnceLock<remote::Remote>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("epoch", &self.epoch)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

/// One topic on this node.
struct Feed {
    name: String,
    durable: bool,
    ring: Mutex<Ring>,
    /// The next entry's sequence number: watchers wait for it to move.
    tail: tokio::sync::watch::Sender<u64>,
    watchers: AtomicUsize,
    /// When the last watcher left (ms since the hub's start; 0: never).
    left_ms: AtomicU64,
    start: std::time::Instant,
}

struct Ring {
    /// The revision of the newest change (or of the topic's start).
    last: u64,
    /// Watchers resuming from a revision below this get a reset.
    base: u64,
    /// Sequence number of `entries[0]`.
    front: u64,
    /// Whether a durable topic has seen its first change (before it, nothing is known here).
    started: bool,
    entries: VecDeque<Entry>,
}

/// A change, or a gap (`change: None`) after `revision`: something may be missing there.
struct Entry {
    revision: u64,
    change: Option<Arc<Change>>,
}

impl Feed {
    /// Watched now, or within [`LINGER`].
    fn watched(&self) -> bool {
        if self.watchers.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let left = self.left_ms.load(Ordering::Relaxed);
        left != 0 && (self.start.elapsed().as_millis() as u64) < left + LINGER.as_millis() as u64
    }

    /// Marks a gap at the newest revision. With nobody watching, a gap right after a gap says
    /// nothing more (a watcher that resumes there sees the first).
    fn gap(&self, keep: usize) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if self.watchers.load(Ordering::Relaxed) == 0
            && ring.entries.back().is_some_and(|e| e.change.is_none())
        {
            return;
        }
        let revision = ring.last;
        let tail = ring.push(
            Entry {
                revision,
                change: None,
            },
            keep,
        );
        drop(ring);
        self.tail.send_replace(tail);
    }

    /// A change was published with nobody watching: it is not kept, so mark its place.
    fn skipped(&self, keep: usize) {
        self.gap(keep);
    }
}

impl Ring {
    fn next_seq(&self) -> u64 {
        self.front + self.entries.len() as u64
    }

    fn push(&mut self, e: Entry, keep: usize) -> u64 {
        self.last = self.last.max(e.revision);
        self.entries.push_back(e);
        while self.entries.len() > keep {
            if let Some(old) = self.entries.pop_front() {
                self.front += 1;
                self.base = self.base.max(old.revision);
            }
        }
        self.next_seq()
    }

    /// The sequence number a watcher that has seen everything up to `revision` reads next, or
    /// `None` when changes after it are no longer all kept.
    fn resume(&self, revision: u64) -> Option<u64> {
        if revision < self.base || revision > self.last {
            return None;
        }
        // Gaps sort after the change of their revision; one at `revision` must still be seen.
        let i = self.entries.partition_point(|e| {
            e.revision < revision || (e.revision == revision && e.change.is_some())
        });
        Some(self.front + i as u64)
    }
}

impl Hub {
    /// A hub keeping `keep` changes per topic, with the node's shutdown signal.
    pub fn new(keep: usize, stopping: Stopping) -> Arc<Self> {
        let epoch = (crate::clock::unix_time().as_millis() as u64).max(1);
        Arc::new(Self {
            epoch,
            keep: keep.max(1),
            keepalive_ms: AtomicU64::new(15_000),
            start: std::time::Instant::now(),
            stopping,
            topics: Mutex::new(HashMap::new()),
            remote: OnceLock::new(),
        })
    }

    /// This node's epoch (its start, in Unix ms): the prefix of its ephemeral cursors.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How often streams send a keep-alive (an SSE comment, a WebSocket ping).
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms.load(Ordering::Relaxed))
    }

    /// Sets the keep-alive: the server keeps it shorter than its HTTP idle timeout, so a quiet
    /// stream is never closed as idle.
    pub fn set_keepalive(&self, every: Duration) {
        let ms = (every.as_millis() as u64).max(10);
        self.keepalive_ms.store(ms, Ordering::Relaxed);
    }

    fn feed(&self, topic: &str, durable: bool) -> Arc<Feed> {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| {
                Arc::new(Feed {
                    name: topic.to_owned(),
                    durable,
                    ring: Mutex::new(Ring {
                        last: 0,
                        base: 0,
                        front: 0,
                        started: !durable,
                        entries: VecDeque::new(),
                    }),
                    tail: tokio::sync::watch::channel(0).0,
                    watchers: AtomicUsize::new(0),
                    left_ms: AtomicU64::new(0),
                    start: self.start,
                })
            })
            .clone()
    }

    fn existing(&self, topic: &str) -> Option<Arc<Feed>> {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics.get(topic).cloned()
    }

    /// Whether anyone — a watcher here (or one that left within [`LINGER`]), or on another
    /// node — watches `topic`. Publishers may skip building a change nobody wants.
    pub fn wants(&self, topic: &str) -> bool {
        self.existing(topic).is_some_and(|f| f.watched())
            || self.remote.get().is_some_and(|r| r.wanted(topic))
    }

    /// Publishes on an ephemeral topic, numbered by this node. Skipped when nobody watches
    /// (then a client resuming later from an earlier cursor gets a reset: the ring marks it).
    pub fn publish(&self, topic: &str, event: &str, subject: &str, data: &impl Serialize) {
        let feed = self.existing(topic);
        let local = feed.as_ref().is_some_and(|f| f.watched());
        let remote = self.remote.get().filter(|r| r.wanted(topic));
        if !local && remote.is_none() {
            if let Some(f) = feed {
                f.skipped(self.keep);
            }
            return;
        }
        let Ok(data) = serde_json::to_string(data) else {
            return;
        };
        let change = Change {
            revision: 0,
            event: event.to_owned(),
            subject: subject.to_owned(),
            data,
        };
        if let Some(r) = remote {
            r.forward(topic, None, &change);
        }
        self.append(topic, false, None, change);
    }

    /// Publishes on a durable topic at `revision` (from the block's store), on this node only:
    /// every node publishes a durable topic from its own reading of the store, in revision
    /// order (a copy over the wire could overtake a revision this node has yet to read, and
    /// the watchers would skip it). A revision at or below the topic's newest is a duplicate
    /// and ignored.
    pub fn publish_at(&self, topic: &str, revision: u64, event: &str, subject: &str, data: String) {
        let change = Change {
            revision,
            event: event.to_owned(),
            subject: subject.to_owned(),
            data,
        };
        self.append(topic, true, Some(revision), change);
    }

    /// Emits a typed event on its topic (nothing is built when nobody watches).
    pub fn emit<E: Event>(&self, e: &E) {
        self.publish(E::TOPIC, e.event(), e.subject(), e);
    }

    /// Appends `change` to `topic` here (numbering it when `revision` is `None`).
    fn append(&self, topic: &str, durable: bool, revision: Option<u64>, mut change: Change) {
        let feed = self.feed(topic, durable);
        let mut ring = feed.ring.lock().unwrap_or_else(PoisonError::into_inner);
        change.revision = match revision {
            Some(r) if ring.started && r <= ring.last => return,
            Some(r) => {
                if !ring.started {
                    // Changes before the first this node saw are not known here.
                    ring.started = true;
                    ring.base = r;
                }
                r
            }
            None => ring.last + 1,
        };
        let revision = change.revision;
        let tail = ring.push(
            Entry {
                revision,
                change: Some(Arc::new(change)),
            },
            self.keep,
        );
        drop(ring);
        feed.tail.send_replace(tail);
    }

    /// Marks a gap on every topic: watchers past this point get a reset (a cross-node message
    /// was lost).
    fn gap_everywhere(&self) {
        let feeds: Vec<Arc<Feed>> = {
            let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
            topics.values().cloned().collect()
        };
        for feed in feeds {
            feed.gap(self.keep);
        }
    }

    /// Watches `topic` from `from` (the last cursor the client saw), or from now. `durable`
    /// says how the topic is numbered (see the module doc).
    pub fn watch(self: &Arc<Self>, topic: &str, durable: bool, from: Option<Cursor>) -> Watcher {
        let feed = self.feed(topic, durable);
        if feed.watchers.fetch_add(1, Ordering::Relaxed) == 0
            && let Some(r) = self.remote.get()
        {
            r.interested();
        }
        let ring = feed.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let epoch = (!feed.durable).then_some(self.epoch);
        let (next, reset) = match from {
            None => (ring.next_seq(), false),
            Some(c) if c.epoch != epoch => (ring.next_seq(), true),
            Some(c) => match ring.resume(c.revision) {
                Some(seq) => (seq, false),
                None => (ring.next_seq(), true),
            },
        };
        let cursor = Cursor {
            epoch,
            revision: ring.last,
        };
        drop(ring);
        let rx = feed.tail.subscribe();
        Watcher {
            feed,
            next,
            seen: from.filter(|_| !reset).unwrap_or(cursor),
            reset: reset.then_some(cursor),
            rx,
            epoch,
        }
    }

    /// A typed subscription to `E`'s topic, from now.
    pub fn subscribe<E: Event>(self: &Arc<Self>) -> Subscription<E> {
        Subscription {
            watcher: self.watch(E::TOPIC, false, None),
            _event: std::marker::PhantomData,
        }
    }

    /// Topics with a watcher on this node (announced to the other nodes).
    fn watched(&self) -> Vec<String> {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics
            .values()
            .filter(|f| f.watched())
            .map(|f| f.name.clone())
            .collect()
    }
}

/// A position in a topic; dropping it unsubscribes.
pub struct Watcher {
    feed: Arc<Feed>,
    next: u64,
    seen: Cursor,
    reset: Option<Cursor>,
    rx: tokio::sync::watch::Receiver<u64>,
    epoch: Option<u64>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("topic", &self.feed.name)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if self.feed.watchers.fetch_sub(1, Ordering::Relaxed) == 1 {
            let ms = self.feed.start.elapsed().as_millis() as u64 + 1;
            self.feed.left_ms.store(ms, Ordering::Relaxed);
        }
    }
}

impl Watcher {
    /// The cursor of the last item delivered (where a reconnecting client resumes).
    pub fn cursor(&self) -> Cursor {
        self.seen
    }

    /// The next item if one is ready.
    pub fn try_next(&mut self) -> Option<Item> {
        if let Some(cursor) = self.reset.take() {
            self.seen = cursor;
            return Some(Item::Reset { cursor });
        }
        let ring = self
            .feed
            .ring
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.next < ring.front {
            // Fell behind by more than the ring keeps.
            self.next = ring.next_seq();
            self.seen = Cursor {
                epoch: self.epoch,
                revision: ring.last,
            };
            return Some(Item::Reset { cursor: self.seen });
        }
        let entry = ring.entries.get((self.next - ring.front) as usize)?;
        self.next += 1;
        self.seen = Cursor {
            epoch: self.epoch,
            revision: entry.revision,
        };
        Some(match &entry.change {
            Some(c) => Item::Change(c.clone()),
            None => Item::Reset { cursor: self.seen },
        })
    }

    /// The next item, waiting for one.
    pub async fn next(&mut self) -> Item {
        loop {
            self.rx.mark_unchanged();
            if let Some(item) = self.try_next() {
                return item;
            }
            // The feed (and its sender) lives as long as this watcher: never closed.
            let _ = self.rx.changed().await;
        }
    }

    /// The next item, waiting at most `wait` and not past the node's shutdown.
    pub async fn next_within(&mut self, wait: Duration, stopping: &Stopping) -> Option<Item> {
        tokio::select! {
            item = self.next() => Some(item),
            () = tokio::time::sleep(wait) => None,
            () = stopping.wait() => None,
        }
    }
}

/// A typed subscription (see [`Hub::subscribe`]).
#[derive(Debug)]
pub struct Subscription<E> {
    watcher: Watcher,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: Event> Subscription<E> {
    /// The next event; `Err(cursor)` when events may have been missed (see [`Item::Reset`]).
    pub async fn next(&mut self) -> Result<E, Cursor> {
        loop {
            match self.watcher.next().await {
                Item::Reset { cursor } => return Err(cursor),
                Item::Change(c) => {
                    if let Ok(e) = serde_json::from_str(&c.data) {
                        return Ok(e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
