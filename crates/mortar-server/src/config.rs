//! The full configuration: top-level keys plus one section per block, all documented.

use std::net::SocketAddr;
use std::path::PathBuf;

use mortar_core::config::{ConfigError, KeyDoc, LogFormat};
use mortar_core::storage::StorageConfig;
use serde::Serialize;

/// The full configuration: the kernel's keys plus one section per block (generated from the
/// list in `blocks.rs`).
pub use crate::blocks::Config;

pub(crate) const TOP_DOCS: &[KeyDoc] = &[
    KeyDoc::new(
        "listen",
        "address the HTTP API listens on (env MORTAR_LISTEN, flag --listen)",
    ),
    KeyDoc::new(
        "data_dir",
        "embedded mode's state directory, created on first start (SQLite in WAL mode)",
    ),
    KeyDoc::secret(
        "database_url",
        "postgres://… switches to cluster mode (shared durable state); sqlite://… picks a file.\n\
         Unset: SQLite in data_dir",
    ),
    KeyDoc::secret("redis_url", "redis://… for shared hot state (cluster mode)"),
    KeyDoc::new(
        "redis_prefix",
        "prefix of every Redis key this deployment owns",
    ),
];

impl Config {
    /// Checks rules the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate()?;
        self.database.validate()?;
        self.auth.validate()?;
        self.validate_blocks()?;
        if self.redis_prefix.is_empty() || self.redis_prefix.len() > 64 {
            return Err(ConfigError(
                "key `redis_prefix`: must be 1 to 64 characters".into(),
            ));
        }
        Ok(())
    }

    /// Every listener this configuration opens, with the key that sets it. The auth rule
    /// (beyond loopback only with an admin token or `--insecure`) applies to each of them.
    pub fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = vec![("listen", self.listen)];
        out.extend(self.block_listeners());
        out
    }

    /// The first listener that would accept clients beyond loopback with no admin token to
    /// check them, and the key that sets it; `None` when every listener is safe.
    pub fn unprotected_public_listener(&self) -> Option<(&'static str, SocketAddr)> {
        if self.auth.admin_token.is_some() {
            return None;
        }
        self.listeners()
            .into_iter()
            .find(|(_, addr)| !addr.ip().is_loopback())
    }

    pub fn storage(&self) -> StorageConfig {
        StorageConfig {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            database_schema: self.database.schema.clone(),
            redis_url: self.redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
        }
    }
}

/// Flags of `mortar serve` that override configuration (absent flags leave it alone).
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheOverride>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogOverride>,
}

/// `--resp-listen`.
#[derive(Debug, Serialize)]
pub struct CacheOverride {
    pub resp_listen: String,
}

#[derive(Debug, Serialize)]
pub struct LogOverride {
    pub format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use mortar_cache::CacheConfig;
    use mortar_core::config::{AuthConfig, Sources, leaf_keys, load, render_documented};

    fn full() -> Config {
        Config {
            database_url: Some("postgres://u:pw@h/db".into()),
            redis_url: Some("redis://h".into()),
            auth: AuthConfig {
                admin_token: Some("0123456789abcdef".into()),
            },
            ..Config::default()
        }
    }

    #[test]
    fn every_listener_beyond_loopback_needs_a_token() {
        let mut cfg = Config::default();
        assert_eq!(cfg.unprotected_public_listener(), None);
        cfg.cache.resp_listen = "0.0.0.0:6380".into();
        assert_eq!(
            cfg.unprotected_public_listener(),
            Some(("cache.resp_listen", "0.0.0.0:6380".parse().unwrap()))
        );
        cfg.listen = "[::]:8700".parse().unwrap();
        assert_eq!(cfg.unprotected_public_listener().unwrap().0, "listen");
        cfg.auth.admin_token = Some("0123456789abcdef".into());
        assert_eq!(cfg.unprotected_public_listener(), None);
        let off = Config {
            cache: CacheConfig {
                resp_listen: "off".into(),
                ..CacheConfig::default()
            },
            ..Config::default()
        };
        assert_eq!(off.listeners().len(), 1);
    }

    #[test]
    fn every_key_is_documented_and_every_doc_is_a_key() {
        let mut cfg = full();
        cfg.ratelimit.policies.insert(
            "api".into(),
            toml::from_str("algorithm = \"token_bucket\"\nlimit = 5\nwindow_ms = 1000\nburst = 2")
                .unwrap(),
        );
        cfg.resilience
            .breakers
            .insert("db".into(), mortar_resilience::BreakerConfig::default());
        cfg.resilience
            .bulkheads
            .insert("db".into(), mortar_resilience::BulkheadConfig::default());
        cfg.resilience
            .retries
            .insert("db".into(), mortar_resilience::RetryConfig::default());
        cfg.cache.namespaces.insert(
            "users".into(),
            toml::from_str("origin_url = \"http://origin\"\nttl_ms = 1000\nwrite = \"through\"\ntimeout_ms = 100").unwrap(),
        );
        cfg.config
            .environments
            .insert("prod".into(), vec!["staging".into()]);
        cfg.config.secret_key = Some("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into());
        cfg.database.schema = Some("mortar".into());
        let keys = leaf_keys(&cfg);
        let docs = Config::docs();
        // A doc covers its key and, for tables of named entries, everything under it.
        let covers = |doc: &str, key: &str| key == doc || key.starts_with(&format!("{doc}."));
        for key in &keys {
            assert!(
                docs.iter().any(|d| covers(d.key, key)),
                "`{key}` is not documented"
            );
        }
        for doc in &docs {
            assert!(
                keys.iter().any(|k| covers(doc.key, k)),
                "documented `{}` is not a key",
                doc.key
            );
        }
    }

    #[test]
    fn print_config_redacts_secrets_and_shows_unset_keys() {
        let out = render_documented(&full(), &Config::docs());
        assert!(out.contains("admin_token = \"<redacted>\""), "{out}");
        assert!(!out.contains("0123456789abcdef"));
        assert!(!out.contains("pw@"));
        let out = render_documented(&Config::default(), &Config::docs());
        assert!(out.contains("# database_url = (unset)"));
        assert!(out.contains("listen = \"127.0.0.1:8700\""));
        assert!(out.contains("[http]\n"));
        // The rendered file is itself a valid configuration.
        let back: Config = toml::from_str(&out).unwrap();
        assert_eq!(back, Config::default());
    }

    fn load_with(toml_text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mortar.toml"), toml_text).unwrap();
        let sources = Sources {
            file: None,
            dir: Some(dir.path().to_owned()),
        };
        // No environment layer here: the end-to-end tests cover it through the binary.
        let no_env = figment::providers::Env::prefixed("MORTAR_UNIT_TEST_NOTHING_");
        load(&sources, no_env, overrides)
    }

    #[test]
    fn file_then_flags_precedence_and_named_errors() {
        let cfg = load_with(
            "listen = \"127.0.0.1:9000\"\n[http]\nmax_body_bytes = 10\n",
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.http.max_body_bytes, 10);
        let flags = Overrides {
            listen: Some("127.0.0.1:9001".parse().unwrap()),
            ..Overrides::default()
        };
        let cfg = load_with("listen = \"127.0.0.1:9000\"\n", &flags).unwrap();
        assert_eq!(cfg.listen.port(), 9001);

        let err = load_with("lisen = \"127.0.0.1:9000\"\n", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field") && err.contains("lisen"),
            "{err}"
        );
        let err = load_with("[http]\nmax_body_bytes = \"big\"\n", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http.max_body_bytes") && err.contains("invalid type"),
            "{err}"
        );
        let err = load_with("[htp]\nx = 1\n", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("htp"), "{err}");
    }
}
