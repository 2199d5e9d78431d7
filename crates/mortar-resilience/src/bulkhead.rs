//! The bulkhead: at most `max_permits` weighted permits in use, a bounded FIFO queue of waiters
//! with a queue timeout, immediate rejection when the queue is full. Waiting is cancellable
//! (dropping the future leaves the queue) and fair (first come, first served — a waiter is
//! never overtaken, even by a lighter request that would fit).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Bulkhead settings (`[resilience.bulkheads.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BulkheadConfig {
    pub max_permits: u32,
    /// Waiters beyond the permits; 0 = reject as soon as all permits are taken.
    pub max_queue: usize,
    pub queue_timeout_ms: u64,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_permits: 64,
            max_queue: 128,
            queue_timeout_ms: 1000,
        }
    }
}

impl BulkheadConfig {
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_permits == 0 || self.max_permits > (Semaphore::MAX_PERMITS as u32) {
            return Err(("max_permits", "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadError {
    #[error("bulkhead is full (all permits taken and the queue is full)")]
    Full,
    #[error("waited the whole queue timeout for a permit")]
    QueueTimeout,
    #[error("weight {0} exceeds the bulkhead's permits")]
    TooHeavy(u32),
}

/// A named bulkhead.
#[derive(Debug)]
pub struct Bulkhead {
    name: String,
    cfg: BulkheadConfig,
    sem: Semaphore,
    waiting: AtomicUsize,
}

/// Permits held; released on drop.
#[derive(Debug)]
pub struct BulkheadPermit<'a> {
    _permit: SemaphorePermit<'a>,
}

struct Waiting<'a>(&'a Bulkhead);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let left = self.0.waiting.fetch_sub(1, Ordering::SeqCst) - 1;
        crate::metrics::queue_depth(&self.0.name, left);
    }
}

impl Bulkhead {
    pub fn new(name: &str, cfg: BulkheadConfig) -> Self {
        Self {
            name: name.to_owned(),
            sem: Semaphore::new(cfg.max_permits as usize),
            cfg,
            waiting: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &BulkheadConfig {
        &self.cfg
    }

    /// Permits in use now.
    pub fn in_use(&self) -> u32 {
        self.cfg.max_permits - self.sem.available_permits() as u32
    }

    /// Waiters now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Takes `weight` permits, waiting in line if needed.
    pub async fn acquire(&self, weight: u32) -> Result<BulkheadPermit<'_>, BulkheadError> {
        if weight == 0 || weight > self.cfg.max_permits {
            return Err(BulkheadError::TooHeavy(weight));
        }
        // Only take the fast path when nobody waits: a waiter is never overtaken.
        if self.waiting.load(Ordering::SeqCst) == 0
            && let Ok(p) = self.sem.try_acquire_many(weight)
        {
            return Ok(BulkheadPermit { _permit: p });
        }
        // Join the queue if there is room (compare-and-swap: the bound is exact).
        let mut n = self.waiting.load(Ordering::SeqCst);
        loop {
            if n >= self.cfg.max_queue {
                crate::metrics::bulkhead_rejected(&self.name);
                return Err(BulkheadError::Full);
            }
            match self
                .waiting
                .compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break,
                Err(actual) => n = actual,
            }
        }
        crate::metrics::queue_depth(&self.name, n + 1);
        let _waiting = Waiting(self);
        let wait = Duration::from_millis(self.cfg.queue_timeout_ms);
        match tokio::time::timeout(wait, self.sem.acquire_many(weight)).await {
            Ok(Ok(p)) => Ok(BulkheadPermit { _permit: p }),
            Ok(Err(_)) => Err(BulkheadError::Full),
            Err(_) => {
                crate::metrics::bulkhead_rejected(&self.name);
                Err(BulkheadError::QueueTimeout)
            }
        }
    }

    /// Runs `f` holding `weight` permits.
    pub async fn call<T, F: Future<Output = T>>(
        &self,
        weight: u32,
        f: impl FnOnce() -> F,
    ) -> Result<T, BulkheadError> {
        let _permit = self.acquire(weight).await?;
        Ok(f().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn rejects_when_permits_and_queue_are_full() {
        let b = Bulkhead::new(
            "b",
            BulkheadConfig {
                max_permits: 2,
                max_queue: 1,
                queue_timeout_ms: 100,
            },
        );
        let p1 = b.acquire(1).await.unwrap();
        let _p2 = b.acquire(1).await.unwrap();
        let waiter = b.acquire(1);
        tokio::pin!(waiter);
        assert!(futures_util::poll!(waiter.as_mut()).is_pending());
        assert_eq!(b.queued(), 1);
        assert_eq!(b.acquire(1).await.unwrap_err(), BulkheadError::Full);
        drop(p1);
        assert!(waiter.await.is_ok());
        assert_eq!(b.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_timeout_and_cancellation_leave_the_queue() {
        let b = Bulkhead::new(
            "b",
            BulkheadConfig {
                max_permits: 1,
                max_queue: 5,
                queue_timeout_ms: 50,
            },
        );
        let _p = b.acquire(1).await.unwrap();
        assert_eq!(b.acquire(1).await.unwrap_err(), BulkheadError::QueueTimeout);
        {
            let w = b.acquire(1);
            tokio::pin!(w);
            assert!(futures_util::poll!(w.as_mut()).is_pending());
            assert_eq!(b.queued(), 1);
        }
        assert_eq!(b.queued(), 0, "a dropped waiter leaves the queue");
        assert_eq!(b.acquire(2).await.unwrap_err(), BulkheadError::TooHeavy(2));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_first_come_first_served() {
        let b = Arc::new(Bulkhead::new(
            "b",
            BulkheadConfig {
                max_permits: 2,
                max_queue: 10,
                queue_timeout_ms: 10_000,
            },
        ));
        let held = b.acquire(2).await.unwrap();
        let heavy = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(2).await.map(|_| tokio::time::Instant::now()) }
        });
        tokio::task::yield_now().await;
        // A light request arriving later must not overtake the heavy waiter.
        let light = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(1).await.map(|_| tokio::time::Instant::now()) }
        });
        tokio::task::yield_now().await;
        drop(held);
        let (h, l) = (heavy.await.unwrap().unwrap(), light.await.unwrap().unwrap());
        assert!(h <= l);
    }
}
