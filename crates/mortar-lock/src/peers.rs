//! Cross-node wake-ups on PostgreSQL: a release (or a give-up that frees a permit) on one node
//! wakes the waiters of that lock on every other node at once, over `NOTIFY mortar_lock`, instead
//! of at their next poll. Polling (`poll_ms`) stays as the safety net: a lost notification
//! (connection drop, full queue) costs at most one poll interval, never a grant.
//!
//! Payload: `<node id>\n<name>\n<name>…` (a node ignores its own; several releases that queue up
//! go out in one NOTIFY, under PostgreSQL's 8 000-byte payload limit). A lone node sends none
//! (see [`Channel`]).

use std::sync::Weak;

use mortar_core::storage::notify::Channel;
use tokio::sync::mpsc;

use crate::service::LockService;

const CHANNEL: &str = "mortar_lock";
/// Announcements waiting to go out; past this, names are dropped (the poll covers them).
const QUEUE: usize = 4096;
const MAX_PAYLOAD: usize = 7900;

/// This node's side of the wake-ups: `announce` hands a name to the sender task.
#[derive(Debug)]
pub struct Peers {
    tx: mpsc::Sender<String>,
}

impl Peers {
    /// Starts the sender and the listener for `svc` on `pool`; both stop with the service.
    pub fn start(svc: Weak<LockService>, pool: sqlx::PgPool) -> Self {
        let channel = Channel::new(pool, CHANNEL, "lock");
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(announcer(rx, channel.clone()));
        tokio::spawn(listen(svc, channel));
        Self { tx }
    }

    pub fn announce(&self, name: &str) {
        let _ = self.tx.try_send(name.to_owned());
    }
}

/// Sends queued names, coalesced, one NOTIFY at a time and without waiting for a WAL flush
/// (a notification is a hint; losing one costs a poll interval); none while no other node
/// listens.
async fn announcer(mut rx: mpsc::Receiver<String>, channel: Channel) {
    const DROPPED: &str = "other nodes' waiters notice at their next poll";
    while let Some(first) = rx.recv().await {
        let mut names = vec![first];
        while names.len() < 256
            && let Ok(n) = rx.try_recv()
        {
            names.push(n);
        }
        if !channel.others_listen() {
            continue;
        }
        names.sort_unstable();
        names.dedup();
        let node = channel.node();
        let mut payload = node.to_owned();
        for n in names {
            if payload.len() + 1 + n.len() > MAX_PAYLOAD {
                channel.send(&payload, DROPPED).await;
                payload = node.to_owned();
            }
            payload.push('\n');
            payload.push_str(&n);
        }
        channel.send(&payload, DROPPED).await;
    }
}

/// Wakes this node's waiters of every lock another node announces. Reconnects when the
/// connection drops; polling covers the gap.
async fn listen(svc: Weak<LockService>, channel: Channel) {
    channel
        .listen(
            || svc.strong_count() > 0,
            |payload| {
                // None: (re)connected; notifications may be lost, the poll covers them.
                let Some(payload) = payload else { return true };
                let mut parts = payload.split('\n');
                if parts.next() == Some(channel.node()) {
                    return true;
                }
                let Some(s) = svc.upgrade() else { return false };
                for name in parts {
                    s.wake_local(name);
                }
                true
            },
        )
        .await;
}
