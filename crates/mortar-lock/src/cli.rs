//! `mortar lock …` and `mortar lock run NAME -- COMMAND…`.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use clap::Subcommand;
use mortar_core::client::{Client, ClientArgs, ClientError, cell, table};
use serde_json::{Value, json};

use crate::client::{AcquireOptions, LockClient, default_owner, encode, parse_duration};

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Take a lock (prints the lease id and fencing token).
    Acquire {
        name: String,
        /// Lease length: 10s, 500ms, 1m, or plain milliseconds.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
        /// Wait in line this long if held.
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        wait: Duration,
        /// Holders allowed at once (a semaphore when above 1).
        #[arg(long, default_value_t = 1)]
        permits: u32,
        /// Who holds it, shown to others (default: user@host).
        #[arg(long)]
        owner: Option<String>,
    },
    /// Extend a lease.
    Renew {
        name: String,
        lease_id: String,
        /// Lease length: 10s, 500ms, 1m, or plain milliseconds.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Give a lease up.
    Release { name: String, lease_id: String },
    /// Holders and waiters of a lock.
    ///
    /// Lease ids are shown when the token may see them: the admin token, or an API key with
    /// `locks:secrets`.
    #[command(visible_alias = "show")]
    Status { name: String },
    /// Release a lock by force (operators): end its holders' leases.
    ///
    /// Ends every holder's lease, or only --lease-id's (one holder of a semaphore), as if it
    /// had expired: the holders' renewals then fail (410), waiters get the lock at once, and
    /// the next fencing token is larger. Needs the admin token or an API key with
    /// `locks:secrets` (and `locks:write`); the server logs it with the reason.
    ForceRelease {
        name: String,
        /// Why (logged by the server with the evicted owners).
        #[arg(long)]
        reason: Option<String>,
        /// Release only this lease (see `mortar lock status`).
        #[arg(long)]
        lease_id: Option<String>,
    },
    /// Locks in use.
    List {
        /// Only locks whose name starts with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Run a command while holding the lock; its fencing token is in MORTAR_FENCING_TOKEN.
    /// The command is stopped (SIGTERM, then SIGKILL) if the lease is lost. Exits with its code;
    /// 75 (EX_TEMPFAIL) when the lock stayed held through --wait, so the command never ran.
    Run {
        name: String,
        /// Lease length: 10s, 500ms, 1m, or plain milliseconds.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        ttl: Duration,
        /// How long to wait in line when it is held: 5s, or plain milliseconds.
        #[arg(long, default_value = "0", value_parser = parse_duration)]
        wait: Duration,
        /// Grace between SIGTERM and SIGKILL when the lease is lost.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        grace: Duration,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// `lock run`'s exit code when the lock stayed held (sysexits' EX_TEMPFAIL: try again later),
/// so that scripts can tell "did not run" from the command's own failure.
pub const EXIT_BUSY: i32 = 75;

/// Runs a lock command; returns its output and the process exit code.
pub async fn run(args: &ClientArgs, cmd: &LockCommand) -> Result<(String, i32), ClientError> {
    let client = Client::new(args);
    let v = match cmd {
        LockCommand::Acquire {
            name,
            ttl,
            wait,
            permits,
            owner,
        } => {
            let body = json!({ "ttl_ms": ttl.as_millis() as u64, "wait_ms": wait.as_millis() as u64, "permits": permits,
                "owner": owner.clone().unwrap_or_else(default_owner) });
            client
                .post(&format!("/v1/locks/{}/acquire", encode(name)), &body)
                .await?
        }
        LockCommand::Renew {
            name,
            lease_id,
            ttl,
        } => {
            let body = json!({ "lease_id": lease_id, "ttl_ms": ttl.as_millis() as u64 });
            client
                .post(&format!("/v1/locks/{}/renew", encode(name)), &body)
                .await?
        }
        LockCommand::Release { name, lease_id } => {
            client
                .post(
                    &format!("/v1/locks/{}/release", encode(name)),
                    &json!({ "lease_id": lease_id }),
                )
                .await?;
            return Ok((format!("released {name}\n"), 0));
        }
        LockCommand::Status { name } => client.get(&format!("/v1/locks/{}", encode(name))).await?,
        LockCommand::ForceRelease {
            name,
            reason,
            lease_id,
        } => {
            let mut query = Vec::new();
            if let Some(r) = reason {
                query.push(format!("reason={}", encode(r)));
            }
            if let Some(l) = lease_id {
                query.push(format!("lease_id={}", encode(l)));
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            client
                .delete(&format!("/v1/locks/{}{query}", encode(name)))
                .await?
        }
        LockCommand::List { prefix } => {
            client
                .get(&format!("/v1/locks?limit=1000&prefix={}", encode(prefix)))
                .await?
        }
        LockCommand::Run {
            name,
            ttl,
            wait,
            grace,
            command,
        } => return run_command(args, name, *ttl, *wait, *grace, command).await,
    };
    if args.json {
        return Ok((
            format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
            0,
        ));
    }
    let out = match cmd {
        LockCommand::Acquire { .. } | LockCommand::Renew { .. } => format!(
            "lease {} on {} (fencing token {}), expires {}\n",
            cell(&v["lease_id"]),
            cell(&v["name"]),
            cell(&v["fencing_token"]),
            cell(&v["expires_at"])
        ),
        LockCommand::Status { .. } => lock_table(std::slice::from_ref(&v)),
        LockCommand::ForceRelease { name, .. } => released_table(name, &v),
        LockCommand::List { .. } => {
            lock_table(v["items"].as_array().map_or(&[][..], Vec::as_slice))
        }
        LockCommand::Release { .. } | LockCommand::Run { .. } => String::new(),
    };
    Ok((out, 0))
}

/// Holders, one row each; a LEASE column when the server showed lease ids.
fn lock_table(locks: &[Value]) -> String {
    let holders = || {
        locks.iter().flat_map(|l| {
            l["holders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |h| (l, h))
        })
    };
    let leases = holders().any(|(_, h)| h.get("lease_id").is_some());
    let rows: Vec<Vec<String>> = holders()
        .map(|(l, h)| {
            let mut row = vec![
                cell(&l["name"]),
                cell(&l["permits"]),
                cell(&h["owner"]),
                cell(&h["fencing_token"]),
                cell(&h["expires_at"]),
                l["waiters"].as_array().map_or(0, Vec::len).to_string(),
            ];
            if leases {
                row.push(cell(&h["lease_id"]));
            }
            row
        })
        .collect();
    let mut headers = vec!["NAME", "PERMITS", "HOLDER", "TOKEN", "EXPIRES", "WAITERS"];
    if leases {
        headers.push("LEASE");
    }
    table(&headers, &rows)
}

/// What a force-release ended.
fn released_table(name: &str, v: &Value) -> String {
    let released = v["released"].as_array().map_or(&[][..], Vec::as_slice);
    let rows: Vec<Vec<String>> = released
        .iter()
        .map(|h| {
            vec![
                cell(&h["owner"]),
                cell(&h["fencing_token"]),
                cell(&h["lease_id"]),
            ]
        })
        .collect();
    format!(
        "force-released {} lease(s) of {name}\n{}",
        released.len(),
        table(&["HOLDER", "TOKEN", "LEASE"], &rows)
    )
}

async fn run_command(
    args: &ClientArgs,
    name: &str,
    ttl: Duration,
    wait: Duration,
    grace: Duration,
    command: &[String],
) -> Result<(String, i32), ClientError> {
    let opts = AcquireOptions {
        ttl,
        wait,
        permits: 1,
        owner: default_owner(),
    };
    let guard = match LockClient::new(args).acquire(name, &opts).await {
        Ok(g) => g,
        // Held (and --wait ran out): not the command's failure, so not its exit code.
        Err(ClientError::Problem {
            status: 409,
            detail,
            ..
        }) => {
            eprintln!("mortar: {detail}");
            return Ok((String::new(), EXIT_BUSY));
        }
        Err(e) => return Err(e),
    };
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("MORTAR_FENCING_TOKEN", guard.fencing_token().to_string())
        .env("MORTAR_LOCK_LEASE_ID", guard.lease_id())
        .env("MORTAR_LOCK_NAME", name)
        .spawn()
        .map_err(|e| ClientError::Transport(format!("cannot run `{}`: {e}", command[0])))?;
    let status = tokio::select! {
        s = child.wait() => s,
        () = guard.lost() => {
            eprintln!("mortar: lease on `{name}` lost; stopping the command");
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    let _ = child.kill().await;
                    child.wait().await
                }
            }
        }
    }
    .map_err(|e| ClientError::Transport(format!("waiting for the command: {e}")))?;
    if !guard.is_lost() {
        let _ = guard.release().await;
    }
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Ok((String::new(), code))
}
