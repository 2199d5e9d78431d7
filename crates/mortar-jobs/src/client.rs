//! The Rust client of `/v1/jobs`: enqueue, lease, heartbeat, complete (one or a batch), fail,
//! release, inspect and manage. The worker library (`worker.rs`) and `mortar jobs …` use it.

use std::time::Duration;

pub use mortar_core::client::encode_segment as encode;
use mortar_core::client::{Client, ClientArgs, ClientError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::api::JobRef;

/// A job as the server shows it (`JobView`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub queue: String,
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
    #[serde(default)]
    pub priority: i32,
    pub state: String,
    /// 1 for the first attempt; it keeps counting across retries.
    #[serde(default)]
    pub attempt: i32,
    /// Attempts per budget (a retry starts a fresh one).
    #[serde(default)]
    pub max_attempts: i32,
    /// Attempts made before the last retry.
    #[serde(default)]
    pub attempts_before_retry: i32,
    #[serde(default)]
    pub run_at: String,
    #[serde(default)]
    pub created_at: String,
    /// The most one attempt may run, from when it is leased (milliseconds).
    #[serde(default)]
    pub timeout_ms: u64,
    /// When the current (or last) attempt started.
    #[serde(default)]
    pub started_at: Option<String>,
    /// While running: when this attempt times out.
    #[serde(default)]
    pub deadline_at: Option<String>,
    /// While running: its cancellation was asked for.
    #[serde(default)]
    pub cancel_requested: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// On enqueue: true when an existing job (same unique key) was returned instead.
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default)]
    pub worker: Option<String>,
    #[serde(default)]
    pub lease_id: Option<String>,
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub errors: Vec<AttemptError>,
}

/// One failed attempt.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct AttemptError {
    pub attempt: i32,
    pub error: String,
    pub at: String,
}

impl Job {
    /// How long a lease of this job lasts, as the server gave it: from `started_at` to
    /// `lease_expires_at` (both the server's times), else its `timeout_ms`, else the time left
    /// until `lease_expires_at`.
    pub fn lease_length(&self) -> Option<Duration> {
        let parse = |t: &Option<String>| mortar_core::clock::parse_rfc3339(t.as_deref()?);
        if let (Some(start), Some(until)) = (parse(&self.started_at), parse(&self.lease_expires_at))
            && until > start
        {
            return Some(Duration::from_millis(until - start));
        }
        if self.timeout_ms > 0 {
            return Some(Duration::from_millis(self.timeout_ms));
        }
        self.lease_left()
    }

    /// The most one attempt may run (its `timeout_ms`), when the server says.
    pub fn timeout(&self) -> Option<Duration> {
        (self.timeout_ms > 0).then(|| Duration::from_millis(self.timeout_ms))
    }

    /// The lease's length as of now (time until `lease_expires_at`), when leased.
    pub fn lease_left(&self) -> Option<Duration> {
        let until = mortar_core::clock::parse_rfc3339(self.lease_expires_at.as_deref()?)?;
        Some(Duration::from_millis(until.saturating_sub(now_ms())))
    }
}

/// What a batch completion did.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct CompleteOutcome {
    pub completed: u64,
    #[serde(default)]
    pub rejected: Vec<Rejected>,
}

/// A completion the server refused (the lease is no longer held).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct Rejected {
    pub id: String,
    #[serde(default)]
    pub detail: String,
}

/// One item of a batch completion.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Completion {
    pub id: String,
    pub lease_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// Why the server refused a call on a leased attempt (heartbeat, complete, fail, release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 410 `timed-out`: the attempt ran past its `timeout_ms` and failed as timed out.
    TimedOut,
    /// 410 `cancelled`: the job was cancelled while the attempt ran.
    Cancelled,
    /// 409 (or 404): the lease is not (or no longer) this one's; another attempt may run.
    Lost,
}

impl Refusal {
    /// The refusal a problem from the server is, if it is one.
    pub fn of(e: &ClientError) -> Option<Self> {
        let ClientError::Problem { status, body, .. } = e else {
            return None;
        };
        let kind = body
            .get("type")
            .and_then(Value::as_str)
            .and_then(|t| t.strip_prefix(mortar_core::problem::TYPE_BASE));
        match (status, kind) {
            (410, Some("timed-out")) => Some(Refusal::TimedOut),
            (410, Some("cancelled")) => Some(Refusal::Cancelled),
            (409 | 410 | 404, _) => Some(Refusal::Lost),
            _ => None,
        }
    }
}

/// Which jobs `GET /v1/jobs` lists (empty filters are left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub state: String,
    pub queue: String,
    pub kind: String,
    /// Page size, 1 to 1000.
    pub limit: u32,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A client of the jobs API.
#[derive(Debug, Clone)]
pub struct JobsClient {
    client: Client,
}

impl JobsClient {
    pub fn new(args: &ClientArgs) -> Self {
        Self {
            client: Client::new(args),
        }
    }

    /// A client of the server at `url` without a token.
    pub fn connect(url: &str) -> Self {
        Self::new(&ClientArgs {
            url: url.to_owned(),
            token: None,
            json: false,
        })
    }

    /// The underlying HTTP client (for routes this type has no method for).
    pub fn http(&self) -> &Client {
        &self.client
    }

    /// Enqueues one job: `job` is a `NewJob` body (`queue`, `kind`, `payload`, …).
    pub async fn enqueue(&self, job: &Value) -> Result<Job, ClientError> {
        parse(self.client.post("/v1/jobs", job).await?)
    }

    /// Enqueues one job with an `Idempotency-Key`: a retried request with the same key (and
    /// body) returns the job the first one created, with `duplicate: true` (24 h).
    pub async fn enqueue_with_key(&self, job: &Value, key: &str) -> Result<Job, ClientError> {
        self.client
            .post_as_with("/v1/jobs", job, &[("idempotency-key", key)])
            .await
    }

    /// Enqueues jobs atomically (all or none).
    pub async fn enqueue_batch(&self, jobs: &[Value]) -> Result<Vec<Job>, ClientError> {
        self.post_batch(jobs, &[]).await
    }

    /// Like [`JobsClient::enqueue_batch`], but the server answers only each job's id, state
    /// and duplicate flag (`Prefer: return=minimal`): less to encode, send and parse when the
    /// caller does not need the jobs back.
    pub async fn enqueue_batch_minimal(&self, jobs: &[Value]) -> Result<Vec<JobRef>, ClientError> {
        self.post_batch(jobs, &[("prefer", "return=minimal")]).await
    }

    async fn post_batch<T: serde::de::DeserializeOwned>(
        &self,
        jobs: &[Value],
        headers: &[(&str, &str)],
    ) -> Result<Vec<T>, ClientError> {
        #[derive(serde::Serialize)]
        struct Batch<'a> {
            jobs: &'a [Value],
        }
        let r: Items<T> = self
            .client
            .post_as_with("/v1/jobs/batch", &Batch { jobs }, headers)
            .await?;
        Ok(r.items)
    }

    /// Leases up to `max` jobs of `queues`, waiting up to `wait` for some.
    pub async fn lease(
        &self,
        queues: &[String],
        max: u32,
        wait: Duration,
        worker: &str,
    ) -> Result<Vec<Job>, ClientError> {
        let body = json!({ "queues": queues, "max": max, "wait_ms": wait.as_millis() as u64, "worker": worker });
        let r: Items<Job> = self.client.post_as("/v1/jobs/lease", &body).await?;
        Ok(r.items)
    }

    /// Extends a lease (by the job's `timeout_ms` when `extend` is `None`). 409: lease lost.
    pub async fn heartbeat(
        &self,
        id: &str,
        lease_id: &str,
        extend: Option<Duration>,
    ) -> Result<Job, ClientError> {
        let mut body = json!({ "lease_id": lease_id });
        if let Some(d) = extend {
            body["extend_ms"] = json!(d.as_millis() as u64);
        }
        parse(
            self.client
                .post(&format!("/v1/jobs/{}/heartbeat", encode(id)), &body)
                .await?,
        )
    }

    /// Completes one job. 409 when the lease no longer holds.
    pub async fn complete(
        &self,
        id: &str,
        lease_id: &str,
        result: Option<&Value>,
    ) -> Result<Job, ClientError> {
        let body = json!({ "lease_id": lease_id, "result": result });
        parse(
            self.client
                .post(&format!("/v1/jobs/{}/complete", encode(id)), &body)
                .await?,
        )
    }

    /// Completes many jobs in one request; those whose lease no longer holds are `rejected`.
    pub async fn complete_batch(
        &self,
        items: &[Completion],
    ) -> Result<CompleteOutcome, ClientError> {
        #[derive(serde::Serialize)]
        struct Batch<'a> {
            items: &'a [Completion],
        }
        self.client
            .post_as("/v1/jobs/complete", &Batch { items })
            .await
    }

    /// Reports a failed attempt.
    pub async fn fail(
        &self,
        id: &str,
        lease_id: &str,
        error: &str,
        retryable: bool,
        retry_in: Option<Duration>,
    ) -> Result<Job, ClientError> {
        let body = json!({ "lease_id": lease_id, "error": error, "retryable": retryable,
            "retry_in_ms": retry_in.map(|d| d.as_millis() as u64) });
        parse(
            self.client
                .post(&format!("/v1/jobs/{}/fail", encode(id)), &body)
                .await?,
        )
    }

    /// Gives a leased job back at once; the attempt is not counted.
    pub async fn release(&self, id: &str, lease_id: &str) -> Result<(), ClientError> {
        self.client
            .post(
                &format!("/v1/jobs/{}/release", encode(id)),
                &json!({ "lease_id": lease_id }),
            )
            .await
            .map(drop)
    }

    pub async fn get(&self, id: &str) -> Result<Job, ClientError> {
        parse(self.client.get(&format!("/v1/jobs/{}", encode(id))).await?)
    }

    /// Raw `GET /v1/jobs?…` (`{items, next_cursor}`); empty filters are left out.
    pub async fn list(
        &self,
        state: &str,
        queue: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Value, ClientError> {
        self.list_page(&ListQuery {
            state: state.to_owned(),
            queue: queue.to_owned(),
            kind: String::new(),
            limit,
            cursor: cursor.map(ToOwned::to_owned),
        })
        .await
    }

    /// Raw `GET /v1/jobs?…` (`{items, next_cursor}`) by every filter; empty ones are left out.
    pub async fn list_page(&self, q: &ListQuery) -> Result<Value, ClientError> {
        let mut path = format!("/v1/jobs?limit={}", q.limit);
        for (k, v) in [
            ("state", q.state.as_str()),
            ("queue", q.queue.as_str()),
            ("kind", q.kind.as_str()),
            ("cursor", q.cursor.as_deref().unwrap_or("")),
        ] {
            if !v.is_empty() {
                path.push_str(&format!("&{k}={}", encode(v)));
            }
        }
        self.client.get(&path).await
    }

    pub async fn retry(&self, id: &str) -> Result<Job, ClientError> {
        parse(
            self.client
                .post(&format!("/v1/jobs/{}/retry", encode(id)), &json!({}))
                .await?,
        )
    }

    /// Cancels a job: at once when it waits; when it runs, its worker is asked to stop (the
    /// answer shows it still `running` with `cancel_requested`).
    pub async fn cancel(&self, id: &str) -> Result<Job, ClientError> {
        parse(
            self.client
                .delete(&format!("/v1/jobs/{}", encode(id)))
                .await?,
        )
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| {
        ClientError::Transport(format!("the server's answer has an unexpected shape: {e}"))
    })
}

/// A list answer: `{"items": [...]}`.
#[derive(serde::Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    mortar_core::clock::unix_time().as_millis() as u64
}
