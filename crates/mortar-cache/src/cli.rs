//! `mortar cache get|set|del|stats`, as a client of the HTTP API.

use std::time::Duration;

use clap::Subcommand;
use mortar_core::client::{Client, ClientArgs, ClientError, cell, encode_segment, table};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Print a value (raw bytes to stdout).
    Get { namespace: String, key: String },
    /// Store a value.
    Set {
        namespace: String,
        key: String,
        value: String,
        /// Time to live in milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Remove a key.
    Del { namespace: String, key: String },
    /// Sizes and counters.
    Stats,
}

/// Runs a cache command; returns what to print.
pub async fn run(args: &ClientArgs, cmd: &CacheCommand) -> Result<Vec<u8>, ClientError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let base = args.url.trim_end_matches('/');
    let auth = |r: reqwest::RequestBuilder| match &args.token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let path = |ns: &str, k: &str| {
        format!(
            "{base}/v1/cache/{}/{}",
            encode_segment(ns),
            encode_segment(k)
        )
    };
    let send = async |r: reqwest::RequestBuilder| -> Result<reqwest::Response, ClientError> {
        let r = auth(r).send().await.map_err(|e| {
            ClientError::Transport(format!("cannot reach the mortar server at {base}: {e}"))
        })?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        Err(ClientError::Problem {
            status,
            title: cell(&body["title"]),
            detail: body["detail"]
                .as_str()
                .unwrap_or("request failed")
                .to_owned(),
            body,
        })
    };
    Ok(match cmd {
        CacheCommand::Get { namespace, key } => {
            let r = send(http.get(path(namespace, key))).await?;
            r.bytes()
                .await
                .map_err(|e| ClientError::Transport(e.to_string()))?
                .to_vec()
        }
        CacheCommand::Set {
            namespace,
            key,
            value,
            ttl_ms,
        } => {
            let mut url = path(namespace, key);
            if let Some(t) = ttl_ms {
                url.push_str(&format!("?ttl_ms={t}"));
            }
            send(http.put(url).body(value.clone())).await?;
            b"OK\n".to_vec()
        }
        CacheCommand::Del { namespace, key } => {
            send(http.delete(path(namespace, key))).await?;
            b"OK\n".to_vec()
        }
        CacheCommand::Stats => {
            let v = Client::new(args).get("/v1/cache/stats").await?;
            if args.json {
                format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()).into_bytes()
            } else {
                let fields = [
                    "keys",
                    "keys_with_ttl",
                    "used_memory",
                    "max_memory",
                    "hits",
                    "misses",
                    "evictions",
                    "expirations",
                    "resp_clients",
                    "resp_busy_poll_idle_us",
                ];
                let rows: Vec<Vec<String>> = fields
                    .iter()
                    .map(|f| vec![(*f).to_owned(), cell(&v[*f])])
                    .collect();
                table(&["STAT", "VALUE"], &rows).into_bytes()
            }
        }
    })
}
