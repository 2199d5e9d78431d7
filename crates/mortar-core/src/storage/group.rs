//! Group commit: the items that arrive while one batch is being written wait and go together in
//! the next batch — one statement or transaction, one WAL flush, for all of them. An idle
//! group writes at once. Blocks use it on PostgreSQL for their small hot writes (jobs'
//! enqueues, config's change sets); each item carries its own way to answer its caller.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A queue drained by one task at a time, in batches of at most `max` items.
pub struct Group<T> {
    state: Mutex<State<T>>,
    max: usize,
}

struct State<T> {
    /// A drain task is running (it takes whatever is pending when its batch is written).
    busy: bool,
    pending: Vec<T>,
}

impl<T> std::fmt::Debug for Group<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<T> Default for Group<T> {
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl<T> Group<T> {
    /// A group whose batches hold at most `max` items.
    pub fn new(max: usize) -> Self {
        Self {
            state: Mutex::new(State {
                busy: false,
                pending: Vec::new(),
            }),
            max: max.max(1),
        }
    }
}

impl<T: Send + 'static> Group<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`. When no drain is running, spawns one — a task of its own, so the items
    /// it carries are answered even if the caller that started it is dropped — that calls
    /// `flush` with each batch until the queue is empty. `flush` answers the batch's items. If
    /// the drain panics, the items it held are dropped (their callers see their answer
    /// channels close) and the next item starts a new drain.
    pub fn push<F, Fut>(self: &Arc<Self>, item: T, flush: F)
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let lead = {
            let mut s = self.lock();
            s.pending.push(item);
            !std::mem::replace(&mut s.busy, true)
        };
        if lead {
            let group = self.clone();
            tokio::spawn(async move { group.drain(flush).await });
        }
    }

    async fn drain<F, Fut>(&self, flush: F)
    where
        F: Fn(Vec<T>) -> Fut,
        Fut: Future<Output = ()>,
    {
        /// Lets the next item lead again if this task ends by a panic (or is cancelled at
        /// runtime shutdown).
        struct Lead<'a, T>(&'a Group<T>, bool);
        impl<T> Drop for Lead<'_, T> {
            fn drop(&mut self) {
                if !self.1 {
                    let mut s = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
                    s.busy = false;
                    s.pending.clear();
                }
            }
        }
        let mut lead = Lead(self, false);
        loop {
            let batch = {
                let mut s = self.lock();
                if s.pending.is_empty() {
                    s.busy = false;
                    lead.1 = true;
                    return;
                }
                let n = s.pending.len().min(self.max);
                s.pending.drain(..n).collect::<Vec<_>>()
            };
            flush(batch).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_queued_during_a_flush_go_together_in_the_next() {
        let group = Arc::new(Group::new(10));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let flush = {
            let batches = batches.clone();
            move |batch: Vec<u32>| {
                let (batches, tx) = (batches.clone(), tx.clone());
                async move {
                    tokio::task::yield_now().await;
                    for i in &batch {
                        let _ = tx.send(*i);
                    }
                    batches.lock().unwrap().push(batch);
                }
            }
        };
        for i in 0..25 {
            group.push(i, flush.clone());
        }
        let mut got = Vec::new();
        while got.len() < 25 {
            got.push(rx.recv().await.unwrap());
        }
        assert_eq!(got, (0..25).collect::<Vec<_>>());
        let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5], "batches of at most max, in order");
    }
}
