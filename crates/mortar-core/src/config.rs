//! Configuration: `mortar.toml` → `MORTAR_…` environment → flags, each overriding the one before.
//!
//! The composition root (`mortar-server`) owns the full `Config` struct: top-level keys plus one
//! section per block. This module holds the loader, the sections the kernel itself reads
//! (`[http]`, `[auth]`, `[log]`), and the renderer behind `mortar serve --print-config`, which
//! prints every key with its documentation. Unknown keys and wrong types fail at start-up with
//! the key and the reason (every section is `deny_unknown_fields`).

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The config file read from the working directory when present.
pub const DEFAULT_FILE: &str = "mortar.toml";

/// `MORTAR_…` variables read by the CLI client and test tooling, not by the server's config.
const CLIENT_VARS: &[&str] = &["config", "url", "token", "json", "bin"];

/// One documented configuration key, by its dotted path (`http.max_body_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    pub key: &'static str,
    pub doc: &'static str,
    /// Printed as `"<redacted>"` when set.
    pub secret: bool,
}

impl KeyDoc {
    pub const fn new(key: &'static str, doc: &'static str) -> Self {
        Self {
            key,
            doc,
            secret: false,
        }
    }

    pub const fn secret(key: &'static str, doc: &'static str) -> Self {
        Self {
            key,
            doc,
            secret: true,
        }
    }
}

/// A configuration problem, naming the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Where configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE` or `MORTAR_CONFIG`; a named file must exist.
    pub file: Option<PathBuf>,
    /// Directory searched for `mortar.toml` when no file is named (the working directory).
    pub dir: Option<PathBuf>,
}

/// Loads `T` from the file, the environment and `overrides` (flags), in that order.
///
/// `overrides` is any serializable value; fields that serialize as absent (`None` with
/// `skip_serializing_if`) leave the lower layers alone.
pub fn load<T, O>(sources: &Sources, env: Env, overrides: &O) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
    O: Serialize,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    match &sources.file {
        Some(file) => {
            if !file.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(file));
        }
        None => {
            let dir = sources.dir.clone().unwrap_or_else(|| PathBuf::from("."));
            let file = dir.join(DEFAULT_FILE);
            if file.is_file() {
                fig = fig.merge(Toml::file_exact(file));
            }
        }
    }
    fig = fig.merge(env).merge(Serialized::defaults(overrides));
    fig.extract::<T>().map_err(|e| ConfigError(describe(e)))
}

/// The `MORTAR_…` environment provider: `MORTAR_LISTEN` → `listen`,
/// `MORTAR_AUTH__ADMIN_TOKEN` → `auth.admin_token`. Client-side variables are skipped.
pub fn env_provider() -> Env {
    Env::prefixed("MORTAR_")
        .filter(|k| {
            let k = k.as_str().to_ascii_lowercase();
            !CLIENT_VARS.contains(&k.as_str())
                && !k.starts_with("test_")
                && !k.starts_with("bench_")
        })
        .split("__")
}

fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e.metadata.as_ref().map(|m| {
                m.source
                    .as_ref()
                    .map_or_else(|| m.name.to_string(), |s| format!("{} ({s})", m.name))
            });
            let mut msg = String::new();
            if !key.is_empty() {
                msg.push_str(&format!("key `{key}`: "));
            }
            msg.push_str(&e.kind.to_string());
            if let Some(source) = source {
                msg.push_str(&format!(" [from {source}]"));
            }
            msg
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Renders `config` as TOML with each key preceded by its documentation, in `docs` order.
/// Unset optional keys are printed commented out; secrets are redacted.
pub fn render_documented<T: Serialize>(config: &T, docs: &[KeyDoc]) -> String {
    let value = toml::Value::try_from(config).unwrap_or(toml::Value::Table(toml::Table::new()));
    let mut out = String::from(
        "# Mortar effective configuration. Every key is optional.\n\
         # Precedence: mortar.toml < MORTAR_<KEY> / MORTAR_<SECTION>__<KEY> environment < flags.\n",
    );
    let mut section = "";
    for doc in docs {
        let (sec, key) = doc.key.rsplit_once('.').unwrap_or(("", doc.key));
        if sec != section {
            out.push_str(&format!("\n[{sec}]\n"));
            section = sec;
        }
        for line in doc.doc.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        match lookup(&value, doc.key) {
            Some(_) if doc.secret => out.push_str(&format!("{key} = \"<redacted>\"\n")),
            Some(v) => out.push_str(&format!("{key} = {v}\n")),
            None => out.push_str(&format!("# {key} = (unset)\n")),
        }
    }
    out
}

/// Every leaf key of a serialized value, as dotted paths (for the docs-coverage test).
pub fn leaf_keys<T: Serialize>(config: &T) -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = toml::Value::try_from(config) {
        walk("", &v, &mut out);
    }
    out
}

fn lookup<'a>(value: &'a toml::Value, dotted: &str) -> Option<&'a toml::Value> {
    dotted.split('.').try_fold(value, |v, k| v.get(k))
}

/// `[http]`: the listener's limits and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub max_body_bytes: usize,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
    pub shutdown_grace_ms: u64,
    pub threads: usize,
    /// How long an `Idempotency-Key` answers with its first response.
    pub idempotency_ttl_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            shutdown_grace_ms: 30_000,
            threads: 0,
            idempotency_ttl_ms: 86_400_000,
        }
    }
}

impl HttpConfig {
    pub const DOCS: &[KeyDoc] = &[
        KeyDoc::new(
            "http.max_body_bytes",
            "largest request body accepted, in bytes (413 above)",
        ),
        KeyDoc::new(
            "http.header_read_timeout_ms",
            "a client must send a request's headers within this time or the connection is closed",
        ),
        KeyDoc::new(
            "http.idle_timeout_ms",
            "connections with no traffic are closed after this long. An idle HTTP/1.1 keep-alive\n\
             connection waits for its next request's headers, so header_read_timeout_ms also bounds it",
        ),
        KeyDoc::new(
            "http.max_connections",
            "concurrent connections served; further clients wait in the accept backlog",
        ),
        KeyDoc::new(
            "http.shutdown_grace_ms",
            "on SIGINT/SIGTERM, in-flight requests get this long to finish",
        ),
        KeyDoc::new(
            "http.threads",
            "HTTP event-loop threads, each with its own SO_REUSEPORT listener; 0 = one per CPU",
        ),
        KeyDoc::new(
            "http.idempotency_ttl_ms",
            "how long an Idempotency-Key on a creating POST answers with its first response\n\
             (then the key may be used again); 1 s to 30 days",
        ),
    ];

    /// The number of event-loop threads to run.
    pub fn event_loops(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            cpus()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let rules = [
            (
                self.max_body_bytes == 0,
                "http.max_body_bytes",
                "must be at least 1",
            ),
            (
                self.max_connections == 0,
                "http.max_connections",
                "must be at least 1",
            ),
            (
                self.header_read_timeout_ms == 0,
                "http.header_read_timeout_ms",
                "must be at least 1",
            ),
            (
                self.idle_timeout_ms == 0,
                "http.idle_timeout_ms",
                "must be at least 1",
            ),
            (
                !(1_000..=30 * 86_400_000).contains(&self.idempotency_ttl_ms),
                "http.idempotency_ttl_ms",
                "must be 1000 (1 s) to 2592000000 (30 days)",
            ),
        ];
        match rules.iter().find(|r| r.0) {
            Some((_, key, why)) => Err(ConfigError(format!("key `{key}`: {why}"))),
            None => Ok(()),
        }
    }
}

/// `[auth]`: the admin token. API keys live in the database (`mortar keys …`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

impl AuthConfig {
    pub const DOCS: &[KeyDoc] = &[KeyDoc::secret(
        "auth.admin_token",
        "bearer token with every right; when set, every /v1 route requires a token\n\
         (this one or an API key). Unset: /v1 is open, and only a loopback listen is allowed\n\
         unless --insecure",
    )];

    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.admin_token {
            Some(t) if t.len() < 16 => Err(ConfigError(
                "key `auth.admin_token`: must be at least 16 characters".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// `[database]`: the durable store's settings beyond its URL.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL schema holding mortar's tables and migrations table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

impl DatabaseConfig {
    pub const DOCS: &[KeyDoc] = &[KeyDoc::new(
        "database.schema",
        "PostgreSQL schema for mortar's tables, functions and migrations table (created if\n\
         missing), so they never mix with an application's own in a shared database. Unset:\n\
         `mortar`, or `public` for an install that already keeps its tables there. Cluster\n\
         mode only",
    )];

    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.schema {
            Some(s)
                if s.is_empty()
                    || s.len() > 63
                    || s.starts_with(|c: char| c.is_ascii_digit())
                    || !s
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
            {
                Err(ConfigError(format!(
                    "key `database.schema`: {s:?} must be 1 to 63 of a-z, 0-9 and _, not starting \
                     with a digit"
                )))
            }
            _ => Ok(()),
        }
    }
}

/// `[log]`: structured logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

impl LogConfig {
    pub const DOCS: &[KeyDoc] = &[
        KeyDoc::new(
            "log.format",
            "\"pretty\" (human) or \"json\" (one object per line)",
        ),
        KeyDoc::new(
            "log.level",
            "tracing filter, e.g. \"info\" or \"mortar=debug,info\" (RUST_LOG overrides it). At info, every\n\
             request but /healthz, /readyz and /metrics gets an access line; \"info,mortar::access=off\" drops them",
        ),
    ];
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// Returns `path` relative to `base` unless it is absolute.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// The CPUs this process may run on (1 if unknown): the base of the default event-loop counts.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
