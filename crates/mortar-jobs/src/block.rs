//! Jobs as a block of the server ([`mortar_core::block::Block`]).

use mortar_core::block::{Block, Ctx, Output, Running, Started};
use mortar_core::client::{ClientArgs, ClientError};
use mortar_core::config::KeyDoc;

use crate::{IDEMPOTENT, JobsConfig, JobsService, api, bench, cli, service};

/// `[jobs]`, `/v1/jobs`, `mortar jobs`, `mortar bench jobs`. Needs the resilience block (push
/// delivery calls through breakers).
#[derive(Debug)]
pub struct Jobs;

impl Block for Jobs {
    const NAME: &'static str = "jobs";
    const ABOUT: &'static str = "Durable jobs: enqueue, get, list, retry, cancel, dlq, queues, \
                                 pause, resume, and `work --exec CMD` (a worker running a shell \
                                 command per job)";
    const DOCS: &'static [KeyDoc] = JobsConfig::DOCS;
    type Config = JobsConfig;
    type Service = JobsService;
    type Command = cli::JobsCommand;
    type Bench = bench::BenchArgs;

    fn validate(cfg: &JobsConfig) -> Result<(), mortar_core::config::ConfigError> {
        cfg.validate()
    }

    fn migrations() -> Option<mortar_core::storage::Migrations> {
        Some(service::migrations())
    }

    async fn start(ctx: &Ctx<'_>, cfg: &JobsConfig) -> Started<JobsService> {
        let svc = JobsService::start(ctx.storage, cfg, ctx.clock.clone());
        let resilience = ctx.service::<mortar_resilience::ResilienceService>()?;
        svc.attach_push(move |name| resilience.breaker(name));
        Ok(Running::new(svc.clone(), api::router(svc))
            .needs(ctx.storage.durable_gate.clone())
            .idempotent(IDEMPOTENT))
    }

    async fn cli(args: &ClientArgs, cmd: &cli::JobsCommand) -> Result<Output, ClientError> {
        cli::run(args, cmd).await.map(Output::from)
    }

    async fn bench(args: &ClientArgs, b: &bench::BenchArgs) -> Result<Output, String> {
        bench::run(args, b).await.map(Output::from)
    }
}
