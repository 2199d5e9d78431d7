//! `mortar`: `mortar serve` runs the server; every other command is a client of one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use mortar_core::block::Output;
use mortar_core::client::ClientArgs;
use mortar_core::config::{LogFormat, Sources, env_provider, load, render_documented};
use mortar_server::blocks::{BenchCommand, BlockCommand};
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
    #[command(flatten)]
    Block(BlockCommand),
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
fn report(r: Result<Output, String>) -> ExitCode {
    match r {
        Ok(out) => emit(&out),
        Err(e) => {
            eprintln!("mortar: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mortar`'s arguments; `mortar bench` hides the blocks that have no driver.
fn parse() -> Cli {
    let mut command = Cli::command();
    for name in BenchCommand::without_driver() {
        command = command.mut_subcommand("bench", |b| b.mut_subcommand(name, |c| c.hide(true)));
    }
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse();
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
        Command::Status { client } => {
            print(runtime.block_on(cli::status(&client)).map(Output::from))
        }
        Command::Keys { client, command } => print(
            runtime
                .block_on(cli::keys(&client, &command))
                .map(Output::from),
        ),
        Command::Bench { client, block } => report(runtime.block_on(block.run(&client))),
        Command::Block(command) => print(runtime.block_on(command.run())),
    }
}

/// Writes a command's output as it is (a cache value is bytes, not text) and exits with its code.
fn emit(out: &Output) -> ExitCode {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(&out.stdout);
    ExitCode::from(out.code)
}

fn print(result: Result<Output, mortar_core::client::ClientError>) -> ExitCode {
    match result {
        Ok(out) => emit(&out),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every verb and every flag of every command says what it does in `--help`.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let here = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(here.clone());
                }
                for arg in sub.get_arguments() {
                    let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                    if !arg.is_positional() && !builtin && arg.get_help().is_none() {
                        missing.push(format!("{here} --{}", arg.get_id()));
                    }
                }
                walk(sub, &here, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "mortar", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }
}
