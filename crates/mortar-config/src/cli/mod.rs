//! `mortar config get|set|delete|list|diff|export|import|history|rollback|watch|schema|run`: a
//! client of the HTTP API.

mod run;

use std::io::Read as _;

use clap::Subcommand;
use mortar_core::block::Output;
use mortar_core::client::{Client, ClientArgs, ClientError, cell, encode_segment, table};
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// One key's effective value (JSON), e.g. `mortar config get billing prod db.pool.max`.
    Get {
        /// Namespace.
        ns: String,
        /// Environment.
        env: String,
        /// The dotted key, e.g. db.pool.max.
        key: String,
    },
    /// Set a key. The value is JSON (`20`, `true`, `'{"a":1}'`); anything that is not JSON is
    /// taken as a string (`hello`); `-` reads it from stdin.
    Set {
        /// Namespace.
        ns: String,
        /// Environment.
        env: String,
        /// The dotted key, e.g. db.pool.max.
        key: String,
        value: String,
        /// Why (kept in the history).
        #[arg(long, short)]
        message: Option<String>,
        /// Only if the key is still at this revision (0: only if it does not exist).
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// Delete a key from an environment (what it falls back to shows through).
    Delete {
        /// Namespace.
        ns: String,
        /// Environment.
        env: String,
        /// The dotted key, e.g. db.pool.max.
        key: String,
        /// Why: kept in the history with the change.
        #[arg(long, short)]
        message: Option<String>,
    },
    /// Every effective value of an environment, with where it comes from.
    List { ns: String, env: String },
    /// The effective values: `KEY='value'` lines for a shell (`eval "$(mortar config export
    /// billing prod)"`), or a flat JSON or YAML document (`--format json|yaml`).
    Export {
        /// Namespace.
        ns: String,
        /// Environment.
        env: String,
        /// env (KEY=value lines, the default), json or yaml.
        #[arg(long, default_value = "env")]
        format: String,
    },
    /// Set every key of a JSON or YAML file (nested objects become dotted keys) in one change
    /// set; `--replace` also deletes the environment's keys the file lacks. `-` reads stdin.
    Import {
        /// Namespace.
        ns: String,
        /// Environment.
        env: String,
        file: String,
        /// json or yaml (default: from the file's extension, else json).
        #[arg(long)]
        format: Option<String>,
        /// Also delete the environment's own keys the file lacks.
        #[arg(long)]
        replace: bool,
        /// Why: kept in the history with the change.
        #[arg(long, short)]
        message: Option<String>,
    },
    /// What differs between two environments' effective values (`mortar config diff billing
    /// staging prod`): `+` only in the second, `-` only in the first, `~` different. Exits 1 when
    /// they differ, like diff(1).
    Diff {
        /// Namespace.
        ns: String,
        from: String,
        to: String,
    },
    /// An environment's changes, newest first.
    History {
        /// Namespace.
        ns: String,
        /// Environment.
        env: String,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// How many revisions, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Restore an environment as it was at a revision (as a new revision).
    Rollback {
        /// Namespace.
        ns: String,
        /// Environment.
        env: String,
        revision: u64,
    },
    /// Print each change as it happens (one JSON line per event), resuming without gaps.
    Watch {
        /// Namespace.
        ns: String,
        /// Environment.
        env: String,
        /// Only this key.
        #[arg(long)]
        key: Option<String>,
        /// Only keys that start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Start after this revision instead of with a snapshot.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Run a command with the values as environment variables (`db.pool.max` → `DB_POOL_MAX`,
    /// plus MORTAR_CONFIG_REVISION); restart it when they change, or send it a signal
    /// (`--on-change HUP`). Exits with the command's code.
    Run {
        /// Namespace.
        #[arg(long)]
        ns: String,
        /// Environment.
        #[arg(long)]
        env: String,
        /// `restart` (SIGTERM, then SIGKILL after --grace) or a signal name (HUP, USR1, …).
        #[arg(long, default_value = "restart")]
        on_change: String,
        /// Time between SIGTERM and SIGKILL on a restart: 10s, 500ms, or plain milliseconds.
        #[arg(long, default_value = "10s", value_parser = mortar_core::client::parse_duration)]
        grace: std::time::Duration,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A namespace's JSON Schema: `schema get billing`, `schema set billing schema.json`
    /// (`-`: stdin), `schema delete billing`.
    Schema {
        /// get, set or delete.
        action: String,
        /// Namespace.
        ns: String,
        file: Option<String>,
    },
}

fn path(ns: &str, env: &str) -> String {
    format!("/v1/config/{}/{}", encode_segment(ns), encode_segment(env))
}

fn read_stdin() -> Result<String, ClientError> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| ClientError::Transport(format!("reading stdin failed: {e}")))?;
    Ok(s)
}

fn usage(detail: String) -> ClientError {
    ClientError::Problem {
        status: 400,
        title: "Bad arguments".into(),
        detail,
        body: Value::Null,
    }
}

pub async fn run(args: &ClientArgs, cmd: &ConfigCommand) -> Result<Output, ClientError> {
    let c = Client::new(args);
    let out = match cmd {
        ConfigCommand::Get { ns, env, key } => {
            let v = c
                .get(&format!("{}/{}", path(ns, env), encode_segment(key)))
                .await?;
            format!("{}\n", v["value"])
        }
        ConfigCommand::Set {
            ns,
            env,
            key,
            value,
            message,
            if_match,
        } => {
            let text = if value == "-" {
                read_stdin()?
            } else {
                value.clone()
            };
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let mut url = format!("{}/{}", path(ns, env), encode_segment(key));
            if let Some(m) = message {
                url.push_str(&format!("?message={}", encode_segment(m)));
            }
            let v = match if_match {
                Some(rev) => {
                    c.put_with(&url, &value, &[("if-match", &rev.to_string())])
                        .await?
                }
                None => c.put(&url, &value).await?,
            };
            format!("revision {}\n", cell(&v["revision"]))
        }
        ConfigCommand::Delete {
            ns,
            env,
            key,
            message,
        } => {
            let mut url = format!("{}/{}", path(ns, env), encode_segment(key));
            if let Some(m) = message {
                url.push_str(&format!("?message={}", encode_segment(m)));
            }
            let v = c.delete(&url).await?;
            format!("revision {}\n", cell(&v["revision"]))
        }
        ConfigCommand::List { ns, env } => {
            let v = c.get(&path(ns, env)).await?;
            let rows: Vec<Vec<String>> = v["values"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, e)| {
                    vec![
                        k.clone(),
                        e["value"].to_string(),
                        cell(&e["env"]),
                        cell(&e["revision"]),
                    ]
                })
                .collect();
            format!(
                "{}revision {}\n",
                table(&["KEY", "VALUE", "FROM", "REVISION"], &rows),
                cell(&v["revision"])
            )
        }
        ConfigCommand::Export { ns, env, format } => {
            let v = c.get(&path(ns, env)).await?;
            let values: crate::service::Values = serde_json::from_value(v)
                .map_err(|e| ClientError::Transport(format!("unexpected answer: {e}")))?;
            match format.as_str() {
                "env" => crate::format::render(&values),
                "json" => format!("{:#}\n", json!(crate::format::flat(&values))),
                "yaml" => crate::format::yaml(&crate::format::flat(&values)).map_err(usage)?,
                other => return Err(usage(format!("--format `{other}`: use env, json or yaml"))),
            }
        }
        ConfigCommand::Import {
            ns,
            env,
            file,
            format,
            replace,
            message,
        } => {
            let text = if file == "-" {
                read_stdin()?
            } else {
                std::fs::read_to_string(file)
                    .map_err(|e| usage(format!("cannot read {file}: {e}")))?
            };
            let format = format.clone().unwrap_or_else(|| {
                let ext = std::path::Path::new(file)
                    .extension()
                    .and_then(|e| e.to_str());
                let yaml = ext.is_some_and(|e| {
                    e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml")
                });
                if yaml { "yaml" } else { "json" }.to_owned()
            });
            let values =
                crate::format::parse(&text, &format).map_err(|e| usage(format!("{file}: {e}")))?;
            let mut ops: Vec<Value> = values
                .iter()
                .map(|(k, v)| json!({"op": "set", "key": k, "value": v}))
                .collect();
            if *replace {
                // A new environment has nothing to delete: the import creates it.
                let own = match c.get(&path(ns, env)).await {
                    Err(ClientError::Problem { status: 404, .. }) => json!({}),
                    other => other?,
                };
                for (k, e) in own["values"].as_object().into_iter().flatten() {
                    if e["env"] == json!(env) && !values.contains_key(k) {
                        ops.push(json!({"op": "delete", "key": k}));
                    }
                }
            }
            let body = json!({"ops": ops, "message": message.clone().unwrap_or_else(|| format!("import {file}"))});
            let v = c.post(&format!("{}:apply", path(ns, env)), &body).await?;
            format!("{} keys, revision {}\n", ops.len(), cell(&v["revision"]))
        }
        ConfigCommand::Diff { ns, from, to } => {
            let (a, b) = (c.get(&path(ns, from)).await?, c.get(&path(ns, to)).await?);
            let text = diff(&a["values"], &b["values"]);
            let code = u8::from(!text.is_empty());
            return Ok(Output::with_code(text, code));
        }
        ConfigCommand::History {
            ns,
            env,
            key,
            limit,
        } => {
            let mut url = format!("{}/history?limit={limit}", path(ns, env));
            if let Some(k) = key {
                url.push_str(&format!("&key={}", encode_segment(k)));
            }
            let v = c.get(&url).await?;
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    vec![
                        cell(&h["revision"]),
                        cell(&h["at"]),
                        cell(&h["principal"]),
                        cell(&h["op"]),
                        cell(&h["key"]),
                        h["value"].to_string(),
                        cell(&h["message"]),
                    ]
                })
                .collect();
            table(
                &["REVISION", "AT", "BY", "OP", "KEY", "VALUE", "MESSAGE"],
                &rows,
            )
        }
        ConfigCommand::Rollback { ns, env, revision } => {
            let v = c
                .post(
                    &format!("{}/rollback", path(ns, env)),
                    &json!({ "to_revision": revision }),
                )
                .await?;
            format!("revision {}\n", cell(&v["revision"]))
        }
        ConfigCommand::Run {
            ns,
            env,
            on_change,
            grace,
            command,
        } => {
            return run::run(args, ns, env, on_change, *grace, command).await;
        }
        ConfigCommand::Watch {
            ns,
            env,
            key,
            prefix,
            after,
        } => {
            return watch(
                &c,
                &path(ns, env),
                key.as_deref(),
                prefix.as_deref(),
                *after,
            )
            .await;
        }
        ConfigCommand::Schema { action, ns, file } => {
            let url = format!("/v1/config/{}/schema", encode_segment(ns));
            match (action.as_str(), file) {
                ("get", _) => format!("{:#}\n", c.get(&url).await?),
                ("set", Some(f)) => {
                    let text = if f == "-" {
                        read_stdin()?
                    } else {
                        std::fs::read_to_string(f)
                            .map_err(|e| usage(format!("cannot read {f}: {e}")))?
                    };
                    let schema: Value = serde_json::from_str(&text)
                        .map_err(|e| usage(format!("{f} is not JSON: {e}")))?;
                    c.put(&url, &schema).await?;
                    "schema set\n".into()
                }
                ("delete", _) => {
                    c.delete(&url).await?;
                    "schema removed\n".into()
                }
                _ => {
                    return Err(usage(
                        "schema takes get <ns>, set <ns> <file|->, or delete <ns>".into(),
                    ));
                }
            }
        }
    };
    Ok(Output::from(out))
}

/// The lines of `mortar config diff`: effective values (`{key: {value, env, …}}`) of two
/// environments compared by value.
fn diff(a: &Value, b: &Value) -> String {
    let (empty, mut out) = (serde_json::Map::new(), String::new());
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        match (a.get(k).map(|e| &e["value"]), b.get(k).map(|e| &e["value"])) {
            (Some(x), Some(y)) if x != y => out.push_str(&format!("~ {k}: {x} → {y}\n")),
            (Some(x), None) => out.push_str(&format!("- {k}: {x}\n")),
            (None, Some(y)) => out.push_str(&format!("+ {k}: {y}\n")),
            _ => {}
        }
    }
    out
}

/// Long-polls the watch, printing each event as a JSON line, until interrupted.
async fn watch(
    c: &Client,
    base: &str,
    key: Option<&str>,
    prefix: Option<&str>,
    mut after: Option<u64>,
) -> Result<Output, ClientError> {
    use std::io::Write as _;
    loop {
        let mut url = format!("{base}/watch?wait_ms=30000");
        if let Some(a) = after {
            url.push_str(&format!("&after_revision={a}"));
        }
        if let Some(k) = key {
            url.push_str(&format!("&key={}", encode_segment(k)));
        }
        if let Some(p) = prefix {
            url.push_str(&format!("&prefix={}", encode_segment(p)));
        }
        let v = c.get(&url).await?;
        let mut out = std::io::stdout().lock();
        for item in v["items"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "{item}");
        }
        let _ = out.flush();
        after = v["revision"].as_u64().or(after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lists_added_removed_and_changed_keys() {
        let a = json!({"same": {"value": 1}, "gone": {"value": "x"}, "moved": {"value": 2}});
        let b = json!({"same": {"value": 1}, "new": {"value": true}, "moved": {"value": 3}});
        assert_eq!(diff(&a, &b), "- gone: \"x\"\n~ moved: 2 → 3\n+ new: true\n");
        assert_eq!(diff(&a, &a), "");
    }
}
