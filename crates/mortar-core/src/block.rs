//! The Block contract: what a block crate gives the server, in one place, so that adding a
//! block to `mortar` is its crate plus one line in `mortar-server/src/blocks.rs`.
//!
//! A block implements [`Block`] on a unit type (`mortar_jobs::Jobs`): its name and one-line
//! description, its configuration section (`[jobs]`, with a [`KeyDoc`] per key), its
//! migrations, `start` (services, background tasks, router, readiness needs, extra listeners,
//! shutdown), its CLI subcommand and its `mortar bench` driver. The server's `blocks!` list
//! iterates them: the `Config` sections, `--print-config`, validation, migrations, start order
//! (a block may use the services of blocks listed before it, through [`Ctx::service`]), the
//! routers (with the shared idempotency and fail-fast layers), the listeners, the drain and the
//! CLI all come from it.
//!
//! Every CLI command returns one type, [`Output`]: bytes for stdout and an exit code.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa_axum::router::OpenApiRouter;

use crate::client::{ClientArgs, ClientError};
use crate::clock::Clock;
use crate::config::{ConfigError, KeyDoc};
use crate::http::Listeners;
use crate::idempotency::Route;
use crate::storage::gate::Gate;
use crate::storage::{Migrations, Storage};

/// A boxed future, for the callbacks a block hands the server.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One building block, as the server sees it.
pub trait Block: 'static {
    /// Its name: the config section, the CLI subcommand, the `mortar bench` driver.
    const NAME: &'static str;
    /// One line for `mortar --help`.
    const ABOUT: &'static str;
    /// Every key of its config section, documented (`--print-config`).
    const DOCS: &'static [KeyDoc];
    /// Whether `mortar bench <name>` has a driver.
    const BENCH: bool = true;

    /// Its `[<name>]` section.
    type Config: Serialize
        + DeserializeOwned
        + Default
        + Clone
        + PartialEq
        + std::fmt::Debug
        + Send
        + Sync;
    /// What other blocks (and tests) use once it runs.
    type Service: Send + Sync + 'static;
    /// `mortar <name> …`.
    type Command: clap::Subcommand + std::fmt::Debug;
    /// `mortar bench <name> …`.
    type Bench: clap::Args + std::fmt::Debug;

    /// Rules the config's types cannot express.
    fn validate(_cfg: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Its tables (run at every start, before any block starts).
    fn migrations() -> Option<Migrations> {
        None
    }

    /// Listeners it opens besides the HTTP API, with the key that sets each (the auth rule
    /// applies to them: beyond loopback only with an admin token).
    fn listeners(_cfg: &Self::Config) -> Vec<(&'static str, SocketAddr)> {
        Vec::new()
    }

    /// Starts it: services, background tasks, and what the server needs to serve it.
    fn start(ctx: &Ctx<'_>, cfg: &Self::Config) -> impl Future<Output = Started<Self::Service>>;

    /// Runs `mortar <name> <command>`.
    fn cli(
        args: &ClientArgs,
        cmd: &Self::Command,
    ) -> impl Future<Output = Result<Output, ClientError>>;

    /// Runs `mortar bench <name>`.
    fn bench(args: &ClientArgs, b: &Self::Bench) -> impl Future<Output = Result<Output, String>>;
}

/// What [`Block::start`] returns.
pub type Started<S> = Result<Running<S>, Box<dyn std::error::Error + Send + Sync>>;

/// What a CLI command produces: stdout's bytes and the exit code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub code: u8,
}

impl Output {
    /// `text` with exit code `code`.
    pub fn with_code(text: impl Into<Vec<u8>>, code: u8) -> Self {
        Self {
            stdout: text.into(),
            code,
        }
    }
}

impl From<String> for Output {
    fn from(s: String) -> Self {
        Self::with_code(s, 0)
    }
}

impl From<Vec<u8>> for Output {
    fn from(stdout: Vec<u8>) -> Self {
        Self { stdout, code: 0 }
    }
}

/// `mortar bench <name>` for a block without a driver.
#[derive(Debug, clap::Args)]
pub struct NoBench {}

/// What a block starts with.
pub struct Ctx<'a> {
    pub storage: &'a Storage,
    pub clock: Arc<dyn Clock>,
    /// The admin token (the cache's RESP `AUTH` password).
    pub admin_token: Option<&'a str>,
    /// `redis_url`, for blocks that open connections of their own (pub/sub).
    pub redis_url: Option<&'a str>,
    started: HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        storage: &'a Storage,
        clock: Arc<dyn Clock>,
        admin_token: Option<&'a str>,
        redis_url: Option<&'a str>,
    ) -> Self {
        Self {
            storage,
            clock,
            admin_token,
            redis_url,
            started: HashMap::new(),
        }
    }

    /// The service of a block that started before this one.
    pub fn service<S: Send + Sync + 'static>(&self) -> anyhow::Result<Arc<S>> {
        let (_, any) = self.started.get(&TypeId::of::<S>()).ok_or_else(|| {
            anyhow::anyhow!(
                "a block needs {} before it starts: list the block that provides it earlier in \
                 mortar-server/src/blocks.rs",
                std::any::type_name::<S>()
            )
        })?;
        any.clone()
            .downcast::<S>()
            .map_err(|_| anyhow::anyhow!("{} is registered twice", std::any::type_name::<S>()))
    }

    /// Makes a started block's service available to the blocks after it.
    pub fn provide<S: Send + Sync + 'static>(&mut self, block: &'static str, service: Arc<S>) {
        self.started.insert(TypeId::of::<S>(), (block, service));
    }
}

/// A started block: its service and what the server serves for it.
pub struct Running<S> {
    pub service: Arc<S>,
    pub serving: Serving,
}

/// What the server needs to serve a started block.
pub struct Serving {
    pub router: OpenApiRouter,
    /// The dependency every route needs: while its gate is open the routes answer 503 at once.
    pub needs: Option<Arc<Gate>>,
    /// Creating POSTs that get `Idempotency-Key` handling ([`crate::idempotency`]).
    pub idempotent: &'static [Route],
    /// Listeners besides the HTTP API.
    pub listeners: Vec<Listener>,
    /// Run at shutdown, after the HTTP drain and before storage closes.
    pub stop: Option<Box<dyn FnOnce() -> BoxFuture + Send>>,
}

/// A listener a block opens besides the HTTP API (the cache's RESP port).
pub struct Listener {
    /// The config key that sets it (named in errors), and the flag if there is one.
    pub key: &'static str,
    pub flag: Option<&'static str>,
    pub addr: SocketAddr,
    /// Event loops to bind.
    pub loops: usize,
    /// Serves the bound sockets until the receiver turns true.
    #[allow(clippy::type_complexity)]
    pub serve: Box<dyn FnOnce(Listeners, tokio::sync::watch::Receiver<bool>) -> BoxFuture + Send>,
}

impl<S> Running<S> {
    /// A running block serving `router`, with nothing else.
    pub fn new(service: Arc<S>, router: OpenApiRouter) -> Self {
        Self {
            service,
            serving: Serving {
                router,
                needs: None,
                idempotent: &[],
                listeners: Vec::new(),
                stop: None,
            },
        }
    }

    /// Its routes need `gate`'s dependency: answered 503 at once while it is down.
    #[must_use]
    pub fn needs(mut self, gate: Arc<Gate>) -> Self {
        self.serving.needs = Some(gate);
        self
    }

    /// These creating POSTs take `Idempotency-Key`.
    #[must_use]
    pub fn idempotent(mut self, routes: &'static [Route]) -> Self {
        self.serving.idempotent = routes;
        self
    }

    #[must_use]
    pub fn listener(mut self, l: Listener) -> Self {
        self.serving.listeners.push(l);
        self
    }

    /// Runs `f` at shutdown.
    #[must_use]
    pub fn on_stop<F: Future<Output = ()> + Send + 'static>(
        mut self,
        f: impl FnOnce() -> F + Send + 'static,
    ) -> Self {
        self.serving.stop = Some(Box::new(move || Box::pin(f())));
        self
    }
}

/// The `<flag>`, `MORTAR_<SECTION>__<KEY>` and key of a config key, for error messages.
pub fn key_sources(key: &str, flag: Option<&str>) -> String {
    let env = format!("MORTAR_{}", key.to_ascii_uppercase().replace('.', "__"));
    match flag {
        Some(f) => format!("key `{key}`, flag {f}, env {env}"),
        None => format!("key `{key}`, env {env}"),
    }
}
