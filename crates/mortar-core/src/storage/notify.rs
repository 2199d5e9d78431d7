//! Cross-node wake-ups over a PostgreSQL NOTIFY channel, for blocks whose nodes share one
//! database (jobs: new jobs; lock: released locks).
//!
//! A notification is a hint, never the only way news travels: receivers keep a poll as their
//! safety net, so a lost one (connection drop, full queue, a peer not known yet) costs a poll
//! interval, never correctness.
//!
//! [`Channel`] adds what every such block needs around `LISTEN`/`NOTIFY`:
//! * **Sending without a WAL flush** (`synchronous_commit = off` for the NOTIFY's own
//!   transaction): a hint does not need to survive a crash.
//! * **Knowing whether anyone listens.** Every node says hello on the channel
//!   (`hello <node>`) when its listener connects, every [`HELLO_EVERY`] after, and at once when
//!   it hears a node it did not know (so a new node learns of the others in one round trip).
//!   [`Channel::others_listen`] is true while another node was heard within [`PEER_TTL`]. A
//!   lone node skips its NOTIFYs: on PostgreSQL each costs a transaction, and every listener
//!   (its own included) is woken to read it — about a tenth of the database's CPU at 1 000
//!   enqueues/s. A node that starts misses the others' notifications until they hear its
//!   hello: one round trip, covered by its poll.
//!
//! Hellos are handled here; the block's `on` callback sees every other payload, its own
//! included (payload formats are the block's; each starts with the sending node's id).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgPool;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often a node says hello on each channel it listens on.
pub const HELLO_EVERY: Duration = Duration::from_secs(2);
/// How long a node counts as listening after its last hello (two hellos may be lost).
pub const PEER_TTL: Duration = Duration::from_millis(5_500);

const HELLO: &str = "hello ";

/// One block's NOTIFY channel on this node; cheap to clone.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    channel: &'static str,
    what: &'static str,
    node: String,
    start: Instant,
    /// When another node was last heard (ms after `start`, + 1; 0: never).
    heard_ms: AtomicU64,
    hello_now: Notify,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("channel", &self.inner.channel)
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// `channel` on `pool`, with a fresh node id; `what` names the block in warnings.
    pub fn new(pool: PgPool, channel: &'static str, what: &'static str) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                channel,
                what,
                node: crate::ids::new_id(),
                start: Instant::now(),
                heard_ms: AtomicU64::new(0),
                hello_now: Notify::new(),
            }),
        }
    }

    /// This node's id on the channel (payloads start with it, so a node knows its own).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Whether another node listening on the channel was heard within [`PEER_TTL`].
    pub fn others_listen(&self) -> bool {
        let heard = self.inner.heard_ms.load(Ordering::Relaxed);
        heard != 0
            && self.inner.start.elapsed().as_millis() as u64 + 1 - heard
                <= PEER_TTL.as_millis() as u64
    }

    /// NOTIFYs `payload` (under PostgreSQL's 8 000-byte limit), without waiting for a WAL
    /// flush; a failure is logged (`dropped` says what the receivers do instead).
    pub async fn send(&self, payload: &str, dropped: &str) {
        let sent =
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)")
                .bind(self.inner.channel)
                .bind(payload)
                .execute(&self.inner.pool)
                .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "{}: NOTIFY failed; {dropped}", self.inner.what);
        }
    }

    /// Listens for as long as `on` returns true: `on(Some(payload))` for each notification
    /// other than hellos, `on(None)` each time the connection is made (notifications sent
    /// before, or in a gap, are lost: callers keep a poll as their safety net). Reconnects, a
    /// second apart, when the connection fails; ends quietly when the pool closes at shutdown.
    /// Says hello meanwhile (see the module doc) while `alive()` holds: a block whose service
    /// is gone stops saying hello even if no notification comes to end its `on`.
    pub async fn listen(&self, alive: impl Fn() -> bool, mut on: impl FnMut(Option<&str>) -> bool) {
        let inner = &self.inner;
        let mut peers: HashMap<String, Instant> = HashMap::new();
        let listening = listen(inner.pool.clone(), inner.channel, inner.what, |payload| {
            let Some(p) = payload else {
                inner.hello_now.notify_one();
                return on(None);
            };
            let Some(node) = p.strip_prefix(HELLO) else {
                return on(Some(p));
            };
            if node != inner.node {
                let now = Instant::now();
                let known = peers
                    .insert(node.to_owned(), now)
                    .is_some_and(|at| now - at <= PEER_TTL);
                if !known {
                    inner.hello_now.notify_one(); // a new node: tell it about this one
                    peers.retain(|_, at| now - *at <= PEER_TTL);
                }
                let ms = (now - inner.start).as_millis() as u64 + 1;
                inner.heard_ms.store(ms, Ordering::Relaxed);
            }
            true
        });
        let hellos = async {
            let hello = format!("{HELLO}{}", inner.node);
            loop {
                let _ = tokio::time::timeout(HELLO_EVERY, inner.hello_now.notified()).await;
                if !alive() {
                    return;
                }
                self.send(
                    &hello,
                    "other nodes may not know this one until its next hello",
                )
                .await;
            }
        };
        tokio::select! {
            () = listening => {}
            () = hellos => {}
        }
    }
}

/// Listens on the PostgreSQL channel `channel` for as long as `on` returns true:
/// `on(Some(payload))` for each notification, `on(None)` each time the connection is made.
/// Reconnects, a second apart, when the connection fails (`what` names the block in the
/// warning); ends quietly when the pool closes at shutdown.
async fn listen(pool: PgPool, channel: &str, what: &str, mut on: impl FnMut(Option<&str>) -> bool) {
    while !pool.is_closed() {
        let listening = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen(channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listening.await {
            Ok(l) => l,
            Err(e) => {
                if !pool.is_closed() {
                    tracing::warn!(error = %e, "{what}: LISTEN failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        if !on(None) {
            return;
        }
        loop {
            // Ok(None): the listener lost its connection and made it again.
            match listener.try_recv().await {
                Ok(n) => {
                    if !on(n.as_ref().map(sqlx::postgres::PgNotification::payload)) {
                        return;
                    }
                }
                Err(e) => {
                    if !pool.is_closed() {
                        tracing::warn!(error = %e, "{what}: LISTEN connection lost; reconnecting");
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
        let end = Instant::now() + within;
        while !ok() {
            assert!(Instant::now() < end, "{what} within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A lone node hears no one; a second node and the first learn of each other at once (well
    /// before the next periodic hello); payloads reach the other node, hellos never reach the
    /// block; a node that stops listening stops counting after `PEER_TTL`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_learn_of_each_other_at_once_and_forget_a_gone_one() {
        let Some(url) = crate::storage::test_service_url("MORTAR_TEST_DATABASE_URL") else {
            return;
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        let name: &'static str = Box::leak(format!("mortar_test_{}", crate::ids::new_id()).into());
        let a = Channel::new(pool.clone(), name, "test");
        let a_listens = tokio::spawn({
            let a = a.clone();
            async move { a.listen(|| true, |_| true).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!a.others_listen(), "alone on the channel");

        let b = Channel::new(pool.clone(), name, "test");
        let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let b_listens = tokio::spawn({
            let b = b.clone();
            async move {
                b.listen(
                    || true,
                    |p| {
                        let _ = tx.send(p.map(str::to_owned));
                        true
                    },
                )
                .await;
            }
        });
        until("the nodes know each other", Duration::from_secs(1), || {
            a.others_listen() && b.others_listen()
        })
        .await;

        let payload = format!("{}\nsomething", a.node());
        a.send(&payload, "test").await;
        let mut got = Vec::new();
        while got.last() != Some(&Some(payload.clone())) {
            let p = tokio::time::timeout(Duration::from_secs(2), heard.recv())
                .await
                .expect("B hears A's payload")
                .unwrap();
            got.push(p);
        }
        assert_eq!(got[0], None, "on(None) when the connection is made");
        assert!(
            got.iter().flatten().all(|p| !p.starts_with(HELLO)),
            "hellos stay inside: {got:?}"
        );

        b_listens.abort();
        until("A forgets B", PEER_TTL + HELLO_EVERY, || !a.others_listen()).await;
        a_listens.abort();
    }
}
