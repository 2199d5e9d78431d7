//! The `blocks!` macro: from the list in `blocks.rs` it generates everything in the server
//! that is per block — the `Config` struct (the kernel's keys plus one section per block),
//! its docs and validation, the listeners the auth rule checks, the migrations, the start
//! sequence, the `Services` of a running node, and the `mortar <block>` / `mortar bench
//! <block>` subcommands. Nothing else in the server names a block.

/// See the module doc; invoked once, in `blocks.rs`.
macro_rules! blocks {
    ($($name:ident: $block:ty),* $(,)?) => {
        use std::net::SocketAddr;
        use std::path::PathBuf;
        use std::sync::Arc;

        use mortar_core::block::{Block, Ctx, Output, Serving};
        use mortar_core::client::{ClientArgs, ClientError};
        use mortar_core::config::{
            AuthConfig, ConfigError, DatabaseConfig, HttpConfig, KeyDoc, LogConfig,
        };
        use mortar_core::storage::Migrations;

        /// Everything `mortar serve` reads. Every key is optional.
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct Config {
            pub listen: SocketAddr,
            pub data_dir: PathBuf,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub database_url: Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub redis_url: Option<String>,
            pub redis_prefix: String,
            pub database: DatabaseConfig,
            pub http: HttpConfig,
            pub auth: AuthConfig,
            pub log: LogConfig,
            $(pub $name: <$block as Block>::Config,)*
        }

        impl Default for Config {
            fn default() -> Self {
                Self {
                    listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
                    data_dir: PathBuf::from("mortar-data"),
                    database_url: None,
                    redis_url: None,
                    redis_prefix: "mortar:".into(),
                    database: DatabaseConfig::default(),
                    http: HttpConfig::default(),
                    auth: AuthConfig::default(),
                    log: LogConfig::default(),
                    $($name: Default::default(),)*
                }
            }
        }

        impl Config {
            /// Every documented key, in print order.
            pub fn docs() -> Vec<KeyDoc> {
                [
                    crate::config::TOP_DOCS,
                    DatabaseConfig::DOCS,
                    HttpConfig::DOCS,
                    AuthConfig::DOCS,
                    LogConfig::DOCS,
                    $(<$block as Block>::DOCS,)*
                ]
                .concat()
            }

            pub(crate) fn validate_blocks(&self) -> Result<(), ConfigError> {
                $(<$block as Block>::validate(&self.$name)?;)*
                Ok(())
            }

            pub(crate) fn block_listeners(&self) -> Vec<(&'static str, SocketAddr)> {
                let mut out = Vec::new();
                $(out.extend(<$block as Block>::listeners(&self.$name));)*
                out
            }
        }

        /// Every block's migrations, in start order.
        pub fn migrations() -> Vec<Migrations> {
            [$(<$block as Block>::migrations()),*].into_iter().flatten().collect()
        }

        /// The services of a running node's blocks.
        pub struct Services {
            $(pub $name: Arc<<$block as Block>::Service>,)*
        }

        impl std::fmt::Debug for Services {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_list().entries([$(<$block as Block>::NAME),*]).finish()
            }
        }

        /// Starts every block, in order; each can use the services of those before it.
        pub async fn start(
            ctx: &mut Ctx<'_>,
            config: &Config,
        ) -> anyhow::Result<(Services, Vec<Serving>)> {
            let mut serving = Vec::new();
            $(
                let running = <$block as Block>::start(ctx, &config.$name)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {e}", <$block as Block>::NAME))?;
                ctx.provide(<$block as Block>::NAME, running.service.clone());
                serving.push(running.serving);
                let $name = running.service;
            )*
            Ok((Services { $($name,)* }, serving))
        }

        /// `mortar <block> …`: every block's client commands.
        #[derive(Debug, clap::Subcommand)]
        #[allow(non_camel_case_types)]
        pub enum BlockCommand {
            $(
                #[command(about = <$block as Block>::ABOUT)]
                $name {
                    #[command(flatten)]
                    client: ClientArgs,
                    #[command(subcommand)]
                    command: <$block as Block>::Command,
                },
            )*
        }

        impl BlockCommand {
            pub async fn run(&self) -> Result<Output, ClientError> {
                match self {
                    $(Self::$name { client, command } => {
                        <$block as Block>::cli(client, command).await
                    })*
                }
            }
        }

        /// `mortar bench <block> …`.
        #[derive(Debug, clap::Subcommand)]
        #[allow(non_camel_case_types)]
        pub enum BenchCommand {
            $($name(<$block as Block>::Bench),)*
        }

        impl BenchCommand {
            pub async fn run(&self, client: &ClientArgs) -> Result<Output, String> {
                match self {
                    $(Self::$name(b) => <$block as Block>::bench(client, b).await,)*
                }
            }

            /// Blocks without a `mortar bench` driver (hidden from its help).
            pub fn without_driver() -> Vec<&'static str> {
                [$((<$block as Block>::NAME, <$block as Block>::BENCH)),*]
                    .into_iter()
                    .filter(|(_, has)| !has)
                    .map(|(name, _)| name)
                    .collect()
            }
        }
    };
}
