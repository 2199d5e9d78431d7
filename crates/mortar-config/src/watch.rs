//! One client's watch of an environment: a `snapshot` (or, resuming, the revisions it missed,
//! read from the history — or a `reset` snapshot when they were compacted away), then the live
//! revisions the node's follower publishes. Revisions are delivered once each, in order; a hub
//! reset (the client fell far behind) is repaired from the history, not passed on.

use std::collections::VecDeque;
use std::sync::Arc;

use mortar_core::watch::{Item, Watcher};
use serde_json::Value;

use crate::follow::{self, Changed, WatchGuard, Watched};
use crate::service::{ConfigError, ConfigService, Values, secret};

/// Which keys a watch wants.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub key: Option<String>,
    pub prefix: Option<String>,
}

impl Filter {
    fn wants(&self, key: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k == key)
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| key.starts_with(p.as_str()))
    }

    fn is_all(&self) -> bool {
        self.key.is_none() && self.prefix.is_none()
    }
}

/// One delivered event.
#[derive(Debug, Clone)]
pub(crate) struct Out {
    /// The revision it brings the client to (SSE `id:`).
    pub revision: i64,
    /// `snapshot`, `reset` or `change`.
    pub event: &'static str,
    /// JSON.
    pub data: String,
}

pub(crate) struct Stream {
    svc: Arc<ConfigService>,
    ns: String,
    env: String,
    chain: Vec<String>,
    filter: Filter,
    /// The client may see secret values.
    reveal: bool,
    watcher: Watcher,
    /// The newest revision delivered (or skipped as invisible).
    last: i64,
    pending: VecDeque<Out>,
    /// `try_next` met a hub reset: `next` repairs it from the history.
    repair: bool,
    _guard: WatchGuard,
}

impl Stream {
    /// Opens a watch of `env` from after `from` (`None`: from a snapshot of now).
    pub async fn open(
        svc: &Arc<ConfigService>,
        ns: &str,
        env: &str,
        from: Option<i64>,
        filter: Filter,
        reveal: bool,
    ) -> Result<Self, ConfigError> {
        svc.readable(ns, env).await?;
        // Registered and subscribed before anything is read: whatever commits after the reads
        // below reaches this watcher live.
        let guard = Watched::register(svc, ns, env);
        let watcher = svc.hub().watch(&follow::topic(ns, env), true, None);
        let mut s = Self {
            svc: svc.clone(),
            ns: ns.to_owned(),
            env: env.to_owned(),
            chain: svc.chain(env),
            filter,
            reveal,
            watcher,
            last: 0,
            pending: VecDeque::new(),
            repair: false,
            _guard: guard,
        };
        match from {
            None => s.snapshot("snapshot").await?,
            Some(r) => s.resume(r).await?,
        }
        Ok(s)
    }

    /// Catches up after revision `r` from the history, or resets when it was compacted away (or
    /// is unknown here: a cursor from the future).
    async fn resume(&mut self, r: i64) -> Result<(), ConfigError> {
        let (head, floor) = self.svc.store().head().await.map_err(self.svc.db_error())?;
        if r < floor || r > head {
            return self.snapshot("reset").await;
        }
        self.last = r;
        self.catch_up(head).await.map_err(self.svc.db_error())
    }

    async fn snapshot(&mut self, event: &'static str) -> Result<(), ConfigError> {
        let mut values: Values = self.svc.values(&self.ns, &self.env, self.reveal).await?;
        values.values.retain(|k, _| self.filter.wants(k));
        self.last = values.revision;
        self.pending.push_back(Out {
            revision: values.revision,
            event,
            data: serde_json::to_string(&values).unwrap_or_default(),
        });
        Ok(())
    }

    /// Queues the visible revisions in `(last, upto]` from the history.
    async fn catch_up(&mut self, upto: i64) -> Result<(), sqlx::Error> {
        let batch = 2 * crate::engine::MAX_CHANGES as u32;
        while self.last < upto {
            let rows = self
                .svc
                .store()
                .changes(self.last, Some((&self.ns, &self.chain)), batch)
                .await?;
            let full = rows.len() == batch as usize;
            let end = match rows.last() {
                Some(r) if full => (r.revision - 1).min(upto),
                _ => upto,
            };
            for group in follow::by_revision(&rows).filter(|g| g[0].revision <= end) {
                if let Some(changed) = follow::effect(&self.svc, group, &self.chain).await? {
                    self.queue(changed);
                }
            }
            self.last = end.max(self.last);
            if !full {
                self.last = upto;
            }
        }
        Ok(())
    }

    fn queue(&mut self, mut changed: Changed) {
        changed.changes.retain(|c| self.filter.wants(&c.key));
        for c in changed.changes.iter_mut().filter(|c| c.secret) {
            if let (Some(Value::String(sealed)), Some(env)) = (&c.value, &c.env) {
                let aad = secret::aad(&self.ns, env, &c.key);
                c.value = Some(secret::shown(
                    self.svc.sealer(),
                    sealed,
                    true,
                    self.reveal,
                    &aad,
                ));
            }
        }
        if !changed.changes.is_empty() {
            self.pending.push_back(Out {
                revision: changed.revision,
                event: "change",
                data: serde_json::to_string(&changed).unwrap_or_default(),
            });
        }
    }

    /// A live change as published by the follower, filtered (and its secrets opened or
    /// masked for this client).
    fn take(&mut self, revision: i64, data: &str) {
        if revision <= self.last {
            return;
        }
        self.last = revision;
        if self.filter.is_all() && !data.contains("\"secret\":true") {
            self.pending.push_back(Out {
                revision,
                event: "change",
                data: data.to_owned(),
            });
        } else if let Ok(changed) = serde_json::from_str::<Changed>(data) {
            self.queue(changed);
        }
    }

    /// The next event; `None` when the store failed (the client reconnects and resumes).
    pub async fn next(&mut self) -> Option<Out> {
        loop {
            if let Some(o) = self.pending.pop_front() {
                return Some(o);
            }
            if std::mem::take(&mut self.repair) {
                let r = self.last;
                if let Err(e) = self.resume(r).await {
                    tracing::debug!(error = %e, "config watch: repairing a reset failed");
                    return None;
                }
                continue;
            }
            match self.watcher.next().await {
                Item::Change(c) => self.take(c.revision as i64, &c.data),
                Item::Reset { .. } => self.repair = true,
            }
        }
    }

    /// An event that is ready now, without waiting.
    pub fn try_next(&mut self) -> Option<Out> {
        loop {
            if let Some(o) = self.pending.pop_front() {
                return Some(o);
            }
            match self.watcher.try_next()? {
                Item::Change(c) => self.take(c.revision as i64, &c.data),
                Item::Reset { .. } => {
                    self.repair = true; // repaired by the next `next`
                    return None;
                }
            }
        }
    }

    /// The revision to resume after, once the events handed out so far are delivered:
    /// events still queued here are not covered.
    pub fn revision(&self, delivered: Option<&Out>) -> i64 {
        match (self.pending.front(), delivered) {
            (Some(_), Some(o)) => o.revision,
            _ => self.last,
        }
    }
}
