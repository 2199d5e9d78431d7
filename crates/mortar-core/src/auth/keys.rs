//! Scoped API keys: created with a secret shown once, stored as a SHA-256 hash, revocable.
//!
//! A key looks like `mk_<id>_<secret>`; the id locates the row, the hash of the whole token is
//! compared in constant time. Keys are random 160-bit secrets, so a fast hash is enough (no
//! password stretching needed).

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::Clock;
use crate::problem::{FieldError, Problem};
use crate::storage::Durable;
use crate::with_pool;

/// A permission on one block (`*` = every block): `read`, `write` (implies read), or
/// `secrets` (read, with the block's secret values shown: `config:secrets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub block: String,
    pub level: Level,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Read,
    Write,
    Secrets,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Read => "read",
            Level::Write => "write",
            Level::Secrets => "secrets",
        }
    }
}

impl Scope {
    /// Parses `block:read` / `block:write` / `block:secrets` (`block` is `*` or lowercase
    /// letters, digits, `-`, `_`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (block, level) = s
            .split_once(':')
            .ok_or("expected `<block>:read`, `<block>:write` or `<block>:secrets`")?;
        let valid_block = block == "*"
            || (!block.is_empty()
                && block.len() <= 64
                && block.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                }));
        if !valid_block {
            return Err(format!(
                "`{block}` is not a block name (lowercase letters, digits, - and _, or *)"
            ));
        }
        let level = match level {
            "read" => Level::Read,
            "write" => Level::Write,
            "secrets" => Level::Secrets,
            other => {
                return Err(format!(
                    "`{other}` is not a level: use read, write or secrets"
                ));
            }
        };
        Ok(Self {
            block: block.to_owned(),
            level,
        })
    }

    fn covers(&self, block: &str) -> bool {
        self.block == "*" || self.block == block
    }

    pub fn grants(&self, block: &str, write: bool) -> bool {
        self.covers(block) && (self.level == Level::Write || !write)
    }

    /// Whether it shows `block`'s secret values.
    pub fn reveals(&self, block: &str) -> bool {
        self.covers(block) && self.level == Level::Secrets
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.block, self.level.as_str())
    }
}

/// A stored API key (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
}

/// A page of keys, oldest first.
pub type KeyPage = crate::api::Page<ApiKey>;

/// API keys in the durable store (`core_api_keys`).
#[derive(Clone)]
pub struct KeyStore {
    durable: Durable,
    clock: Arc<dyn Clock>,
    /// The durable store's gate: while it is open, calls answer 503 at once.
    gate: Option<Arc<crate::storage::gate::Gate>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").finish_non_exhaustive()
    }
}

type Row = (String, String, String, i64, Option<i64>);

impl KeyStore {
    pub fn new(durable: Durable, clock: Arc<dyn Clock>) -> Self {
        Self {
            durable,
            clock,
            gate: None,
        }
    }

    /// Fails fast while `gate` (the durable store's) is open.
    #[must_use]
    pub fn with_gate(mut self, gate: Arc<crate::storage::gate::Gate>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn check_gate(&self) -> Result<(), Problem> {
        match &self.gate {
            Some(g) => g.check().map_err(Problem::from),
            None => Ok(()),
        }
    }

    /// Creates a key; returns it and its secret token (shown once).
    pub async fn create(&self, name: &str, scopes: &[String]) -> Result<(ApiKey, String), Problem> {
        self.check_gate()?;
        let mut errors = Vec::new();
        if name.trim().is_empty() || name.len() > 200 {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
        if scopes.is_empty() {
            errors.push(FieldError::new(
                "scopes",
                "give at least one scope, e.g. `jobs:write`",
            ));
        }
        let mut parsed = Vec::new();
        for (i, s) in scopes.iter().enumerate() {
            match Scope::parse(s) {
                Ok(scope) => parsed.push(scope),
                Err(e) => errors.push(FieldError::new(format!("scopes[{i}]"), e)),
            }
        }
        if !errors.is_empty() {
            return Err(Problem::validation(errors));
        }
        let id = crate::ids::new_id();
        let mut secret = [0u8; 20];
        getrandom::fill(&mut secret).map_err(|e| {
            tracing::error!(error = %e, "no randomness for an api key");
            Problem::internal()
        })?;
        let token = format!("mk_{id}_{}", hex(&secret));
        let key = ApiKey {
            id: id.clone(),
            name: name.to_owned(),
            scopes: parsed,
            created_at_ms: self.clock.now_ms(),
            revoked_at_ms: None,
        };
        let scopes_text = key
            .scopes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        let sql = "INSERT INTO core_api_keys (id, name, scopes, secret_hash, created_at_ms) VALUES ($1, $2, $3, $4, $5)";
        with_pool!(&self.durable, pool => sqlx::query(sql)
            .bind(&key.id)
            .bind(&key.name)
            .bind(&scopes_text)
            .bind(hash(&token))
            .bind(key.created_at_ms as i64)
            .execute(pool)
            .await
            .map(drop)
            .map_err(db_problem(&self.durable))?);
        Ok((key, token))
    }

    /// Lists keys (revoked ones included), oldest first, `limit` per page after `cursor`.
    pub async fn list(&self, limit: usize, cursor: Option<&str>) -> Result<KeyPage, Problem> {
        self.check_gate()?;
        let sql = "SELECT id, name, scopes, created_at_ms, revoked_at_ms FROM core_api_keys WHERE id > $1 ORDER BY id LIMIT $2";
        let rows: Vec<Row> = with_pool!(&self.durable, pool => sqlx::query_as(sql)
            .bind(cursor.unwrap_or(""))
            .bind((limit + 1) as i64)
            .fetch_all(pool)
            .await
            .map_err(db_problem(&self.durable))?);
        Ok(crate::api::Page::from_overfetch(
            rows.into_iter().map(from_row).collect(),
            limit as u32,
            |k: &ApiKey| k.id.clone(),
        ))
    }

    /// Revokes a key; `Ok(None)` when there is no such key. Revoking twice keeps the first time.
    pub async fn revoke(&self, id: &str) -> Result<Option<ApiKey>, Problem> {
        self.check_gate()?;
        let now = self.clock.now_ms() as i64;
        let sql =
            "UPDATE core_api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2";
        with_pool!(&self.durable, pool => sqlx::query(sql).bind(now).bind(id).execute(pool).await.map(drop).map_err(db_problem(&self.durable))?);
        self.get(id).await
    }

    pub async fn get(&self, id: &str) -> Result<Option<ApiKey>, Problem> {
        self.check_gate()?;
        let sql = "SELECT id, name, scopes, created_at_ms, revoked_at_ms FROM core_api_keys WHERE id = $1";
        let row: Option<Row> = with_pool!(&self.durable, pool => sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_problem(&self.durable))?);
        Ok(row.map(from_row))
    }

    /// The live key a token belongs to, if any.
    pub async fn verify(&self, token: &str) -> Result<Option<ApiKey>, Problem> {
        let Some(id) = token.strip_prefix("mk_").and_then(|t| t.split('_').next()) else {
            return Ok(None);
        };
        if id.len() != 26 {
            return Ok(None);
        }
        self.check_gate()?;
        let sql = "SELECT id, name, scopes, created_at_ms, revoked_at_ms, secret_hash FROM core_api_keys WHERE id = $1";
        let row: Option<(String, String, String, i64, Option<i64>, String)> = with_pool!(&self.durable, pool => sqlx::query_as(sql)
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(db_problem(&self.durable))?);
        let Some((id, name, scopes, created, revoked, stored)) = row else {
            return Ok(None);
        };
        let matches: bool = hash(token).as_bytes().ct_eq(stored.as_bytes()).into();
        if !matches || revoked.is_some() {
            return Ok(None);
        }
        Ok(Some(from_row((id, name, scopes, created, revoked))))
    }
}

fn from_row((id, name, scopes, created, revoked): Row) -> ApiKey {
    ApiKey {
        id,
        name,
        scopes: scopes
            .split_whitespace()
            .filter_map(|s| Scope::parse(s).ok())
            .collect(),
        created_at_ms: created as u64,
        revoked_at_ms: revoked.map(|r| r as u64),
    }
}

fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A database failure is our problem, not the caller's: log it, answer 503 naming the store.
pub fn db_problem(durable: &Durable) -> impl Fn(sqlx::Error) -> Problem + '_ {
    move |e| {
        let dependency = durable.failed("auth", &e);
        Problem::unavailable(
            dependency,
            format!("{dependency} did not answer; retry shortly"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::storage::{Storage, StorageConfig, core_migrations};

    async fn store() -> (KeyStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::connect(&StorageConfig {
            data_dir: dir.path().to_owned(),
            database_url: None,
            database_schema: None,
            redis_url: None,
            redis_prefix: "mortar:".into(),
        })
        .await
        .unwrap();
        storage.migrate(&core_migrations()).await.unwrap();
        (
            KeyStore::new(storage.durable.clone(), Arc::new(ManualClock::at(1000))),
            dir,
        )
    }

    #[test]
    fn scope_parsing() {
        assert_eq!(
            Scope::parse("jobs:write").unwrap().to_string(),
            "jobs:write"
        );
        assert!(Scope::parse("*:read").is_ok());
        assert!(Scope::parse("jobs").is_err());
        assert!(Scope::parse("Jobs:read").is_err());
        assert!(Scope::parse("jobs:admin").is_err());
        assert!(Scope::parse(":read").is_err());
    }

    #[tokio::test]
    async fn create_verify_revoke() {
        let (keys, _dir) = store().await;
        let (key, token) = keys.create("ci", &["jobs:write".into()]).await.unwrap();
        assert!(token.starts_with(&format!("mk_{}_", key.id)));
        assert_eq!(keys.verify(&token).await.unwrap().unwrap().id, key.id);
        let mut forged = token.clone();
        forged.pop();
        forged.push('x');
        assert!(keys.verify(&forged).await.unwrap().is_none());
        assert!(keys.verify("mk_short_x").await.unwrap().is_none());
        assert!(keys.verify("garbage").await.unwrap().is_none());
        let revoked = keys.revoke(&key.id).await.unwrap().unwrap();
        assert_eq!(revoked.revoked_at_ms, Some(1000));
        assert!(keys.verify(&token).await.unwrap().is_none());
        assert!(
            keys.revoke("01aaaaaaaaaaaaaaaaaaaaaaaa")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn create_validates_every_field() {
        let (keys, _dir) = store().await;
        let p = keys
            .create("", &["nope".into(), "jobs:read".into()])
            .await
            .unwrap_err();
        assert_eq!(p.status, 422);
        let fields: Vec<_> = p.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "scopes[0]"]);
    }

    #[tokio::test]
    async fn list_pages_with_cursor() {
        let (keys, _dir) = store().await;
        for i in 0..5 {
            keys.create(&format!("k{i}"), &["*:read".into()])
                .await
                .unwrap();
        }
        let first = keys.list(2, None).await.unwrap();
        assert_eq!(first.items.len(), 2);
        let second = keys.list(2, first.next_cursor.as_deref()).await.unwrap();
        let third = keys.list(2, second.next_cursor.as_deref()).await.unwrap();
        assert_eq!(third.items.len(), 1);
        assert!(third.next_cursor.is_none());
        let names: Vec<_> = [first.items, second.items, third.items]
            .concat()
            .into_iter()
            .map(|k| k.name)
            .collect();
        assert_eq!(names, ["k0", "k1", "k2", "k3", "k4"]);
    }
}
