//! Each node follows the history in revision order and publishes, for every environment
//! watched on this node, the revisions that changed its effective values (topic
//! `config:<ns>/<env>`, at the revision). Work per revision is per watched environment, not per
//! watcher: 10 000 watchers of one environment cost one computation.
//!
//! The follower wakes on a local write, on a doorbell from another node (the ephemeral topic
//! [`WRITTEN`] over the hub's cross-node wire), and every `follow_poll_ms` as a safety net. It
//! reads the store, never the doorbell's content, so a lost doorbell only delays.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::engine;
use crate::service::ConfigService;
use crate::store::ChangeRow;

/// The doorbell topic: a node wrote a revision.
pub(crate) const WRITTEN: &str = "config:written";

/// Rows read per round: more than one change set can hold, so a full batch always ends past
/// its first revision.
const BATCH: u32 = 2 * engine::MAX_CHANGES as u32;

/// The topic of an environment's effective changes.
pub(crate) fn topic(ns: &str, env: &str) -> String {
    format!("config:{ns}/{env}")
}

/// One revision's effect on a watched environment (the `data:` of a `change` event).
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct Changed {
    pub revision: i64,
    /// The environment written to (the watched one, or one it falls back to).
    pub written_env: String,
    pub principal: String,
    pub message: String,
    /// RFC 3339.
    pub at: String,
    /// Each key whose effective value changed: its new value and where it comes from, or
    /// `null`s when no environment of the chain has it any more.
    pub changes: Vec<KeyChanged>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct KeyChanged {
    pub key: String,
    /// `"***"` for a secret, unless the watcher has the `config:secrets` scope.
    #[schema(value_type = Option<serde_json::Value>)]
    pub value: Option<Value>,
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

/// Environments watched on this node: (namespace, environment) → watchers.
#[derive(Debug, Default)]
pub(crate) struct Watched(Mutex<HashMap<(String, String), usize>>);

/// A watcher's registration; dropping it unregisters.
pub(crate) struct WatchGuard {
    svc: Arc<ConfigService>,
    key: (String, String),
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        metrics::gauge!("mortar_config_watchers").decrement(1.0);
        let mut w = self
            .svc
            .watched
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = w.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.key);
            }
        }
    }
}

impl Watched {
    pub fn register(svc: &Arc<ConfigService>, ns: &str, env: &str) -> WatchGuard {
        let key = (ns.to_owned(), env.to_owned());
        *svc.watched
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default() += 1;
        WatchGuard {
            svc: svc.clone(),
            key,
        }
    }

    /// The watched environments of `ns`.
    fn envs(&self, ns: &str) -> Vec<String> {
        let w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        w.keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// What revision `rows` (all of one revision, one namespace, one environment) did to the
/// effective values of `env` (whose chain is `chain`): `None` when nothing visible changed.
pub(crate) async fn effect(
    svc: &ConfigService,
    rows: &[ChangeRow],
    chain: &[String],
) -> Result<Option<Changed>, sqlx::Error> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let Some(at) = chain.iter().position(|e| *e == first.env) else {
        return Ok(None);
    };
    let mut changes = Vec::new();
    for r in rows {
        let by_env = if at == 0 && r.value.is_some() {
            HashMap::from([(
                r.env.clone(),
                (r.value.clone().unwrap_or_default(), r.secret),
            )])
        } else {
            svc.store().key_at(&r.ns, chain, &r.key, r.revision).await?
        };
        let now = engine::effective_one(&by_env, chain);
        let visible = match &now {
            Some(e) => chain
                .iter()
                .position(|c| *c == e.env)
                .is_some_and(|p| p >= at),
            None => true,
        };
        if visible {
            // A secret travels sealed; each watcher's stream opens or masks it.
            let secret = now.as_ref().is_some_and(|e| e.value.1);
            changes.push(KeyChanged {
                key: r.key.clone(),
                value: now.as_ref().map(|e| {
                    if secret {
                        Value::String(e.value.0.clone())
                    } else {
                        serde_json::from_str(&e.value.0).unwrap_or(Value::Null)
                    }
                }),
                env: now.map(|e| e.env),
                secret,
            });
        }
    }
    if changes.is_empty() {
        return Ok(None);
    }
    metrics::histogram!("mortar_config_watch_lag_seconds")
        .record(svc.now_ms().saturating_sub(first.at_ms) as f64 / 1000.0);
    Ok(Some(Changed {
        revision: first.revision,
        written_env: first.env.clone(),
        principal: first.principal.clone(),
        message: first.message.clone(),
        at: mortar_core::clock::rfc3339(first.at_ms.max(0) as u64),
        changes,
    }))
}

/// Groups history rows (in revision order) by revision, namespace and environment.
pub(crate) fn by_revision(rows: &[ChangeRow]) -> impl Iterator<Item = &[ChangeRow]> {
    rows.chunk_by(|a, b| a.revision == b.revision && a.ns == b.ns && a.env == b.env)
}

/// Runs the node's follower until the node stops.
pub(crate) async fn run(svc: Arc<ConfigService>) {
    let hub = svc.hub().clone();
    let stopping = hub.stopping.clone();
    let mut doorbell = hub.watch(WRITTEN, false, None);
    let mut pos = loop {
        match svc.store().head().await {
            Ok((head, _)) => break head,
            Err(e) => {
                tracing::warn!(error = %e, "config: reading the head revision failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stopping.wait() => return,
                }
            }
        }
    };
    let poll = Duration::from_millis(svc.settings().follow_poll_ms);
    loop {
        match round(&svc, pos).await {
            Ok((next, more)) => {
                pos = next;
                if more {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "config: following the history failed; retrying"),
        }
        tokio::select! {
            () = svc.written.notified() => {}
            _ = doorbell.next() => {}
            () = tokio::time::sleep(poll) => {}
            () = stopping.wait() => return,
        }
    }
}

/// Publishes the revisions after `pos` (one batch); the new position, and whether there is more.
async fn round(svc: &ConfigService, pos: i64) -> Result<(i64, bool), sqlx::Error> {
    let rows = svc.store().changes(pos, None, BATCH).await?;
    let Some(last) = rows.last() else {
        return Ok((pos, false));
    };
    let more = rows.len() == BATCH as usize;
    // A batch may end inside a revision: leave that revision for the next round.
    let upto = if more {
        last.revision - 1
    } else {
        last.revision
    };
    let mut watched: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for group in by_revision(&rows).filter(|g| g[0].revision <= upto) {
        let ns = group[0].ns.as_str();
        let envs = watched.entry(ns).or_insert_with(|| svc.watched.envs(ns));
        for env in envs.iter() {
            let chain = svc.chain(env);
            if let Some(changed) = effect(svc, group, &chain).await? {
                let data = serde_json::to_string(&changed).unwrap_or_default();
                svc.hub()
                    .publish_at(&topic(ns, env), changed.revision as u64, "change", "", data);
            }
        }
    }
    Ok((upto.max(pos), more && upto > pos))
}

/// Rings the other nodes' doorbells after a local write.
pub(crate) fn ring(svc: &ConfigService, revision: i64) {
    svc.hub().publish(WRITTEN, "written", "", &revision);
}
