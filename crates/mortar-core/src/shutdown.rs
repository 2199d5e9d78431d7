//! The node's "stopping" signal: set once when SIGTERM/SIGINT arrives, before the HTTP server
//! drains. Everything that makes a client wait (long-poll leases, lock waits, and later SSE and
//! WebSocket streams) watches it and answers at once — an empty lease, a 503 with
//! `Retry-After` naming the cause — so that draining never waits out a client's `wait_ms` and
//! no client is left without a response.

use tokio_util::sync::CancellationToken;

use crate::problem::Problem;

/// A clonable handle on the node's shutdown; every clone sees the same signal.
#[derive(Debug, Clone, Default)]
pub struct Stopping(CancellationToken);

impl Stopping {
    /// Marks the node as stopping; every waiter wakes.
    pub fn begin(&self) {
        self.0.cancel();
    }

    pub fn is_stopping(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once the node is stopping (at once if it already is).
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }
}

/// The answer to a request that was waiting when the node began to stop: 503, retry (on this
/// node's replacement or another node) after a second.
pub fn problem() -> Problem {
    Problem::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "shutting-down",
        "node shutting down",
        "this node is shutting down; retry, another node (or this one, restarted) will answer",
    )
    .with_retry_after(1)
}
