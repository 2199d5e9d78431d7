//! The rate limiter as a block of the server ([`mortar_core::block::Block`]).

use mortar_core::block::{Block, Ctx, Output, Running, Started};
use mortar_core::client::{ClientArgs, ClientError};
use mortar_core::config::{ConfigError, KeyDoc};

use crate::{RateLimitConfig, RateLimitService, api, cli, service};

/// `[ratelimit]`, `/v1/ratelimit`, `mortar ratelimit`, `mortar bench ratelimit`.
#[derive(Debug)]
pub struct RateLimit;

impl Block for RateLimit {
    const NAME: &'static str = "ratelimit";
    const ABOUT: &'static str = "Rate limiter: policies, checks, peeks, resets";
    const DOCS: &'static [KeyDoc] = RateLimitConfig::DOCS;
    type Config = RateLimitConfig;
    type Service = RateLimitService;
    type Command = cli::RateLimitCommand;
    type Bench = cli::BenchArgs;

    fn validate(cfg: &RateLimitConfig) -> Result<(), ConfigError> {
        cfg.validate().map(drop)
    }

    fn migrations() -> Option<mortar_core::storage::Migrations> {
        Some(service::migrations())
    }

    async fn start(ctx: &Ctx<'_>, cfg: &RateLimitConfig) -> Started<RateLimitService> {
        let svc = RateLimitService::start(ctx.storage, cfg, ctx.clock.clone()).await?;
        Ok(Running::new(svc.clone(), api::router(svc)))
    }

    /// Exit code 3 when a check was denied.
    async fn cli(args: &ClientArgs, cmd: &cli::RateLimitCommand) -> Result<Output, ClientError> {
        let (out, denied) = cli::run(args, cmd).await?;
        Ok(Output::with_code(out, if denied { 3 } else { 0 }))
    }

    async fn bench(args: &ClientArgs, b: &cli::BenchArgs) -> Result<Output, String> {
        cli::bench(args, b)
            .await
            .map(Output::from)
            .map_err(|e| e.to_string())
    }
}
