//! Breakers defined through the API: create, update, delete, and the refresh that brings other
//! nodes' changes in. An update keeps the breaker's state where it can
//! ([`Breaker::reconfigure`](crate::breaker::Breaker::reconfigure)) on every node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use mortar_core::FieldError;

use super::{Entry, ResilienceService, SHARED_NEEDS, Source};
use crate::breaker::{Breaker, BreakerConfig};
use crate::config::POLICY_NAME;
use crate::error::ResilienceError;

/// A local change to apply once the registry's lock is released.
type Change = (Arc<Breaker>, BreakerConfig);

impl ResilienceService {
    /// Creates or updates the API breaker `name`; returns its entry and whether it was created.
    pub async fn put(
        &self,
        name: &str,
        cfg: BreakerConfig,
    ) -> Result<(Arc<Entry>, bool), ResilienceError> {
        let mut errors = Vec::new();
        if let Err(e) = POLICY_NAME.check("name", name) {
            errors.push(e);
        }
        if let Err(e) = cfg.validate() {
            errors.extend(e);
        }
        if cfg.shared && !self.can_share() {
            errors.push(FieldError::new("shared", SHARED_NEEDS));
        }
        if !errors.is_empty() {
            return Err(ResilienceError::Invalid(errors));
        }
        let previous = self.find(name);
        if previous
            .as_ref()
            .is_some_and(|e| e.source == Source::Config)
        {
            return Err(ResilienceError::ConfigBreaker(name.to_owned()));
        }
        let created = match &self.defs {
            Some(defs) => {
                let now = mortar_core::clock::unix_time().as_millis() as u64;
                defs.put(name, &cfg, now).await?
            }
            None => previous.as_ref().is_none_or(|e| e.source != Source::Api),
        };
        let was_shared = previous.as_ref().is_some_and(|e| e.cfg.shared);
        let change = {
            let mut reg = self.write();
            reg.writes += 1;
            redefine(&mut reg.by_name, name, cfg.clone())
        };
        if let Some((b, cfg)) = change {
            b.reconfigure(cfg);
        }
        if was_shared && !cfg.shared {
            self.forget_shared(name).await;
        }
        Ok((self.entry(name)?, created))
    }

    /// Deletes the API breaker `name` on every node. A breaker a block of this node uses stays,
    /// back to default settings.
    pub async fn delete(&self, name: &str) -> Result<(), ResilienceError> {
        let entry = self.entry(name)?;
        match entry.source {
            Source::Config => return Err(ResilienceError::ConfigBreaker(name.to_owned())),
            Source::Default => return Err(ResilienceError::NotDefined(name.to_owned())),
            Source::Api => {}
        }
        if let Some(defs) = &self.defs {
            defs.delete(name).await?;
        }
        let change = {
            let mut reg = self.write();
            reg.writes += 1;
            undefine(&mut reg.by_name, name)
        };
        if let Some((b, cfg)) = change {
            b.reconfigure(cfg);
        }
        if entry.cfg.shared {
            self.forget_shared(name).await;
        }
        Ok(())
    }

    /// Reloads the API definitions from the durable store (other nodes' changes).
    pub async fn refresh(&self) -> Result<(), ResilienceError> {
        let Some(defs) = &self.defs else {
            return Ok(());
        };
        let writes_before_read = self.read().writes;
        let stored: BTreeMap<String, BreakerConfig> = defs.list().await?.into_iter().collect();
        let mut changes = Vec::new();
        {
            let mut reg = self.write();
            // A local write landed after the read: the next refresh catches up.
            if reg.writes != writes_before_read {
                return Ok(());
            }
            for (name, cfg) in &stored {
                let current = reg.by_name.get(name);
                let unchanged = current.is_some_and(|e| {
                    e.source == Source::Config || (e.source == Source::Api && e.cfg == *cfg)
                });
                if !unchanged {
                    changes.extend(redefine(&mut reg.by_name, name, cfg.clone()));
                }
            }
            let gone: Vec<String> = reg
                .by_name
                .iter()
                .filter(|(name, e)| e.source == Source::Api && !stored.contains_key(*name))
                .map(|(name, _)| name.clone())
                .collect();
            for name in gone {
                changes.extend(undefine(&mut reg.by_name, &name));
            }
        }
        for (b, cfg) in changes {
            b.reconfigure(cfg);
        }
        Ok(())
    }

    async fn forget_shared(&self, name: &str) {
        if let Some(shared) = &self.shared
            && let Err(e) = shared.forget(name).await
        {
            tracing::warn!(breaker = %name, error = %e, "resilience: could not delete a shared breaker's state in redis");
        }
    }
}

/// `name` now has the API definition `cfg`: a new breaker, or the same one reconfigured.
fn redefine(
    by_name: &mut BTreeMap<String, Arc<Entry>>,
    name: &str,
    cfg: BreakerConfig,
) -> Option<Change> {
    match by_name.get(name) {
        Some(e) => {
            let change = (e.breaker.clone(), cfg.clone());
            let e = e.redefined(cfg, Source::Api);
            by_name.insert(name.to_owned(), e);
            Some(change)
        }
        None => {
            by_name.insert(name.to_owned(), Entry::new(name, cfg, Source::Api));
            None
        }
    }
}

/// `name` lost its API definition: gone, or back to defaults when a block of this node uses it.
fn undefine(by_name: &mut BTreeMap<String, Arc<Entry>>, name: &str) -> Option<Change> {
    let e = by_name.remove(name)?;
    if !e.used_by_block.load(Ordering::Relaxed) {
        return None;
    }
    let cfg = BreakerConfig::default();
    by_name.insert(name.to_owned(), e.redefined(cfg.clone(), Source::Default));
    Some((e.breaker.clone(), cfg))
}
