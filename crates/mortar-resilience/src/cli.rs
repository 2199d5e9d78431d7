//! `mortar resilience …`: define, inspect and steer breakers, and call through them, as a
//! client of the HTTP API.

use std::time::Duration;

use clap::{Args, Subcommand};
use mortar_core::client::{
    Client, ClientArgs, ClientError, cell, encode_segment, parse_duration, table,
};
use serde_json::{Map, Value, json};

#[derive(Debug, Subcommand)]
pub enum ResilienceCommand {
    /// List breakers with state and rates.
    List,
    /// Show one breaker.
    Show { name: String },
    /// Create a breaker (stored, on every node); unset settings take their defaults. Fails if
    /// it exists: use `update`.
    Create {
        name: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Change settings of a breaker created through the API; unset ones stay as they are.
    /// The breaker keeps its state (an open breaker stays open).
    Update {
        name: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Create or replace a breaker from a file: a TOML table or a JSON object with the fields
    /// of `[resilience.breakers.<name>]` (window, window_size, window_ms, failure_rate_threshold,
    /// slow_call_rate_threshold, slow_call_ms, minimum_calls, wait_open_ms, half_open_calls,
    /// shared). Missing fields take their defaults.
    Apply {
        name: String,
        /// The definition (`.json`, or TOML otherwise).
        #[arg(long, short = 'f')]
        file: std::path::PathBuf,
    },
    /// Delete a breaker created through the API (mortar.toml ones cannot be).
    Delete { name: String },
    /// Open a breaker until reset.
    ForceOpen { name: String },
    /// Close a breaker (empty window).
    ForceClose { name: String },
    /// Let every call through, recording nothing.
    Disable { name: String },
    /// Closed, empty window.
    Reset { name: String },
    /// Ask to make a call: prints the permit (exit 1 with the reason while the breaker is open).
    Acquire { name: String },
    /// Record the outcome of a call `acquire` admitted.
    Record {
        name: String,
        permit: String,
        /// success, failure or cancelled.
        outcome: String,
        /// How long the call took (e.g. 250ms, 2s); default: since the acquire.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
    },
}

/// A breaker's settings as flags; durations accept `250ms`, `10s`, `2m`.
#[derive(Debug, Clone, Default, Args)]
pub struct Settings {
    /// Sliding window: `count` (the last --window-size calls) or `time` (the last --window-time).
    #[arg(long, value_parser = ["count", "time"])]
    pub window: Option<String>,
    /// Calls in a count window.
    #[arg(long)]
    pub window_size: Option<u64>,
    /// Length of a time window (e.g. 60s).
    #[arg(long, value_parser = parse_duration)]
    pub window_time: Option<Duration>,
    /// Open at this failure percentage (above 0, at most 100).
    #[arg(long)]
    pub failure_rate: Option<f64>,
    /// Open at this slow-call percentage (above 0, at most 100).
    #[arg(long)]
    pub slow_rate: Option<f64>,
    /// A call at least this long is slow (e.g. 2s).
    #[arg(long, value_parser = parse_duration)]
    pub slow_call: Option<Duration>,
    /// Judge rates only once the window holds this many calls.
    #[arg(long)]
    pub minimum_calls: Option<u64>,
    /// How long to stay open before probing (e.g. 30s).
    #[arg(long, value_parser = parse_duration)]
    pub wait_open: Option<Duration>,
    /// Concurrent probes in half-open.
    #[arg(long)]
    pub half_open_calls: Option<u32>,
    /// Share state through Redis with every node (true/false; cluster mode with Redis).
    #[arg(long)]
    pub shared: Option<bool>,
}

impl Settings {
    /// Writes the given flags over `into` (a breaker's JSON settings).
    fn apply(&self, into: &mut Map<String, Value>) {
        let ms = |d: Duration| json!(d.as_millis() as u64);
        let fields = [
            ("window", self.window.as_ref().map(|w| json!(w))),
            ("window_size", self.window_size.map(|v| json!(v))),
            ("window_ms", self.window_time.map(ms)),
            (
                "failure_rate_threshold",
                self.failure_rate.map(|v| json!(v)),
            ),
            ("slow_call_rate_threshold", self.slow_rate.map(|v| json!(v))),
            ("slow_call_ms", self.slow_call.map(ms)),
            ("minimum_calls", self.minimum_calls.map(|v| json!(v))),
            ("wait_open_ms", self.wait_open.map(ms)),
            ("half_open_calls", self.half_open_calls.map(|v| json!(v))),
            ("shared", self.shared.map(|v| json!(v))),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                into.insert(k.to_owned(), v);
            }
        }
    }
}

const BASE: &str = "/v1/resilience/breakers";

fn path(name: &str, action: &str) -> String {
    format!("{BASE}/{}{action}", encode_segment(name))
}

/// A local mistake (bad file, exists already) as the CLI's error.
fn local_error(detail: String) -> ClientError {
    ClientError::Problem {
        status: 400,
        title: "bad request".into(),
        detail,
        body: Value::Null,
    }
}

pub async fn run(args: &ClientArgs, cmd: &ResilienceCommand) -> Result<String, ClientError> {
    let client = Client::new(args);
    let post = |name: &str, action: &str| {
        let client = client.clone();
        let p = path(name, action);
        async move { client.post(&p, &json!({})).await }
    };
    let v = match cmd {
        ResilienceCommand::List => client.get(BASE).await?,
        ResilienceCommand::Show { name } => client.get(&path(name, "")).await?,
        ResilienceCommand::Create { name, settings } => {
            if let Ok(existing) = client.get(&path(name, "")).await {
                return Err(local_error(format!(
                    "circuit breaker `{name}` already exists (source: {}); change it with \
                     `mortar resilience update {name} …`",
                    cell(&existing["source"])
                )));
            }
            let mut body = Map::new();
            settings.apply(&mut body);
            client.put(&path(name, ""), &Value::Object(body)).await?
        }
        ResilienceCommand::Update { name, settings } => {
            let current = client.get(&path(name, "")).await?;
            let mut body = match &current["config"] {
                Value::Object(m) => m.clone(),
                _ => Map::new(),
            };
            settings.apply(&mut body);
            client.put(&path(name, ""), &Value::Object(body)).await?
        }
        ResilienceCommand::Apply { name, file } => {
            let body = read_definition(file)?;
            client.put(&path(name, ""), &body).await?
        }
        ResilienceCommand::Delete { name } => {
            client.delete(&path(name, "")).await?;
            return Ok(if args.json {
                format!("{}\n", json!({"deleted": name}))
            } else {
                format!("deleted circuit breaker `{name}`\n")
            });
        }
        ResilienceCommand::ForceOpen { name } => post(name, "/force_open").await?,
        ResilienceCommand::ForceClose { name } => post(name, "/force_close").await?,
        ResilienceCommand::Disable { name } => post(name, "/disable").await?,
        ResilienceCommand::Reset { name } => post(name, "/reset").await?,
        ResilienceCommand::Acquire { name } => {
            let v = post(name, "/acquire").await?;
            if !args.json {
                return Ok(format!("{}\n", cell(&v["permit"])));
            }
            v
        }
        ResilienceCommand::Record {
            name,
            permit,
            outcome,
            duration,
        } => {
            let mut body = json!({"permit": permit, "outcome": outcome});
            if let Some(d) = duration {
                body["duration_ms"] = json!(d.as_millis() as u64);
            }
            let v = client.post(&path(name, "/record"), &body).await?;
            if !args.json {
                return Ok(format!(
                    "{} (counted: {})\n",
                    cell(&v["state"]),
                    cell(&v["counted"])
                ));
            }
            v
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
        &[
            "NAME",
            "STATE",
            "SOURCE",
            "CALLS",
            "FAILURE%",
            "SLOW%",
            "LAST CHANGE",
        ],
        &rows,
    ))
}

/// A definition file as the PUT body: JSON when it ends in `.json`, TOML otherwise.
fn read_definition(file: &std::path::Path) -> Result<Value, ClientError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| local_error(format!("cannot read {}: {e}", file.display())))?;
    let parsed = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str::<Value>(&text).map_err(|e| e.to_string())
    };
    match parsed {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(local_error(format!(
            "{}: a breaker definition is a table of settings",
            file.display()
        ))),
        Err(e) => Err(local_error(format!("{}: {e}", file.display()))),
    }
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
    let mut state = cell(&b["state"]);
    if b["config"]["shared"] == json!(true) {
        state.push_str(if b["degraded"].is_string() {
            " (shared, redis down: this node's)"
        } else {
            " (shared)"
        });
    }
    vec![
        cell(&b["name"]),
        state,
        cell(&b["source"]),
        cell(&b["calls"]),
        format!("{:.1}", b["failure_rate"].as_f64().unwrap_or(0.0)),
        format!("{:.1}", b["slow_call_rate"].as_f64().unwrap_or(0.0)),
        last,
    ]
}
