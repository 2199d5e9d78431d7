//! Cron as a block of the server ([`mortar_core::block::Block`]).

use mortar_core::block::{Block, Ctx, Output, Running, Started};
use mortar_core::client::{ClientArgs, ClientError};
use mortar_core::config::{ConfigError, KeyDoc};

use crate::{CronConfig, CronService, api, bench, cli, service};

/// `[cron]`, `/v1/cron`, `mortar cron`, `mortar bench cron`. Needs the jobs block (fires
/// enqueue jobs).
#[derive(Debug)]
pub struct Cron;

impl Block for Cron {
    const NAME: &'static str = "cron";
    const ABOUT: &'static str = "Distributed cron: add, list, show, pause, resume, trigger, \
                                 backfill, runs, preview, delete";
    const DOCS: &'static [KeyDoc] = CronConfig::DOCS;
    type Config = CronConfig;
    type Service = CronService;
    type Command = cli::CronCommand;
    type Bench = bench::BenchArgs;

    fn validate(cfg: &CronConfig) -> Result<(), ConfigError> {
        cfg.validate()
    }

    fn migrations() -> Option<mortar_core::storage::Migrations> {
        Some(service::migrations())
    }

    async fn start(ctx: &Ctx<'_>, cfg: &CronConfig) -> Started<CronService> {
        let jobs = ctx.service::<mortar_jobs::JobsService>()?;
        let svc = CronService::new(ctx.storage, jobs, cfg, ctx.clock.clone());
        svc.spawn();
        let stopped = svc.clone();
        Ok(Running::new(svc.clone(), api::router(svc))
            .needs(ctx.storage.durable_gate.clone())
            .on_stop(move || async move { stopped.stop() }))
    }

    async fn cli(args: &ClientArgs, cmd: &cli::CronCommand) -> Result<Output, ClientError> {
        cli::run(args, cmd).await.map(Output::from)
    }

    async fn bench(args: &ClientArgs, b: &bench::BenchArgs) -> Result<Output, String> {
        bench::run(args, b)
            .await
            .map(Output::from)
            .map_err(|e| e.to_string())
    }
}
