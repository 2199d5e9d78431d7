//! `mortar resilience …`: inspect and steer breakers, as a client of the HTTP API.

use clap::Subcommand;
use mortar_core::client::{Client, ClientArgs, ClientError, cell, table};
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum ResilienceCommand {
    /// List breakers with state and rates.
    List,
    /// Show one breaker.
    Show { name: String },
    /// Open a breaker until reset.
    ForceOpen { name: String },
    /// Close a breaker (empty window).
    ForceClose { name: String },
    /// Let every call through, recording nothing.
    Disable { name: String },
    /// Closed, empty window.
    Reset { name: String },
}

pub async fn run(args: &ClientArgs, cmd: &ResilienceCommand) -> Result<String, ClientError> {
    let client = Client::new(args);
    let base = "/v1/resilience/breakers";
    let v = match cmd {
        ResilienceCommand::List => client.get(base).await?,
        ResilienceCommand::Show { name } => client.get(&format!("{base}/{name}")).await?,
        ResilienceCommand::ForceOpen { name } => {
            client
                .post(&format!("{base}/{name}/force_open"), &json!({}))
                .await?
        }
        ResilienceCommand::ForceClose { name } => {
            client
                .post(&format!("{base}/{name}/force_close"), &json!({}))
                .await?
        }
        ResilienceCommand::Disable { name } => {
            client
                .post(&format!("{base}/{name}/disable"), &json!({}))
                .await?
        }
        ResilienceCommand::Reset { name } => {
            client
                .post(&format!("{base}/{name}/reset"), &json!({}))
                .await?
        }
    };
    if args.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
    }
    let rows: Vec<Vec<String>> = match cmd {
        ResilienceCommand::List => v["items"]
            .as_array()
            .map(|a| a.iter().map(row).collect())
            .unwrap_or_default(),
        _ => vec![row(&v)],
    };
    Ok(table(
        &["NAME", "STATE", "CALLS", "FAILURE%", "SLOW%", "LAST CHANGE"],
        &rows,
    ))
}

fn row(b: &Value) -> Vec<String> {
    let last = match &b["last_transition"] {
        Value::Object(t) => format!(
            "{} → {} at {}",
            cell(&t["from"]),
            cell(&t["to"]),
            cell(&t["at"])
        ),
        _ => "-".into(),
    };
    vec![
        cell(&b["name"]),
        cell(&b["state"]),
        cell(&b["calls"]),
        format!("{:.1}", b["failure_rate"].as_f64().unwrap_or(0.0)),
        format!("{:.1}", b["slow_call_rate"].as_f64().unwrap_or(0.0)),
        last,
    ]
}
