//! `ConfigClient`: a local copy of one environment's effective values that follows the watch
//! (long-poll), survives server restarts and reconnects without missing a revision (it resumes
//! after the last revision it applied; the server catches it up from the history or sends a
//! reset snapshot), and answers `get::<T>(key)` from memory.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use mortar_core::client::{Client, ClientArgs, ClientError, encode_segment};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The values an environment had at a revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub revision: i64,
    pub values: BTreeMap<String, Value>,
}

/// A followed copy of `/v1/config/{ns}/{env}`; cloning shares it. Dropping the last clone stops
/// following.
#[derive(Clone)]
pub struct ConfigClient {
    state: Arc<RwLock<Snapshot>>,
    changes: tokio::sync::watch::Receiver<i64>,
    _follower: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for ConfigClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigClient")
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl ConfigClient {
    /// Reads the environment's values (an error when the server cannot be reached or the
    /// environment does not exist), then follows its changes in the background.
    pub async fn connect(args: &ClientArgs, ns: &str, env: &str) -> Result<Self, ClientError> {
        let client = Client::new(args);
        let base = format!(
            "/v1/config/{}/{}/watch",
            encode_segment(ns),
            encode_segment(env)
        );
        let first = client.get(&format!("{base}?wait_ms=0")).await?;
        let mut snapshot = Snapshot::default();
        apply(&mut snapshot, &first);
        let (tx, changes) = tokio::sync::watch::channel(snapshot.revision);
        let state = Arc::new(RwLock::new(snapshot));
        let follower = tokio::spawn(follow(client, base, state.clone(), tx));
        Ok(Self {
            state,
            changes,
            _follower: Arc::new(AbortOnDrop(follower)),
        })
    }

    /// A key's value as `T`: `None` when the key is not set; an error when it does not have
    /// `T`'s shape.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, serde_json::Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.values.get(key).map(|v| T::deserialize(v)).transpose()
    }

    /// The revision the copy reflects.
    pub fn revision(&self) -> i64 {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revision
    }

    /// The whole copy.
    pub fn snapshot(&self) -> Snapshot {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the copy moves past `revision`; returns the new revision.
    pub async fn changed_after(&self, revision: i64) -> i64 {
        let mut rx = self.changes.clone();
        let Ok(r) = rx.wait_for(|r| *r > revision).await else {
            return revision;
        };
        *r
    }
}

/// Applies a long-poll answer (`{items, revision}`) to `s`.
fn apply(s: &mut Snapshot, polled: &Value) {
    for item in polled["items"].as_array().into_iter().flatten() {
        let data = &item["data"];
        match item["event"].as_str() {
            Some("snapshot" | "reset") => {
                s.values = data["values"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, e)| (k.clone(), e["value"].clone()))
                    .collect();
            }
            Some("change") => {
                for c in data["changes"].as_array().into_iter().flatten() {
                    let Some(key) = c["key"].as_str() else {
                        continue;
                    };
                    if c["env"].is_null() {
                        s.values.remove(key);
                    } else {
                        s.values.insert(key.to_owned(), c["value"].clone());
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(r) = polled["revision"].as_i64() {
        s.revision = s.revision.max(r);
    }
}

async fn follow(
    client: Client,
    base: String,
    state: Arc<RwLock<Snapshot>>,
    tx: tokio::sync::watch::Sender<i64>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let after = state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .revision;
        match client
            .get(&format!(
                "{base}?after_revision={after}&wait_ms=30000&limit=1000"
            ))
            .await
        {
            Ok(polled) => {
                backoff = Duration::from_millis(100);
                let revision = {
                    let mut s = state.write().unwrap_or_else(PoisonError::into_inner);
                    apply(&mut s, &polled);
                    s.revision
                };
                tx.send_if_modified(|r| {
                    let moved = *r != revision;
                    *r = revision;
                    moved
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "config client: watch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn snapshots_changes_and_resets_apply_in_order() {
        let mut s = Snapshot::default();
        apply(
            &mut s,
            &json!({"revision": 3, "items": [{"event": "snapshot", "revision": 3,
                "data": {"values": {"a": {"value": 1, "env": "base"}, "b": {"value": 2, "env": "base"}}}}]}),
        );
        assert_eq!((s.revision, s.values.len()), (3, 2));
        apply(
            &mut s,
            &json!({"revision": 5, "items": [{"event": "change", "revision": 5,
                "data": {"changes": [{"key": "a", "value": 10, "env": "prod"}, {"key": "b", "value": null, "env": null}]}}]}),
        );
        assert_eq!(s.values, BTreeMap::from([("a".to_owned(), json!(10))]));
        apply(
            &mut s,
            &json!({"revision": 9, "items": [{"event": "reset", "revision": 9,
                "data": {"values": {"c": {"value": "x", "env": "base"}}}}]}),
        );
        assert_eq!(
            (s.revision, s.values.keys().collect::<Vec<_>>()),
            (9, vec![&"c".to_owned()])
        );
    }
}
