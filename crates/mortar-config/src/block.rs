//! Configuration as a block of the server ([`mortar_core::block::Block`]).

use mortar_core::block::{Block, Ctx, Output, Running, Started};
use mortar_core::client::{ClientArgs, ClientError};
use mortar_core::config::{ConfigError, KeyDoc};

use crate::{ConfigService, Settings, api, bench, cli, service};

/// `[config]`, `/v1/config`, `mortar config`, `mortar bench config`.
#[derive(Debug)]
pub struct Config;

impl Block for Config {
    const NAME: &'static str = "config";
    const ABOUT: &'static str =
        "Configuration: get, set, delete, list, history, rollback, watch, schema";
    const DOCS: &'static [KeyDoc] = Settings::DOCS;
    type Config = Settings;
    type Service = ConfigService;
    type Command = cli::ConfigCommand;
    type Bench = bench::BenchArgs;

    fn validate(cfg: &Settings) -> Result<(), ConfigError> {
        cfg.validate()
    }

    fn migrations() -> Option<mortar_core::storage::Migrations> {
        Some(service::migrations())
    }

    async fn start(ctx: &Ctx<'_>, cfg: &Settings) -> Started<ConfigService> {
        let svc = ConfigService::new(ctx.storage, cfg, ctx.clock.clone());
        svc.spawn();
        Ok(Running::new(svc.clone(), api::router(svc))
            .needs(ctx.storage.durable_gate.clone())
            .idempotent(api::IDEMPOTENT))
    }

    async fn cli(args: &ClientArgs, cmd: &cli::ConfigCommand) -> Result<Output, ClientError> {
        cli::run(args, cmd).await
    }

    async fn bench(args: &ClientArgs, b: &bench::BenchArgs) -> Result<Output, String> {
        bench::run(args, b).await.map(Output::from)
    }
}
