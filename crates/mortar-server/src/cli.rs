//! Client commands: `mortar status` and `mortar keys …`. Each is a client of the HTTP API.

use clap::Subcommand;
use mortar_core::client::{Client, ClientArgs, ClientError, cell, table};
use serde_json::{Value, json};

/// `mortar keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a scoped API key; its secret is printed once.
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// A scope such as `jobs:write` or `*:read` (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List API keys.
    List,
    /// Revoke an API key by id.
    Revoke { id: String },
}

/// Runs `mortar status`.
pub async fn status(args: &ClientArgs) -> Result<String, ClientError> {
    let v = Client::new(args).get("/v1/status").await?;
    if args.json {
        return Ok(pretty(&v));
    }
    let mut out = format!(
        "mortar {} — {} mode, up {}\n\n",
        cell(&v["version"]),
        cell(&v["mode"]),
        human_ms(v["uptime_ms"].as_u64().unwrap_or(0))
    );
    let rows: Vec<Vec<String>> = v["backends"]
        .as_array()
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    let state = if b["ok"] == json!(true) {
                        "ok".into()
                    } else {
                        format!("DOWN: {}", cell(&b["error"]))
                    };
                    vec![cell(&b["name"]), cell(&b["location"]), state]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&table(&["BACKEND", "LOCATION", "STATE"], &rows));
    Ok(out)
}

/// Runs `mortar keys …`.
pub async fn keys(args: &ClientArgs, cmd: &KeysCommand) -> Result<String, ClientError> {
    let client = Client::new(args);
    let v = match cmd {
        KeysCommand::Create { name, scopes } => {
            client
                .post("/v1/keys", &json!({ "name": name, "scopes": scopes }))
                .await?
        }
        KeysCommand::List => client.get("/v1/keys?limit=1000").await?,
        KeysCommand::Revoke { id } => client.delete(&format!("/v1/keys/{id}")).await?,
    };
    if args.json {
        return Ok(pretty(&v));
    }
    Ok(match cmd {
        KeysCommand::Create { .. } => format!(
            "created key {} ({})\nsecret (shown once, store it now):\n{}\n",
            cell(&v["id"]),
            cell(&v["scopes"]),
            cell(&v["secret"])
        ),
        KeysCommand::List => {
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .map(|items| items.iter().map(key_row).collect())
                .unwrap_or_default();
            table(&["ID", "NAME", "SCOPES", "CREATED", "REVOKED"], &rows)
        }
        KeysCommand::Revoke { .. } => format!("revoked key {}\n", cell(&v["id"])),
    })
}

fn key_row(k: &Value) -> Vec<String> {
    ["id", "name", "scopes", "created_at", "revoked_at"]
        .iter()
        .map(|f| cell(&k[*f]))
        .collect()
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}
