//! The Rust client: `LockClient::acquire` returns a guard that renews at a third of its TTL,
//! tells you the moment the lease is lost (`lost()`), and releases on drop.

use std::time::Duration;

pub use mortar_core::client::encode_segment as encode;
pub use mortar_core::client::parse_duration;
use mortar_core::client::{Client, ClientArgs, ClientError};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

/// How to acquire.
#[derive(Debug, Clone)]
pub struct AcquireOptions {
    pub ttl: Duration,
    /// How long to wait in line when held (zero: fail at once).
    pub wait: Duration,
    pub permits: u32,
    pub owner: String,
}

impl Default for AcquireOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(10),
            wait: Duration::ZERO,
            permits: 1,
            owner: default_owner(),
        }
    }
}

/// `host:pid`, so holders are recognisable in `mortar lock status`.
pub fn default_owner() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map_or_else(|_| "host".into(), |h| h.trim().to_owned());
    format!("{host}:{}", std::process::id())
}

/// A client of the lock API.
#[derive(Debug, Clone)]
pub struct LockClient {
    client: Client,
}

/// A held lease. Renewed in the background; released when dropped.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    name: String,
    lease_id: String,
    token: u64,
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
    released: bool,
}

impl LockClient {
    pub fn new(args: &ClientArgs) -> Self {
        Self {
            client: Client::new(args),
        }
    }

    /// Acquires `name`; the guard renews every `ttl / 3`.
    pub async fn acquire(
        &self,
        name: &str,
        opts: &AcquireOptions,
    ) -> Result<LockGuard, ClientError> {
        let ttl_ms = opts.ttl.as_millis() as u64;
        let body = json!({ "ttl_ms": ttl_ms, "owner": opts.owner, "wait_ms": opts.wait.as_millis() as u64, "permits": opts.permits });
        let v = self
            .client
            .post(&format!("/v1/locks/{}/acquire", encode(name)), &body)
            .await?;
        let lease_id = v["lease_id"].as_str().unwrap_or_default().to_owned();
        let token = v["fencing_token"].as_u64().unwrap_or_default();
        let (tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew_loop(
            self.client.clone(),
            name.to_owned(),
            lease_id.clone(),
            opts.ttl,
            tx,
        ));
        Ok(LockGuard {
            client: self.client.clone(),
            name: name.to_owned(),
            lease_id,
            token,
            lost,
            renewer,
            released: false,
        })
    }
}

/// Renews at a third of the TTL; signals `lost` as soon as a renewal is refused (410) or the
/// lease's time runs out without a successful renewal (server unreachable).
async fn renew_loop(
    client: Client,
    name: String,
    lease_id: String,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let ttl_ms = ttl.as_millis() as u64;
    let mut expires = Instant::now() + ttl;
    let path = format!("/v1/locks/{}/renew", encode(&name));
    loop {
        let next = Instant::now() + ttl / 3;
        tokio::select! {
            () = tokio::time::sleep_until(next.min(expires)) => {}
            () = lost.closed() => return,
        }
        if Instant::now() >= expires {
            let _ = lost.send(true);
            return;
        }
        let sent = Instant::now();
        match client
            .post(&path, &json!({ "lease_id": lease_id, "ttl_ms": ttl_ms }))
            .await
        {
            Ok(_) => expires = sent + ttl,
            Err(ClientError::Problem { status: 410, .. }) => {
                let _ = lost.send(true);
                return;
            }
            // Other errors: keep trying until the lease runs out.
            Err(e) => tracing::warn!(lock = %name, error = %e, "lock renewal failed; retrying"),
        }
    }
}

impl LockGuard {
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves the moment the lease is lost (never, while it holds).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// A watch on the lost flag, for `select!` loops.
    pub fn watch_lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Releases now (and reports whether the server still knew the lease).
    pub async fn release(mut self) -> Result<(), ClientError> {
        self.released = true;
        self.renewer.abort();
        let path = format!("/v1/locks/{}/release", encode(&self.name));
        self.client
            .post(&path, &json!({ "lease_id": self.lease_id }))
            .await
            .map(|_: Value| ())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewer.abort();
        if self.released || self.is_lost() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (client, name, lease_id) = (
                self.client.clone(),
                self.name.clone(),
                self.lease_id.clone(),
            );
            rt.spawn(async move {
                let path = format!("/v1/locks/{}/release", encode(&name));
                let _ = client.post(&path, &json!({ "lease_id": lease_id })).await;
            });
        }
    }
}
