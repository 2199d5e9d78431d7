//! One real `mortar serve` process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// How long a node may take to log `listening` and then to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `mortar <args>` (the CLI) against the server at `url`, with no token from the
/// environment: (exit code, stdout, stderr).
pub fn cli(url: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let o = std::process::Command::new(mortar_bin())
        .args(args)
        .env("MORTAR_URL", url)
        .env_remove("MORTAR_TOKEN")
        .output()
        .expect("run mortar");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The `mortar` binary: `$MORTAR_BIN`, else `target/<profile>/mortar` next to the test binary
/// (`cargo nextest run --workspace` and `scripts/test` build it; `cargo test -p <block>` does
/// not). Panics with the command to run when it is missing, and warns (once) when a source file
/// of a crate it is built from changed after it was built — a stale binary fails tests in ways
/// that have nothing to do with the change under test.
pub fn mortar_bin() -> PathBuf {
    static CHECKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let bin = match std::env::var("MORTAR_BIN") {
                Ok(p) => PathBuf::from(p),
                Err(_) => {
                    let exe = std::env::current_exe().expect("current test executable");
                    // target/<profile>/deps/<test>-<hash> → target/<profile>/mortar
                    exe.parent()
                        .and_then(|deps| deps.parent())
                        .expect("target/<profile>")
                        .join("mortar")
                }
            };
            let built = std::fs::metadata(&bin)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| {
                    panic!(
                        "the `mortar` binary is missing at {}: build it first with \
                         `cargo build -p mortar-server --bin mortar` (or run the tests with \
                         `cargo nextest run --workspace` / scripts/test, which build it)",
                        bin.display()
                    )
                });
            if let Some(newer) = newer_source(built) {
                eprintln!(
                    "WARNING: {} is older than {}: rebuild it (`cargo build -p mortar-server \
                     --bin mortar`) or these tests run yesterday's server",
                    bin.display(),
                    newer.display()
                );
            }
            bin
        })
        .clone()
}

/// A source file of the crates the binary is built from that changed after `built`.
fn newer_source(built: std::time::SystemTime) -> Option<PathBuf> {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .ok()?
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| !p.starts_with(crates.join("mortar-testkit")))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m > built)
            {
                return Some(path);
            }
        }
    }
    None
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Data directory; a fresh temporary one when `None`.
    pub data_dir: Option<PathBuf>,
    /// Wait for `/readyz` before returning from `start`.
    pub wait_ready: bool,
    /// Address for the first start (default `127.0.0.1:0`, a free port).
    pub listen: Option<SocketAddr>,
}

impl NodeConfig {
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            data_dir: None,
            wait_ready: true,
            listen: None,
        }
    }

    #[must_use]
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }

    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    #[must_use]
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
}

/// A running (or stopped) node. Dropping it kills the process.
pub struct Node {
    pub config: NodeConfig,
    pub addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Node {
    /// Starts a node on a free port and waits until it listens (and is ready, by default).
    pub async fn start(config: NodeConfig) -> Result<Node> {
        let (tmp, data_dir) = match &config.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        let log = Arc::new(Mutex::new(String::new()));
        let mut node = Node {
            config: config.clone(),
            addr: config
                .listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            child: None,
            log,
            data_dir,
            _tmp: tmp,
        };
        node.spawn().await?;
        Ok(node)
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(mortar_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--log-format")
            .arg("json")
            .args(&self.config.args)
            .env_remove("MORTAR_DATABASE_URL")
            .env_remove("MORTAR_REDIS_URL")
            .env_remove("MORTAR_AUTH__ADMIN_TOKEN")
            .env_remove("MORTAR_CONFIG")
            .env("MORTAR_LOG__LEVEL", "info")
            // Every node gets its own free RESP port (the default 6380 would collide).
            .env("MORTAR_CACHE__RESP_LISTEN", "127.0.0.1:0")
            .envs(
                self.config
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .current_dir(self.data_dir.parent().unwrap_or(&self.data_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", mortar_bin().display()))?;
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        for (stream, is_err) in [
            (
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                true,
            ),
            (
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
                false,
            ),
        ] {
            let Some(stream) = stream else { continue };
            let log = self.log.clone();
            let tx = if is_err { Some(tx.clone()) } else { None };
            let name = self.config.name.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(tx) = &tx
                        && let Some(addr) = listening_addr(&line)
                    {
                        let _ = tx.send(addr);
                    }
                    let mut log = log
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    log.push_str(&format!("[{name}] {line}\n"));
                }
            });
        }
        drop(tx);
        self.child = Some(child);
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT))
            .await?
            .map_err(|_| {
                anyhow!(
                    "node {} did not start listening:\n{}",
                    self.config.name,
                    self.logs()
                )
            })?;
        self.addr = addr;
        if self.config.wait_ready {
            self.wait_ready().await?;
        }
        Ok(())
    }

    /// Polls `/readyz` until it answers 200.
    pub async fn wait_ready(&self) -> Result<()> {
        // No pooled keep-alive: the probe must not hold one of the node's connection slots.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()?;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let probe = client
                .get(self.url("/readyz"))
                .header("connection", "close");
            if let Ok(r) = probe.send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "node {} never became ready:\n{}",
                    self.config.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: the process dies mid-whatever, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status (graceful shutdown).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| anyhow!("node is not running"))?;
        Self::signal_child(&c, nix::sys::signal::Signal::SIGTERM)?;
        Ok(c.wait()?)
    }

    /// Sends SIGTERM without waiting (the caller observes the exit with [`Node::wait`]).
    pub fn send_sigterm(&self) -> Result<()> {
        let c = self
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("node is not running"))?;
        Self::signal_child(c, nix::sys::signal::Signal::SIGTERM)
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| anyhow!("node is not running"))?;
        Ok(c.wait()?)
    }

    fn signal_child(c: &Child, sig: nix::sys::signal::Signal) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
        nix::sys::signal::kill(pid, sig)?;
        Ok(())
    }

    /// Starts the process again on the same address and data directory.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything the node has logged so far (all its lives).
    pub fn logs(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until the node's log contains `needle` (logs arrive asynchronously).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.logs().contains(needle) {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "node {} never logged {needle:?}:\n{}",
                    self.config.name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub fn print_logs(&self) {
        eprintln!(
            "----- logs of {} ({}) -----\n{}",
            self.config.name,
            self.addr,
            self.logs()
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        self.kill();
    }
}

fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != "listening" {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}
