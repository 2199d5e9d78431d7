//! Housekeeping: `maintain` (promoting due jobs, rescuing expired leases), pruning and the
//! queue-depth gauges on a timer, and the PostgreSQL NOTIFY loops that wake other nodes'
//! leases (`announcer`) and this node's (`listen`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use mortar_core::storage::notify::Channel;

use super::JobsService;
use super::telemetry::DEPTH;
use crate::error::JobsError;

impl JobsService {
    /// Promotes due scheduled/retryable jobs to `available` and ends the attempts whose lease
    /// ran out (timed out, or their worker gone; see `end_expired`) — when one may be due (the
    /// earliest time this node knows of), and at least every `poll_ms` (for other nodes'
    /// writes). Leases then read `available` jobs only.
    pub async fn maintain(&self, now: u64) -> Result<(), JobsError> {
        let fresh = || {
            let due = self.next_due.load(Ordering::SeqCst);
            let checked = self.checked_at.load(Ordering::SeqCst);
            (now as i64) < due && now < checked + self.cfg.poll_ms && now >= checked
        };
        if fresh() {
            return Ok(());
        }
        // One at a time on this node; a caller that waited for another's run looks again, so
        // what it needs (up to its `now`) is done when it returns.
        let _one = self.maintaining.lock().await;
        if fresh() {
            return Ok(());
        }
        // Counted before and after: a lease that looks while this runs, or before, does not
        // mark its queues drained past it (see `known_drained`).
        self.wakes.fetch_add(1, Ordering::SeqCst);
        let result = async {
            self.checked_at.store(now, Ordering::SeqCst);
            // Boxed: a rare path that should not weigh on every lease's future.
            Box::pin(self.end_expired(now, None)).await?;
            self.store.promote(now).await.map_err(self.db())?;
            let next = self.store.next_due().await.map_err(self.db())?;
            self.next_due
                .store(next.unwrap_or(i64::MAX), Ordering::SeqCst);
            Ok(())
        }
        .await;
        self.wakes.fetch_add(1, Ordering::SeqCst);
        result
    }

    /// Deletes completed/cancelled jobs past retention and dead ones past `dead_retention_ms`.
    pub async fn prune(&self) -> Result<u64, JobsError> {
        let now = self.clock.now_ms();
        let rows = self.store.all_queue_rows().await.map_err(self.db())?;
        let own: Vec<String> = rows
            .iter()
            .filter(|r| r.retention_ms.is_some())
            .map(|r| r.queue.clone())
            .collect();
        let mut n = 0;
        let mut sweep =
            async |queue: &str, states: &[&str], keep_ms: u64| -> Result<(), JobsError> {
                loop {
                    let got = self
                        .store
                        .prune(queue, &own, states, now.saturating_sub(keep_ms), 5000)
                        .await
                        .map_err(self.db())?;
                    n += got;
                    if got < 5000 {
                        return Ok(());
                    }
                }
            };
        sweep("", &["completed", "cancelled"], self.cfg.retention_ms).await?;
        for r in rows.iter().filter(|r| r.retention_ms.is_some()) {
            sweep(
                &r.queue,
                &["completed", "cancelled"],
                r.retention_ms.unwrap_or(0) as u64,
            )
            .await?;
        }
        // Dead jobs keep the node-wide DLQ retention in every queue.
        sweep("", &["dead"], self.cfg.dead_retention_ms).await?;
        for q in &own {
            sweep(q, &["dead"], self.cfg.dead_retention_ms).await?;
        }
        Ok(n)
    }

    /// Refreshes the queue-depth gauges.
    async fn gauge_depths(&self) -> Result<(), JobsError> {
        for (queue, c) in self
            .store
            .counts(self.clock.now_ms())
            .await
            .map_err(self.db())?
        {
            for s in crate::state::State::ALL {
                let n = c
                    .by_state
                    .iter()
                    .find(|(st, _)| st == s.as_str())
                    .map_or(0, |(_, n)| *n);
                metrics::gauge!(DEPTH, "queue" => queue.clone(), "state" => s.as_str())
                    .set(n as f64);
            }
        }
        Ok(())
    }
}

/// Sends the announcements other nodes' [`listen`] hears: one NOTIFY at a time, outside the
/// enqueues' transactions and without waiting for a WAL flush, and none while no other node
/// listens (see [`Channel`]). (A NOTIFY inside an enqueue would serialize every enqueue's
/// commit, flush included, on PostgreSQL's notification-queue lock: under 1 000 enqueues/s
/// here.) Stops when the service is dropped.
pub(super) async fn announcer(mut rx: tokio::sync::mpsc::Receiver<()>, channel: Channel) {
    while rx.recv().await.is_some() {
        if channel.others_listen() {
            channel
                .send(channel.node(), "other nodes find the jobs when they poll")
                .await;
        }
    }
}

/// Wakes this node's waiting leases whenever another node announces jobs, or a transactional
/// enqueue commits (PostgreSQL NOTIFY). Reconnects when the connection drops; polling covers
/// the gap.
pub(super) async fn listen(svc: std::sync::Weak<JobsService>, channel: Channel) {
    channel
        .listen(
            || svc.strong_count() > 0,
            |payload| {
                if payload == Some(channel.node()) {
                    return true; // this node's own
                }
                svc.upgrade().map(|s| s.wake_leases()).is_some()
            },
        )
        .await;
}

/// Runs [`JobsService::maintain`] when something this node knows of comes due, even when no
/// lease asks (a worker that went silent, an attempt that timed out and nobody reports):
/// sleeps until the earliest known due time — woken early when an earlier one becomes known —
/// at least `poll_ms` and at most `prune_every_ms` (other nodes' jobs).
pub(super) async fn due_loop(svc: std::sync::Weak<JobsService>) {
    let mut failures = 0u32;
    loop {
        let Some(s) = svc.upgrade() else { return };
        let now = s.clock.now_ms();
        let floor = s.cfg.poll_ms.max(10);
        let ceiling = s.cfg.prune_every_ms.max(100);
        let nap = match s.maintain(now).await {
            Ok(()) => {
                failures = 0;
                let due = s.next_due.load(Ordering::SeqCst);
                (due.saturating_sub(now as i64).max(0) as u64).clamp(floor, ceiling)
            }
            // The store is down (say): back off rather than knock every poll_ms.
            Err(e) => {
                failures = (failures + 1).min(8);
                tracing::warn!(error = %e, "jobs: maintenance failed");
                (floor << failures).min(ceiling.max(floor))
            }
        };
        let sooner = s.due_sooner.clone();
        let stopping = s.stopping.clone();
        drop(s);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(nap)) => {}
            () = sooner.notified() => {}
            () = stopping.wait() => return,
        }
    }
}

/// Prunes and refreshes gauges every `prune_every_ms` (every node does; deletes are idempotent).
pub(super) async fn housekeeping(svc: std::sync::Weak<JobsService>) {
    loop {
        let every = match svc.upgrade() {
            Some(s) => {
                if let Err(e) = s.prune().await {
                    tracing::warn!(error = %e, "jobs: pruning failed");
                }
                let _ = s.gauge_depths().await;
                s.cfg.prune_every_ms
            }
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(every.max(100))).await;
    }
}
