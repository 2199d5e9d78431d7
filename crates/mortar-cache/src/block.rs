//! The cache as a block of the server ([`mortar_core::block::Block`]): its HTTP routes and
//! its RESP listener.

use mortar_core::block::{Block, Ctx, Listener, Output, Running, Started};
use mortar_core::client::{ClientArgs, ClientError};
use mortar_core::config::{ConfigError, KeyDoc};

use crate::{CacheConfig, CacheService, api, bench, cli};

/// `[cache]`, `/v1/cache`, the RESP port, `mortar cache`, `mortar bench cache`. Needs the
/// resilience block (its origins call through breakers).
#[derive(Debug)]
pub struct Cache;

impl Block for Cache {
    const NAME: &'static str = "cache";
    const ABOUT: &'static str =
        "The cache over HTTP: get, set, del, stats (any Redis client works on the RESP port too)";
    const DOCS: &'static [KeyDoc] = CacheConfig::DOCS;
    type Config = CacheConfig;
    type Service = CacheService;
    type Command = cli::CacheCommand;
    type Bench = bench::BenchArgs;

    fn validate(cfg: &CacheConfig) -> Result<(), ConfigError> {
        cfg.validate()
    }

    fn listeners(cfg: &CacheConfig) -> Vec<(&'static str, std::net::SocketAddr)> {
        match cfg.resp_addr() {
            Ok(Some(addr)) => vec![("cache.resp_listen", addr)],
            _ => Vec::new(),
        }
    }

    async fn start(ctx: &Ctx<'_>, cfg: &CacheConfig) -> Started<CacheService> {
        let password = ctx.admin_token.map(str::to_owned);
        let svc = match (&ctx.storage.redis, ctx.redis_url) {
            (Some(redis), Some(url)) => CacheService::clustered(cfg, password, redis.clone(), url),
            _ => CacheService::new(cfg, password),
        };
        let resilience = ctx.service::<mortar_resilience::ResilienceService>()?;
        svc.attach_origins(|name| resilience.breaker(name));
        let mut running = Running::new(svc.clone(), api::router(svc.clone()));
        if let Some(addr) = cfg.resp_addr()? {
            let (svc, busy_poll) = (svc.clone(), cfg.resp_busy_poll());
            running = running.listener(Listener {
                key: "cache.resp_listen",
                flag: Some("--resp-listen"),
                addr,
                loops: cfg.resp_event_loops(mortar_core::config::cpus()),
                serve: Box::new(move |listeners, stop| {
                    tracing::info!(addr = %listeners.local_addr(), "cache RESP listening");
                    Box::pin(async move {
                        if let Err(e) = crate::server::serve(listeners, svc, busy_poll, stop).await
                        {
                            tracing::error!(error = %e, "cache RESP listener failed");
                        }
                    })
                }),
            });
        }
        let flushed = svc.clone();
        Ok(running.on_stop(move || async move { flushed.flush_origins().await }))
    }

    /// Writes values as they are (bytes, not text).
    async fn cli(args: &ClientArgs, cmd: &cli::CacheCommand) -> Result<Output, ClientError> {
        cli::run(args, cmd).await.map(Output::from)
    }

    async fn bench(args: &ClientArgs, b: &bench::BenchArgs) -> Result<Output, String> {
        bench::run(b, args.token.as_deref()).await.map(Output::from)
    }
}
