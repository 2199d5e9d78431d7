//! Locks and semaphores as a block of the server ([`mortar_core::block::Block`]).

use mortar_core::block::{Block, Ctx, Output, Running, Started};
use mortar_core::client::{ClientArgs, ClientError};
use mortar_core::config::{ConfigError, KeyDoc};

use crate::{LockConfig, LockService, api, bench, cli, service};

/// `[lock]`, `/v1/locks`, `mortar lock`, `mortar bench lock`.
#[derive(Debug)]
pub struct Lock;

impl Block for Lock {
    const NAME: &'static str = "lock";
    const ABOUT: &'static str = "Distributed locks and semaphores: acquire, renew, release, status, list, run, force-release";
    const DOCS: &'static [KeyDoc] = LockConfig::DOCS;
    type Config = LockConfig;
    type Service = LockService;
    type Command = cli::LockCommand;
    type Bench = bench::BenchArgs;

    fn validate(cfg: &LockConfig) -> Result<(), ConfigError> {
        cfg.validate()
    }

    fn migrations() -> Option<mortar_core::storage::Migrations> {
        Some(service::migrations())
    }

    async fn start(ctx: &Ctx<'_>, cfg: &LockConfig) -> Started<LockService> {
        let svc = LockService::start(ctx.storage, cfg, ctx.clock.clone())?;
        // Every route needs the backend that holds the locks.
        let gate = match svc.backend() {
            "redis" => ctx.storage.redis.as_ref().map(|r| r.gate.clone()),
            _ => Some(ctx.storage.durable_gate.clone()),
        };
        let running = Running::new(svc.clone(), api::router(svc));
        Ok(match gate {
            Some(g) => running.needs(g),
            None => running,
        })
    }

    /// Exit code 75 from `lock run` when the lock stayed held and the command never ran.
    async fn cli(args: &ClientArgs, cmd: &cli::LockCommand) -> Result<Output, ClientError> {
        let (out, code) = cli::run(args, cmd).await?;
        Ok(Output::with_code(out, u8::try_from(code).unwrap_or(1)))
    }

    async fn bench(args: &ClientArgs, b: &bench::BenchArgs) -> Result<Output, String> {
        bench::run(args, b).await.map(Output::from)
    }
}
