//! Definitions of the breakers created through the API, in the durable store
//! (`resilience_breakers`: SQLite embedded, PostgreSQL in a cluster) so they survive restarts
//! and every node of a cluster loads the same ones. Breaker *state* is never stored here.

use mortar_core::storage::{Durable, Migrations};
use mortar_core::with_pool;

use crate::breaker::BreakerConfig;
use crate::error::ResilienceError;

/// The block's migrations.
pub fn migrations() -> Migrations {
    Migrations {
        block: "resilience",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

/// The `resilience_breakers` table.
#[derive(Debug, Clone)]
pub struct DefinitionStore {
    durable: Durable,
}

impl DefinitionStore {
    pub fn new(durable: Durable) -> Self {
        Self { durable }
    }

    /// Every stored definition. A row this version cannot read (hand-edited) is skipped with a
    /// warning rather than failing the node.
    pub async fn list(&self) -> Result<Vec<(String, BreakerConfig)>, ResilienceError> {
        let sql = "SELECT name, config FROM resilience_breakers ORDER BY name";
        let rows: Vec<(String, String)> = with_pool!(&self.durable, pool => sqlx::query_as(sql)
            .fetch_all(pool)
            .await
            .map_err(|e| self.failed(&e))?);
        Ok(rows
            .into_iter()
            .filter_map(|(name, json)| {
                match serde_json::from_str::<BreakerConfig>(&json) {
                    Ok(cfg) if cfg.validate().is_ok() => Some((name, cfg)),
                    _ => {
                        tracing::warn!(breaker = %name, "resilience: skipping a stored breaker definition this version cannot read");
                        None
                    }
                }
            })
            .collect())
    }

    /// Creates or replaces a definition; `true` when it was created.
    pub async fn put(
        &self,
        name: &str,
        cfg: &BreakerConfig,
        now_ms: u64,
    ) -> Result<bool, ResilienceError> {
        let json = serde_json::to_string(cfg).unwrap_or_default();
        let now = now_ms as i64;
        let update =
            "UPDATE resilience_breakers SET config = $2, updated_at_ms = $3 WHERE name = $1";
        let insert = "INSERT INTO resilience_breakers (name, config, updated_at_ms) VALUES ($1, $2, $3) \
                      ON CONFLICT (name) DO UPDATE SET config = excluded.config, updated_at_ms = excluded.updated_at_ms";
        let updated = with_pool!(&self.durable, pool => sqlx::query(update)
            .bind(name)
            .bind(&json)
            .bind(now)
            .execute(pool)
            .await
            .map_err(|e| self.failed(&e))?
            .rows_affected());
        if updated > 0 {
            return Ok(false);
        }
        with_pool!(&self.durable, pool => sqlx::query(insert)
            .bind(name)
            .bind(&json)
            .bind(now)
            .execute(pool)
            .await
            .map(drop)
            .map_err(|e| self.failed(&e))?);
        Ok(true)
    }

    /// Deletes a definition; `true` when there was one.
    pub async fn delete(&self, name: &str) -> Result<bool, ResilienceError> {
        let sql = "DELETE FROM resilience_breakers WHERE name = $1";
        let n = with_pool!(&self.durable, pool => sqlx::query(sql)
            .bind(name)
            .execute(pool)
            .await
            .map_err(|e| self.failed(&e))?
            .rows_affected());
        Ok(n > 0)
    }

    fn failed(&self, e: &sqlx::Error) -> ResilienceError {
        ResilienceError::Unavailable(self.durable.failed("resilience", e))
    }
}
