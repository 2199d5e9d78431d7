//! Test harness: real `mortar` processes, alone or as a cluster on shared PostgreSQL and Redis.
//!
//! * [`Node`] starts one `mortar serve` process on a free port (`--listen 127.0.0.1:0`; the
//!   bound address is read from its `listening` log line), waits for `/readyz`, and can be
//!   killed with SIGKILL, stopped with SIGTERM and restarted on the same address.
//! * [`Cluster`] starts N nodes against one freshly created PostgreSQL database (dropped
//!   afterwards) and one Redis key prefix, so cluster tests run in parallel.
//! * [`services`] reads `MORTAR_TEST_DATABASE_URL` / `MORTAR_TEST_REDIS_URL`. Unset, tests
//!   print that they skipped; with `CI=true`, an unset or unreachable service fails the test.
//!
//! * [`PrivatePostgres`] and [`PrivateRedis`] are throwaway servers for tests that stop the
//!   database or Redis; [`free_port`] and [`eventually`] are the helpers such tests share.
//! * [`fixture`]: in-process fixtures — a node's storage with migrations applied
//!   ([`fixture::embedded`], [`fixture::storage_at`]) and one request through a router
//!   ([`fixture::oneshot`]).
//!
//! When a test panics, every node's log is printed.

pub mod fixture;
mod node;
mod private_pg;
mod private_redis;
mod services;

pub use node::{Node, NodeConfig, cli, mortar_bin};
pub use private_pg::PrivatePostgres;
pub use private_redis::{PrivateRedis, eventually, free_port};
pub use services::{Services, TestDatabase, redis_url, services};

use anyhow::Result;

/// N nodes sharing one database and one Redis prefix.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub db: TestDatabase,
    pub redis_prefix: String,
}

impl Cluster {
    /// Starts `n` nodes at the same moment (so migrations race, as in production).
    /// `None` when the services are not configured (and `CI` is not set).
    pub async fn start(n: usize) -> Result<Option<Self>> {
        Self::start_with(n, &[]).await
    }

    /// Like [`Cluster::start`], with extra environment for every node.
    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> Result<Option<Self>> {
        let Some(svc) = services("cluster") else {
            return Ok(None);
        };
        let db = svc.create_database().await?;
        let redis_prefix = format!(
            "mortar-test:{}:",
            ulid::Ulid::new().to_string().to_ascii_lowercase()
        );
        let configs: Vec<NodeConfig> = (0..n)
            .map(|i| {
                let mut cfg = NodeConfig::named(&format!("node{i}"))
                    .env("MORTAR_DATABASE_URL", &db.url)
                    .env("MORTAR_REDIS_URL", &svc.redis_url)
                    .env("MORTAR_REDIS_PREFIX", &redis_prefix);
                for (k, v) in env {
                    cfg = cfg.env(k, v);
                }
                cfg
            })
            .collect();
        let started = futures_join(configs.into_iter().map(Node::start)).await;
        let mut nodes = Vec::new();
        let mut first_error = None;
        for r in started {
            match r {
                Ok(node) => nodes.push(node),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        if let Some(e) = first_error {
            for n in &nodes {
                n.print_logs();
            }
            return Err(e);
        }
        Ok(Some(Self {
            nodes,
            db,
            redis_prefix,
        }))
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }
}

async fn futures_join<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("node start task panicked"));
    }
    out
}
