//! `mortar`: `mortar serve` runs the server; every other command is a client of one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mortar_core::client::ClientArgs;
use mortar_core::config::{LogFormat, Sources, env_provider, load, render_documented};
use mortar_lock::cli::LockCommand;
use mortar_ratelimit::cli::RateLimitCommand;
use mortar_resilience::cli::ResilienceCommand;
use mortar_server::cli::{self, KeysCommand};
use mortar_server::config::{CacheOverride, Config, LogOverride, Overrides};

/// mimalloc: the request path allocates small short-lived objects; glibc malloc/free were
/// ~10% of the server's CPU under load (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "mortar",
    version,
    about = "Building blocks for backend systems, in one server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Show a server's mode, backends, version and uptime.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Manage scoped API keys (admin token required).
    Keys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Drive load against a running server and print throughput and latency percentiles.
    Bench {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        block: BenchCommand,
    },
    /// Rate limiter: policies, checks, peeks, resets.
    Ratelimit {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: RateLimitCommand,
    },
    /// The cache over HTTP: get, set, del, stats (any Redis client works on the RESP port too).
    Cache {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: mortar_cache::cli::CacheCommand,
    },
    /// Distributed locks and semaphores: acquire, renew, release, status, list, run.
    Lock {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: LockCommand,
    },
    /// Durable jobs: enqueue, get, list, retry, cancel, dlq, queues, pause, resume, and
    /// `work --exec CMD` (a worker running a shell command per job).
    Jobs {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: mortar_jobs::cli::JobsCommand,
    },
    /// Distributed cron: add, list, show, pause, resume, trigger, backfill, runs, preview, delete.
    Cron {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: mortar_cron::cli::CronCommand,
    },
    /// Circuit breakers and bulkheads: list, show, force open/close, disable, reset.
    Resilience {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ResilienceCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// `POST /v1/ratelimit/check` with a temporary always-allowing policy (or --policy).
    Ratelimit(mortar_ratelimit::cli::BenchArgs),
    /// Acquire + release pairs (or, with --contended, hand-off latency); --target drives a peer.
    Lock(mortar_lock::bench::BenchArgs),
    /// GET/SET load on the cache's RESP port (throughput, latency percentiles).
    Cache(mortar_cache::bench::BenchArgs),
    /// No-op jobs end to end (batch enqueue + a Rust worker), or with --rate enqueue → start latency.
    Jobs(mortar_jobs::bench::BenchArgs),
    /// N schedules firing together: fire lag percentiles and CPU between fires.
    Cron(mortar_cron::bench::BenchArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Configuration file (default: ./mortar.toml when present).
    #[arg(long, env = "MORTAR_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8700).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Embedded mode's state directory (default ./mortar-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// postgres://… for cluster mode.
    #[arg(long)]
    database_url: Option<String>,
    /// redis://… for shared hot state.
    #[arg(long)]
    redis_url: Option<String>,
    /// Address of the cache's Redis-protocol listener, or `off` (default 127.0.0.1:6380).
    #[arg(long)]
    resp_listen: Option<String>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// Allow listening beyond loopback without an admin token.
    #[arg(long)]
    insecure: bool,
    /// Print the effective configuration, every key documented, and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Pretty,
    Json,
}

/// Prints a benchmark's report, or its error (exit 1).
fn report(r: Result<String, impl std::fmt::Display>) -> ExitCode {
    match r {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mortar: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mortar: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Status { client } => print(runtime.block_on(cli::status(&client))),
        Command::Keys { client, command } => print(runtime.block_on(cli::keys(&client, &command))),
        Command::Bench {
            client,
            block: BenchCommand::Ratelimit(b),
        } => print(runtime.block_on(mortar_ratelimit::cli::bench(&client, &b))),
        Command::Bench {
            client,
            block: BenchCommand::Cache(b),
        } => report(runtime.block_on(mortar_cache::bench::run(&b, client.token.as_deref()))),
        Command::Bench {
            client,
            block: BenchCommand::Lock(b),
        } => report(runtime.block_on(mortar_lock::bench::run(&client, &b))),
        Command::Bench {
            client,
            block: BenchCommand::Jobs(b),
        } => report(runtime.block_on(mortar_jobs::bench::run(&client, &b))),
        Command::Jobs { client, command } => {
            print(runtime.block_on(mortar_jobs::cli::run(&client, &command)))
        }
        Command::Bench {
            client,
            block: BenchCommand::Cron(b),
        } => print(runtime.block_on(mortar_cron::bench::run(&client, &b))),
        Command::Cache { client, command } => {
            match runtime.block_on(mortar_cache::cli::run(&client, &command)) {
                Ok(out) => {
                    use std::io::Write as _;
                    let _ = std::io::stdout().write_all(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => print(Err(e)),
            }
        }
        Command::Lock { client, command } => {
            match runtime.block_on(mortar_lock::cli::run(&client, &command)) {
                Ok((out, code)) => {
                    print!("{out}");
                    ExitCode::from(u8::try_from(code).unwrap_or(1))
                }
                Err(e) => print(Err(e)),
            }
        }
        Command::Cron { client, command } => {
            print(runtime.block_on(mortar_cron::cli::run(&client, &command)))
        }
        Command::Resilience { client, command } => {
            print(runtime.block_on(mortar_resilience::cli::run(&client, &command)))
        }
        Command::Ratelimit { client, command } => {
            match runtime.block_on(mortar_ratelimit::cli::run(&client, &command)) {
                Ok((out, denied)) => {
                    print!("{out}");
                    if denied {
                        ExitCode::from(3)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => print(Err(e)),
            }
        }
    }
}

fn print(result: Result<String, mortar_core::client::ClientError>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mortar: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url,
        redis_url: args.redis_url,
        cache: args
            .resp_listen
            .map(|resp_listen| CacheOverride { resp_listen }),
        log: args.log_format.map(|f| LogOverride {
            format: match f {
                LogFormatArg::Pretty => LogFormat::Pretty,
                LogFormatArg::Json => LogFormat::Json,
            },
        }),
    };
    let sources = Sources {
        file: args.config,
        dir: None,
    };
    let config: Config = match load(&sources, env_provider(), &overrides)
        .and_then(|c: Config| c.validate().map(|()| c))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mortar: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", render_documented(&config, &Config::docs()));
        return ExitCode::SUCCESS;
    }
    if let Some((key, addr)) = config.unprotected_public_listener()
        && !args.insecure
    {
        eprintln!(
            "mortar: refusing to listen on {addr} (key `{key}`) without an admin token: set \
             auth.admin_token (MORTAR_AUTH__ADMIN_TOKEN), keep `{key}` on loopback, or pass \
             --insecure"
        );
        return ExitCode::from(2);
    }
    match mortar_server::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "mortar stopped");
            eprintln!("mortar: {e:#}");
            ExitCode::FAILURE
        }
    }
}
