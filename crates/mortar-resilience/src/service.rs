//! `ResilienceService`: the registry of named breakers, bulkheads and retry policies of a node.
//! Configured ones exist from start-up; others are created with defaults on first use.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use mortar_core::config::ConfigError;

use crate::breaker::{Breaker, BreakerConfig};
use crate::bulkhead::{Bulkhead, BulkheadConfig};
use crate::config::ResilienceConfig;
use crate::retry::{Retry, RetryConfig};

#[derive(Debug, Default)]
pub struct ResilienceService {
    breakers: RwLock<BTreeMap<String, Arc<Breaker>>>,
    bulkheads: RwLock<BTreeMap<String, Arc<Bulkhead>>>,
    retries: RwLock<BTreeMap<String, Arc<Retry>>>,
}

fn get_or_insert<T>(
    map: &RwLock<BTreeMap<String, Arc<T>>>,
    name: &str,
    make: impl FnOnce() -> Arc<T>,
) -> Arc<T> {
    if let Some(v) = map.read().unwrap_or_else(PoisonError::into_inner).get(name) {
        return v.clone();
    }
    map.write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(name.to_owned())
        .or_insert_with(make)
        .clone()
}

fn all<T>(map: &RwLock<BTreeMap<String, Arc<T>>>) -> Vec<Arc<T>> {
    map.read()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect()
}

impl ResilienceService {
    pub fn new(cfg: &ResilienceConfig) -> Result<Arc<Self>, ConfigError> {
        cfg.validate()?;
        crate::metrics::describe();
        let svc = Self::default();
        for (name, c) in &cfg.breakers {
            svc.breaker_with(name, c.clone());
        }
        for (name, c) in &cfg.bulkheads {
            svc.bulkhead_with(name, c.clone());
        }
        for (name, c) in &cfg.retries {
            svc.retry_with(name, c.clone());
        }
        Ok(Arc::new(svc))
    }

    /// The named breaker (created with default settings if new).
    pub fn breaker(&self, name: &str) -> Arc<Breaker> {
        self.breaker_with(name, BreakerConfig::default())
    }

    /// The named breaker, created with `cfg` if new (an existing one keeps its settings).
    pub fn breaker_with(&self, name: &str, cfg: BreakerConfig) -> Arc<Breaker> {
        get_or_insert(&self.breakers, name, || Breaker::new(name, cfg))
    }

    pub fn find_breaker(&self, name: &str) -> Option<Arc<Breaker>> {
        self.breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub fn breakers(&self) -> Vec<Arc<Breaker>> {
        all(&self.breakers)
    }

    pub fn bulkhead_with(&self, name: &str, cfg: BulkheadConfig) -> Arc<Bulkhead> {
        get_or_insert(&self.bulkheads, name, || Arc::new(Bulkhead::new(name, cfg)))
    }

    pub fn bulkhead(&self, name: &str) -> Arc<Bulkhead> {
        self.bulkhead_with(name, BulkheadConfig::default())
    }

    pub fn bulkheads(&self) -> Vec<Arc<Bulkhead>> {
        all(&self.bulkheads)
    }

    pub fn retry_with(&self, name: &str, cfg: RetryConfig) -> Arc<Retry> {
        get_or_insert(&self.retries, name, || Arc::new(Retry::new(name, cfg)))
    }

    pub fn retry(&self, name: &str) -> Arc<Retry> {
        self.retry_with(name, RetryConfig::default())
    }

    pub fn retries(&self) -> Vec<Arc<Retry>> {
        all(&self.retries)
    }
}
