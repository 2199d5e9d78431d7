//! `mortar cache get|set|del|stats`, as a client of the HTTP API.

use std::time::Duration;

use clap::Subcommand;
use mortar_core::client::{
    Client, ClientArgs, ClientError, cell, encode_segment, parse_duration, table,
};

/// Namespace and key name the RESP key `namespace:key`; the namespace `_` names a key as given
/// (`mortar cache get _ greeting` reads the RESP key `greeting`).
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Print a value (raw bytes to stdout).
    Get {
        /// The key's namespace (`_`: none).
        namespace: String,
        key: String,
    },
    /// Store a value.
    Set {
        /// The key's namespace (`_`: none).
        namespace: String,
        key: String,
        /// The value; `-` reads it from stdin (any bytes).
        value: String,
        /// Time to live: 10s, 250ms, 1h, or plain milliseconds (none: no expiry).
        #[arg(long, alias = "ttl-ms", value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Remove a key.
    Del {
        /// The key's namespace (`_`: none).
        namespace: String,
        key: String,
    },
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
            ttl,
        } => {
            let mut url = path(namespace, key);
            if let Some(t) = ttl {
                url.push_str(&format!("?ttl_ms={}", t.as_millis().max(1)));
            }
            let body = if value == "-" {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
                    .map_err(|e| ClientError::Transport(format!("cannot read stdin: {e}")))?;
                bytes
            } else {
                value.clone().into_bytes()
            };
            send(http.put(url).body(body)).await?;
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
