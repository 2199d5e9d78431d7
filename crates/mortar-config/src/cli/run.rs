//! `mortar config run --ns billing --env prod -- cmd …`: runs `cmd` with the environment's
//! values as environment variables (`db.pool.max` → `DB_POOL_MAX`), and when they change
//! restarts it (SIGTERM, then SIGKILL after a grace period) or sends it a signal (`--on-change
//! HUP`). Exits with the command's exit code when it ends by itself.

use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

use mortar_core::block::Output;
use mortar_core::client::{ClientArgs, ClientError};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::client::ConfigClient;
use crate::format::{env_name, env_text};

/// What to do when the values change.
#[derive(Debug, Clone, Copy)]
enum OnChange {
    Restart,
    Signal(Signal),
}

fn on_change(s: &str) -> Result<OnChange, ClientError> {
    if s == "restart" {
        return Ok(OnChange::Restart);
    }
    let name = if s.starts_with("SIG") {
        s.to_owned()
    } else {
        format!("SIG{s}")
    };
    name.parse::<Signal>()
        .map(OnChange::Signal)
        .map_err(|_| ClientError::Problem {
            status: 400,
            title: "Bad arguments".into(),
            detail: format!(
                "--on-change: `{s}` is neither `restart` nor a signal name (HUP, USR1, …)"
            ),
            body: serde_json::Value::Null,
        })
}

fn spawn(command: &[String], client: &ConfigClient) -> Result<tokio::process::Child, ClientError> {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    for (k, v) in client.snapshot().values {
        cmd.env(env_name(&k), env_text(&v));
    }
    cmd.env("MORTAR_CONFIG_REVISION", client.revision().to_string());
    cmd.kill_on_drop(true)
        .spawn()
        .map_err(|e| ClientError::Transport(format!("cannot start {}: {e}", command[0])))
}

async fn stop(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

pub async fn run(
    args: &ClientArgs,
    ns: &str,
    env: &str,
    change: &str,
    grace: Duration,
    command: &[String],
) -> Result<Output, ClientError> {
    let change = on_change(change)?;
    let client = ConfigClient::connect(args, ns, env).await?;
    let mut child = spawn(command, &client)?;
    let mut seen = client.revision();
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|e| ClientError::Transport(format!("waiting for the command: {e}")))?;
                let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                return Ok(Output::with_code(Vec::new(), u8::try_from(code).unwrap_or(1)));
            }
            revision = client.changed_after(seen) => {
                seen = revision;
                match change {
                    OnChange::Restart => {
                        stop(&mut child, grace).await;
                        child = spawn(command, &client)?;
                    }
                    OnChange::Signal(sig) => {
                        if let Some(pid) = child.id() {
                            let _ = kill(Pid::from_raw(pid as i32), sig);
                        }
                    }
                }
            }
        }
    }
}
