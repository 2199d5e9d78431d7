//! `mortar ratelimit …`: policies and checks, as a client of the HTTP API.

use clap::Subcommand;
use mortar_core::client::{Client, ClientArgs, ClientError, cell, encode_segment, table};
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum RateLimitCommand {
    /// Manage policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check (and consume from) a key: exit 0 when allowed, 3 when denied.
    Check {
        /// Policy name (comma-separated for several, checked atomically).
        policy: String,
        key: String,
        /// Units to take (default 1).
        #[arg(long, default_value_t = 1)]
        cost: u64,
    },
    /// Show a key's standing without consuming.
    Peek { policy: String, key: String },
    /// Forget a key's usage under a policy.
    Reset { policy: String, key: String },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy.
    Set {
        name: String,
        /// token_bucket, sliding_log, sliding_counter or fixed_window.
        #[arg(long)]
        algorithm: String,
        /// Requests (cost units) allowed per window.
        #[arg(long)]
        limit: i64,
        /// The window: 1s, 500ms, 1m, 24h, or plain milliseconds.
        #[arg(long, alias = "window-ms", value_parser = mortar_core::client::parse_duration)]
        window: std::time::Duration,
        /// Token bucket capacity (default: limit).
        #[arg(long)]
        burst: Option<i64>,
        /// Deny while the backend is unreachable (default: allow).
        #[arg(long)]
        fail_closed: bool,
    },
    /// Show one policy.
    Get { name: String },
    /// Every policy, from the API and from mortar.toml.
    List,
    /// Remove a policy created through the API (mortar.toml's are read-only).
    Delete { name: String },
}

/// `POST /v1/ratelimit/check` with a temporary always-allowing policy (or --policy).
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub concurrency: usize,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// Distinct keys, spread over the workers.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Policy to check (default: a temporary token bucket that always allows, deleted after).
    #[arg(long)]
    pub policy: Option<String>,
}

/// Runs `mortar bench ratelimit`: throughput and latency percentiles of `POST /v1/ratelimit/check`.
pub async fn bench(args: &ClientArgs, b: &BenchArgs) -> Result<String, ClientError> {
    let client = Client::new(args);
    let temporary = b.policy.is_none();
    let policy = b
        .policy
        .clone()
        .unwrap_or_else(|| format!("bench-{}", mortar_core::ids::new_id()));
    if temporary {
        let spec = json!({"algorithm": "token_bucket", "limit": 1_000_000_000, "window_ms": 1000});
        client
            .put(&format!("/v1/ratelimit/policies/{policy}"), &spec)
            .await?;
    } else {
        client
            .get(&format!(
                "/v1/ratelimit/policies/{}",
                encode_segment(&policy)
            ))
            .await?;
    }
    let keys = b.keys.max(1);
    let p = policy.clone();
    let report = mortar_core::client::bench(
        args,
        b.concurrency.max(1),
        std::time::Duration::from_secs(b.duration.max(1)),
        move |http, base, worker, n| {
            let key = (worker as u64 * 7919 + n) % keys;
            http.post(format!("{base}/v1/ratelimit/check"))
                .json(&json!({"policies": [&p], "key": format!("bench:{key}")}))
        },
        |status| status == 200 || status == 429,
    )
    .await;
    if temporary {
        client
            .delete(&format!("/v1/ratelimit/policies/{policy}"))
            .await?;
    }
    let what = format!(
        "ratelimit check ({} connections, {} keys, policy {policy})",
        b.concurrency, keys
    );
    Ok(report.render(&what))
}

/// Runs a ratelimit command; returns its output and whether a check was denied.
pub async fn run(args: &ClientArgs, cmd: &RateLimitCommand) -> Result<(String, bool), ClientError> {
    let client = Client::new(args);
    let enc = |s: &str| encode_segment(s);
    let (v, denied) = match cmd {
        RateLimitCommand::Policy(PolicyCommand::Set {
            name,
            algorithm,
            limit,
            window,
            burst,
            fail_closed,
        }) => {
            let window_ms = window.as_millis();
            let mut body = json!({ "algorithm": algorithm, "limit": limit, "window_ms": window_ms,
                "failure_mode": if *fail_closed { "fail_closed" } else { "fail_open" } });
            if let Some(b) = burst {
                body["burst"] = json!(b);
            }
            (
                client
                    .put(&format!("/v1/ratelimit/policies/{}", enc(name)), &body)
                    .await?,
                false,
            )
        }
        RateLimitCommand::Policy(PolicyCommand::Get { name }) => (
            client
                .get(&format!("/v1/ratelimit/policies/{}", enc(name)))
                .await?,
            false,
        ),
        RateLimitCommand::Policy(PolicyCommand::List) => {
            (client.get("/v1/ratelimit/policies").await?, false)
        }
        RateLimitCommand::Policy(PolicyCommand::Delete { name }) => (
            client
                .delete(&format!("/v1/ratelimit/policies/{}", enc(name)))
                .await?,
            false,
        ),
        RateLimitCommand::Check { policy, key, cost } => {
            let policies: Vec<&str> = policy.split(',').map(str::trim).collect();
            let body = json!({ "policies": policies, "key": key, "cost": cost });
            match client.post("/v1/ratelimit/check", &body).await {
                Ok(v) => (v, false),
                Err(ClientError::Problem {
                    status: 429, body, ..
                }) => (body, true),
                Err(e) => return Err(e),
            }
        }
        RateLimitCommand::Peek { policy, key } => (
            client
                .get(&format!("/v1/ratelimit/{}/{}", enc(policy), enc(key)))
                .await?,
            false,
        ),
        RateLimitCommand::Reset { policy, key } => (
            client
                .delete(&format!("/v1/ratelimit/{}/{}", enc(policy), enc(key)))
                .await?,
            false,
        ),
    };
    if args.json {
        return Ok((
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
            denied,
        ));
    }
    let out = match cmd {
        RateLimitCommand::Policy(PolicyCommand::List) => {
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .map(|a| a.iter().map(policy_row).collect())
                .unwrap_or_default();
            table(
                &[
                    "NAME",
                    "ALGORITHM",
                    "LIMIT",
                    "WINDOW_MS",
                    "BURST",
                    "FAILURE_MODE",
                    "SOURCE",
                ],
                &rows,
            )
        }
        RateLimitCommand::Policy(PolicyCommand::Set { .. } | PolicyCommand::Get { .. }) => table(
            &[
                "NAME",
                "ALGORITHM",
                "LIMIT",
                "WINDOW_MS",
                "BURST",
                "FAILURE_MODE",
                "SOURCE",
            ],
            &[policy_row(&v)],
        ),
        RateLimitCommand::Policy(PolicyCommand::Delete { name }) => {
            format!("deleted policy {name}\n")
        }
        RateLimitCommand::Reset { policy, key } => format!("reset {key} under {policy}\n"),
        RateLimitCommand::Check { .. } | RateLimitCommand::Peek { .. } => format!(
            "{} — policy {}: {} of {} left, resets in {} ms{}\n",
            if v["allowed"] == json!(true) {
                "allowed"
            } else {
                "DENIED"
            },
            cell(&v["policy"]),
            cell(&v["remaining"]),
            cell(&v["limit"]),
            cell(&v["reset_ms"]),
            if v["allowed"] == json!(true) {
                String::new()
            } else {
                format!(", retry in {} ms", cell(&v["retry_after_ms"]))
            }
        ),
    };
    Ok((out, denied))
}

fn policy_row(p: &Value) -> Vec<String> {
    [
        "name",
        "algorithm",
        "limit",
        "window_ms",
        "burst",
        "failure_mode",
        "source",
    ]
    .iter()
    .map(|f| cell(&p[*f]))
    .collect()
}
