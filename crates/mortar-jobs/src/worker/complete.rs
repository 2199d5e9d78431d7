//! Completions in batches (`POST /v1/jobs/complete`), falling back to one request per job
//! for servers without the batch route.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mortar_core::client::ClientError;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::Counters;
use crate::client::{Completion, JobsClient};

/// Most completion requests in flight.
const COMPLETE_IN_FLIGHT: usize = 2;

/// Sends completions in batches until every sender is gone and everything is flushed.
pub(super) async fn complete_loop(
    client: JobsClient,
    mut rx: mpsc::Receiver<Completion>,
    counters: Arc<Counters>,
    max_batch: usize,
) {
    let in_flight = Arc::new(Semaphore::new(COMPLETE_IN_FLIGHT));
    // Servers without `POST /v1/jobs/complete` get one request per job.
    let one_by_one = Arc::new(AtomicBool::new(false));
    let mut sends = JoinSet::new();
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        // A batch that is not full goes out only when no request is in flight: completions
        // that arrive while the server commits one batch make the next, so a steady trickle
        // of jobs costs a few statements per commit rather than one per job. A full batch
        // goes out as soon as a request slot is free.
        let permit = loop {
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            if batch.len() >= max_batch || !open {
                break in_flight.clone().acquire_owned().await.ok();
            }
            if in_flight.available_permits() == COMPLETE_IN_FLIGHT
                && let Ok(p) = in_flight.clone().try_acquire_owned()
            {
                break Some(p);
            }
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => batch.push(c),
                    None => open = false,
                },
                Some(_) = sends.join_next() => {} // a request finished
            }
        };
        let Some(permit) = permit else { break };
        let (client, counters, one_by_one) = (client.clone(), counters.clone(), one_by_one.clone());
        sends.spawn(async move {
            send_completions(&client, batch, &counters, &one_by_one).await;
            drop(permit);
        });
        while sends.try_join_next().is_some() {}
    }
    while sends.join_next().await.is_some() {}
}

async fn send_completions(
    client: &JobsClient,
    batch: Vec<Completion>,
    counters: &Counters,
    one_by_one: &AtomicBool,
) {
    if !one_by_one.load(Ordering::Relaxed) {
        for attempt in 0..5u32 {
            match client.complete_batch(&batch).await {
                Ok(out) => {
                    counters
                        .completed
                        .fetch_add(out.completed, Ordering::Relaxed);
                    for r in &out.rejected {
                        counters.lost.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(job = %r.id, detail = %r.detail, "jobs worker: completion refused");
                    }
                    return;
                }
                Err(ClientError::Problem {
                    status: 404 | 405, ..
                }) => {
                    one_by_one.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e @ ClientError::Problem { .. }) => {
                    tracing::error!(error = %e, jobs = batch.len(), "jobs worker: batch completion refused; the jobs run again when their leases run out");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "jobs worker: batch completion failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
        if !one_by_one.load(Ordering::Relaxed) {
            return;
        }
    }
    for c in batch {
        match client.complete(&c.id, &c.lease_id, c.result.as_ref()).await {
            Ok(_) => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if matches!(e, ClientError::Problem { status: 409, .. }) {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(job = %c.id, error = %e, "jobs worker: completion refused");
            }
        }
    }
}
