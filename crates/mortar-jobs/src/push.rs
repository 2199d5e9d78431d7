//! Push delivery: a queue with a `target_url` has its jobs POSTed there instead of waiting
//! for a worker to lease them.
//!
//! Every node runs one dispatcher. It leases a queue's jobs like any worker (so pause,
//! concurrency and rate limits, leases and fencing all apply), at most [`PUSH_IN_FLIGHT`] per
//! queue per node (a node with no push queue looks for one at a settings change on it, and
//! every second for another node's), and POSTs each as JSON `{id, queue, kind, payload,
//! attempt, max_attempts, tags}` with headers `Mortar-Job-Id`, `Mortar-Attempt` and, when the
//! queue has a secret,
//! `Mortar-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (verify it
//! and reject old `t` to stop replays). The request times out at the attempt's deadline (the
//! job's `timeout_ms` from its lease); meanwhile the dispatcher heartbeats its lease, and a
//! cancellation of the job (or a lost lease) abandons the request.
//!
//! A 2xx completes the job (a JSON response body becomes its result). Anything else is a failed
//! attempt retried with the job's backoff — `Retry-After` (seconds) is honoured — until
//! `max_attempts`, then the job is dead, like a worker's failure. Calls go through the circuit
//! breaker `jobs.push.<queue>` (see `/v1/resilience/breakers`): transport errors and 5xx count as
//! failures; while it is open the queue is not leased, and a job rejected by it is released
//! without counting an attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use mortar_resilience::{Breaker, BreakerError};
use sha2::Sha256;
use tokio::sync::Semaphore;

use crate::service::JobsService;
use crate::store::{Job, QueueRow};

/// Deliveries in flight per queue per node.
pub const PUSH_IN_FLIGHT: usize = 32;

/// How soon a node with no push queue notices one configured on another node.
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, unix_secs: u64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{unix_secs}.{body}").as_bytes());
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

type Breakers = Box<dyn Fn(&str) -> Arc<Breaker> + Send + Sync>;

impl JobsService {
    /// Starts this node's push dispatcher; `breakers` names each target's circuit breaker.
    pub fn attach_push(
        self: &Arc<Self>,
        breakers: impl Fn(&str) -> Arc<Breaker> + Send + Sync + 'static,
    ) {
        tokio::spawn(dispatch(self.clone(), Box::new(breakers)));
    }
}

async fn dispatch(svc: Arc<JobsService>, breakers: Breakers) {
    let http = match reqwest::Client::builder()
        .user_agent(concat!("mortar-jobs/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "jobs: cannot build the push HTTP client; push delivery is off");
            return;
        }
    };
    let worker = format!("push@{}", mortar_core::ids::new_id());
    let mut in_flight: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let poll = Duration::from_millis(svc.config().poll_ms.max(10));
    // A finished delivery frees a slot: look again at once.
    let freed = Arc::new(tokio::sync::Notify::new());
    loop {
        let woken = svc.woken();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let settings = svc.settings_changed();
        tokio::pin!(settings);
        settings.as_mut().enable();
        let slot = freed.notified();
        tokio::pin!(slot);
        slot.as_mut().enable();
        let queues = match svc.push_queues().await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(error = %e, "jobs: push dispatcher cannot read queues");
                Vec::new()
            }
        };
        let pushing = !queues.is_empty();
        for row in queues {
            let breaker = breakers(&format!("jobs.push.{}", row.queue));
            if breaker.state() == mortar_resilience::State::Open {
                continue;
            }
            let slots = in_flight
                .entry(row.queue.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(PUSH_IN_FLIGHT)))
                .clone();
            let free = slots.available_permits();
            if free == 0 {
                continue;
            }
            let jobs = match svc
                .lease(std::slice::from_ref(&row.queue), free as u32, 0, &worker)
                .await
            {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(error = %e, queue = %row.queue, "jobs: push lease failed");
                    continue;
                }
            };
            let row = Arc::new(row);
            for job in jobs {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    break;
                };
                let (svc, http, breaker, row, freed) = (
                    svc.clone(),
                    http.clone(),
                    breaker.clone(),
                    row.clone(),
                    freed.clone(),
                );
                tokio::spawn(async move {
                    deliver(&svc, &http, &breaker, &row, job).await;
                    drop(permit);
                    freed.notify_one();
                });
            }
        }
        // With no push queue, enqueues are none of the dispatcher's business: it looks again
        // at a settings change here or, for another node's, within IDLE_LOOK — instead of
        // reading the settings at every enqueue and every poll_ms (an idle server's database
        // load).
        let nap = if pushing { poll } else { poll.max(IDLE_LOOK) };
        let _ = tokio::time::timeout(nap, async {
            tokio::select! {
                () = &mut woken, if pushing => {}
                () = &mut slot => {}
                () = &mut settings => {}
            }
        })
        .await;
    }
}

async fn deliver(
    svc: &JobsService,
    http: &reqwest::Client,
    breaker: &Breaker,
    row: &QueueRow,
    job: Job,
) {
    let Some(url) = &row.target_url else { return };
    let lease_id = job.lease_id.clone().unwrap_or_default();
    let body = serde_json::json!({
        "id": job.id,
        "queue": job.queue,
        "kind": job.kind,
        "payload": serde_json::from_str::<serde_json::Value>(&job.payload).unwrap_or_default(),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "tags": serde_json::from_str::<serde_json::Value>(&job.tags).unwrap_or_default(),
    })
    .to_string();
    let left = job
        .deadline_ms()
        .map_or(job.timeout_ms as u64, |d| d.saturating_sub(svc.now_ms()));
    let mut request = http
        .post(url)
        .timeout(Duration::from_millis(left.max(1)))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("Mortar-Job-Id", &job.id)
        .header("Mortar-Attempt", job.attempt.to_string());
    if let Some(secret) = &row.secret {
        let t = svc.now_ms() / 1000;
        request = request.header("Mortar-Signature", signature(secret, t, &body));
    }
    let call = breaker.call_classified(
        || async move {
            let r = request.body(body).send().await?;
            let status = r.status();
            let retry_after = r
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
            let text = r.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, retry_after, text))
        },
        |r| match r {
            Ok((status, _, _)) => status.is_server_error(),
            Err(_) => true,
        },
    );
    // Keep the lease alive while the target works (a lease is `jobs.lease_ms`, the request
    // may take up to `timeout_ms`); a refused heartbeat (cancelled, lease lost) abandons it.
    let lease = job
        .lease_until_ms
        .zip(job.started_at_ms)
        .map_or(30_000, |(until, start)| (until - start).max(60) as u64);
    let every = Duration::from_millis(lease / 3);
    tokio::pin!(call);
    let sent = loop {
        tokio::select! {
            sent = &mut call => break sent,
            () = tokio::time::sleep(every) => {
                match svc.heartbeat(&job.id, &lease_id, None).await {
                    Ok(_) => {}
                    Err(e @ crate::error::JobsError::Unavailable(_)) => {
                        tracing::warn!(job = %job.id, error = %e, "jobs: push heartbeat failed");
                    }
                    Err(e) => {
                        tracing::info!(job = %job.id, error = %e, "jobs: push delivery abandoned");
                        return;
                    }
                }
            }
        }
    };
    let outcome = match sent {
        Ok((status, _, text)) if status.is_success() => {
            let result = serde_json::from_str::<serde_json::Value>(&text).ok();
            svc.complete(&job.id, &lease_id, result.as_ref())
                .await
                .map(drop)
        }
        Ok((status, retry_after, text)) => {
            let mut error = format!("{url} answered {status}");
            if !text.is_empty() {
                error.push_str(": ");
                error.extend(text.chars().take(500));
            }
            svc.fail(
                &job.id,
                &lease_id,
                &error,
                true,
                retry_after.map(|s| s * 1000),
            )
            .await
            .map(drop)
        }
        Err(BreakerError::Rejected { .. }) => svc.release(&job.id, &lease_id).await.map(drop),
        Err(BreakerError::Inner(e)) => svc
            .fail(
                &job.id,
                &lease_id,
                &format!("{url}: {}", error_chain(&e)),
                true,
                None,
            )
            .await
            .map(drop),
    };
    if let Err(e) = outcome {
        // The lease ran out meanwhile (another attempt owns the job now) or the store failed.
        tracing::warn!(error = %e, job = %job.id, "jobs: push outcome not recorded");
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_time_dot_body() {
        // Computed independently: python3 hmac.new(b"key", b"1700000000.{}", sha256).
        assert_eq!(
            super::signature("key", 1_700_000_000, "{}"),
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
