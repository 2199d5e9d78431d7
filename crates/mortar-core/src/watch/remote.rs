//! Cross-node delivery of watched topics: Redis pub/sub when the node has Redis, else the
//! PostgreSQL NOTIFY channel (embedded mode has one node and no wire).
//!
//! * Each node announces the topics it watches every [`ANNOUNCE_EVERY`] (and at once when a
//!   topic gets its first watcher); a node forwards a topic's changes only while another node
//!   announced it within [`INTEREST_TTL`].
//! * Changes are batched by one sender task per node into messages (under PostgreSQL's 8 000
//!   byte payload limit), off the publisher's path: `forward` is a `try_send`.
//! * Every message carries the sender's sequence number. A receiver that sees a number skipped
//!   (a message lost, a publish that failed, the send queue full), or whose subscription
//!   reconnected, marks a gap on its topics: its watchers get a reset, never a silent gap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::{Change, Hub};
use crate::storage::notify::Channel;

/// How often a node announces the topics it watches.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// How long an announcement counts.
pub const INTEREST_TTL: Duration = Duration::from_millis(5_500);
/// Changes waiting to be sent; beyond this they are dropped and receivers reset.
const QUEUE: usize = 8192;

/// The wire between nodes.
pub enum Wire {
    Postgres(Channel),
    Redis {
        client: redis::Client,
        conn: redis::aio::ConnectionManager,
        channel: String,
    },
}

impl Wire {
    /// Largest message sent (PostgreSQL's NOTIFY payload limit is 8 000 bytes).
    fn max_bytes(&self) -> usize {
        match self {
            Self::Postgres(_) => 7_500,
            Self::Redis { .. } => 256 * 1024,
        }
    }

    async fn send(&self, payload: &str) {
        match self {
            Self::Postgres(ch) => {
                ch.send(payload, "watchers on other nodes will reset").await;
            }
            Self::Redis { conn, channel, .. } => {
                let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async(&mut conn.clone())
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "watch: PUBLISH failed; watchers on other nodes will reset");
                }
            }
        }
    }
}

/// This node's end of the wire.
pub(super) struct Remote {
    node: String,
    out: mpsc::Sender<Out>,
    lost: AtomicBool,
    interest: Mutex<HashMap<String, Instant>>,
    announce_now: Notify,
}

struct Out {
    topic: String,
    revision: Option<u64>,
    change: Change,
}

#[derive(Serialize, Deserialize)]
struct Message {
    /// Sender node.
    n: String,
    /// Sender's message sequence.
    q: u64,
    /// Topics the sender watches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    i: Vec<String>,
    /// Changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    c: Vec<WireChange>,
}

#[derive(Serialize, Deserialize)]
struct WireChange {
    t: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<u64>,
    e: String,
    s: String,
    d: String,
}

impl Remote {
    pub(super) fn wanted(&self, topic: &str) -> bool {
        let interest = self.interest.lock().unwrap_or_else(PoisonError::into_inner);
        interest
            .get(topic)
            .is_some_and(|at| at.elapsed() <= INTEREST_TTL)
    }

    pub(super) fn forward(&self, topic: &str, revision: Option<u64>, change: &Change) {
        let out = Out {
            topic: topic.to_owned(),
            revision,
            change: change.clone(),
        };
        if self.out.try_send(out).is_err() {
            self.lost.store(true, Ordering::Relaxed);
        }
    }

    pub(super) fn interested(&self) {
        self.announce_now.notify_one();
    }
}

impl Hub {
    /// Connects this node's topics to the other nodes over `wire` (once; later calls are
    /// ignored). Its tasks end when the node stops.
    pub fn connect(self: &Arc<Self>, wire: Wire) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let node = match &wire {
            Wire::Postgres(ch) => ch.node().to_owned(),
            Wire::Redis { .. } => crate::ids::new_id(),
        };
        let remote = Remote {
            node,
            out: tx,
            lost: AtomicBool::new(false),
            interest: Mutex::new(HashMap::new()),
            announce_now: Notify::new(),
        };
        if self.remote.set(remote).is_err() {
            return;
        }
        let wire = Arc::new(wire);
        tokio::spawn(send_loop(Arc::downgrade(self), wire.clone(), rx));
        tokio::spawn(receive_loop(
            Arc::downgrade(self),
            wire,
            self.stopping.clone(),
        ));
    }

    /// Handles one message from the wire.
    fn receive(&self, payload: &str, last_seq: &mut HashMap<String, u64>) {
        let Some(remote) = self.remote.get() else {
            return;
        };
        let Ok(msg) = serde_json::from_str::<Message>(payload) else {
            return;
        };
        if msg.n == remote.node {
            return;
        }
        if let Some(prev) = last_seq.insert(msg.n.clone(), msg.q)
            && msg.q != prev + 1
        {
            self.gap_everywhere();
        }
        if !msg.i.is_empty() {
            let now = Instant::now();
            let mut interest = remote
                .interest
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for t in msg.i {
                interest.insert(t, now);
            }
        }
        for c in msg.c {
            if self.existing(&c.t).is_none() {
                continue; // never watched here
            }
            let change = Change {
                revision: c.r.unwrap_or(0),
                event: c.e,
                subject: c.s,
                data: c.d,
            };
            self.append(&c.t, c.r.is_some(), c.r, change);
        }
    }
}

async fn send_loop(hub: Weak<Hub>, wire: Arc<Wire>, mut rx: mpsc::Receiver<Out>) {
    let mut seq: u64 = 0;
    let max = wire.max_bytes();
    let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
    loop {
        let (first, announce) = {
            let Some(h) = hub.upgrade() else { return };
            let remote = h.remote.get().expect("connected");
            tokio::select! {
                out = rx.recv() => match out {
                    Some(o) => (Some(o), false),
                    None => return,
                },
                _ = tick.tick() => (None, true),
                () = remote.announce_now.notified() => (None, true),
                () = h.stopping.wait() => return,
            }
        };
        let Some(h) = hub.upgrade() else { return };
        let remote = h.remote.get().expect("connected");
        let mut msg = Message {
            n: remote.node.clone(),
            q: 0,
            i: if announce { h.watched() } else { Vec::new() },
            c: Vec::new(),
        };
        let mut size = 64 + msg.i.iter().map(|t| t.len() + 3).sum::<usize>();
        let mut next = first;
        while let Some(o) = next.take() {
            size += o.topic.len() + o.change.event.len() + o.change.subject.len();
            size += o.change.data.len() * 6 / 5 + 40;
            msg.c.push(WireChange {
                t: o.topic,
                r: o.revision,
                e: o.change.event,
                s: o.change.subject,
                d: o.change.data,
            });
            if size < max {
                next = rx.try_recv().ok();
            }
        }
        if msg.i.is_empty() && msg.c.is_empty() {
            continue;
        }
        if remote.lost.swap(false, Ordering::Relaxed) {
            seq += 1; // receivers see the skipped number and reset
        }
        seq += 1;
        msg.q = seq;
        drop(h);
        if let Ok(payload) = serde_json::to_string(&msg) {
            wire.send(&payload).await;
        }
    }
}

async fn receive_loop(hub: Weak<Hub>, wire: Arc<Wire>, stopping: crate::shutdown::Stopping) {
    let mut last_seq = HashMap::new();
    let mut connected_before = false;
    let mut on = move |payload: Option<&str>| -> bool {
        let Some(h) = hub.upgrade() else { return false };
        match payload {
            Some(p) => h.receive(p, &mut last_seq),
            None => {
                // (Re)connected: anything sent while the subscription was down is lost.
                if connected_before {
                    h.gap_everywhere();
                }
                connected_before = true;
                last_seq.clear();
            }
        }
        !h.stopping.is_stopping()
    };
    match &*wire {
        Wire::Postgres(ch) => ch.listen(|| true, on).await,
        Wire::Redis {
            client, channel, ..
        } => loop {
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(pubsub) => {
                    if !on(None) {
                        return;
                    }
                    let mut stream = pubsub.into_on_message();
                    loop {
                        let m = tokio::select! {
                            m = futures_util::StreamExt::next(&mut stream) => m,
                            () = stopping.wait() => return,
                        };
                        let Some(m) = m else { break };
                        let payload: String = m.get_payload().unwrap_or_default();
                        if !on(Some(&payload)) {
                            return;
                        }
                    }
                    tracing::warn!("watch: Redis subscription lost; resubscribing");
                }
                Err(e) => {
                    if stopping.is_stopping() {
                        return;
                    }
                    tracing::warn!(error = %e, "watch: Redis SUBSCRIBE failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        },
    }
}
