//! Circuit breakers and bulkheads as a block of the server ([`mortar_core::block::Block`]).

use mortar_core::block::{Block, Ctx, NoBench, Output, Running, Started};
use mortar_core::client::{ClientArgs, ClientError};
use mortar_core::config::{ConfigError, KeyDoc};

use crate::{ResilienceConfig, ResilienceService, api, cli};

/// `[resilience]`, `/v1/resilience`, `mortar resilience` (no `mortar bench` driver: its
/// overhead is measured by `cargo bench -p mortar-resilience`).
#[derive(Debug)]
pub struct Resilience;

impl Block for Resilience {
    const NAME: &'static str = "resilience";
    const ABOUT: &'static str = "Circuit breakers and bulkheads: create/update/delete, list, show, force open/close, disable, reset";
    const DOCS: &'static [KeyDoc] = ResilienceConfig::DOCS;
    const BENCH: bool = false;
    type Config = ResilienceConfig;
    type Service = ResilienceService;
    type Command = cli::ResilienceCommand;
    type Bench = NoBench;

    fn validate(cfg: &ResilienceConfig) -> Result<(), ConfigError> {
        cfg.validate()
    }

    fn migrations() -> Option<mortar_core::storage::Migrations> {
        Some(crate::store::migrations())
    }

    async fn start(ctx: &Ctx<'_>, cfg: &ResilienceConfig) -> Started<ResilienceService> {
        let svc = ResilienceService::start(ctx.storage, cfg).await?;
        Ok(Running::new(svc.clone(), api::router(svc)))
    }

    async fn cli(args: &ClientArgs, cmd: &cli::ResilienceCommand) -> Result<Output, ClientError> {
        cli::run(args, cmd).await.map(Output::from)
    }

    async fn bench(_args: &ClientArgs, _b: &NoBench) -> Result<Output, String> {
        Err(
            "resilience has no `mortar bench` driver: run `cargo bench -p mortar-resilience`"
                .into(),
        )
    }
}
