//! A private PostgreSQL server (its own data directory and port) for tests that stop and
//! restart the database, which the shared test server must never be.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A PostgreSQL instance owned by one test; stopped (and deleted) on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    /// `None` (after saying why) when PostgreSQL's server binaries are not installed.
    pub fn start() -> Result<Option<Self>> {
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .max()
        }) else {
            assert!(
                std::env::var("CI").is_err(),
                "PostgreSQL server binaries are required in CI"
            );
            eprintln!("SKIPPED: no /usr/lib/postgresql/*/bin/initdb");
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let pg = Self { bin, dir, port };
        let data = pg.data();
        std::fs::create_dir_all(&data)?;
        Self::as_postgres(
            &format!("chown -R postgres {}", pg.dir.path().display()),
            true,
        )?;
        Self::as_postgres(
            &format!(
                "{} -D {} -A trust -U postgres --no-sync >/dev/null",
                pg.bin.join("initdb").display(),
                data.display()
            ),
            false,
        )?;
        pg.ctl("start")?;
        Ok(Some(pg))
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a shell command as the `postgres` user (PostgreSQL refuses to run as root).
    fn as_postgres(cmd: &str, as_root: bool) -> Result<()> {
        let status = if as_root {
            Command::new("sh").args(["-c", cmd]).status()
        } else if nix::unistd::Uid::effective().is_root() {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", cmd])
                .status()
        } else {
            Command::new("sh").args(["-c", cmd]).status()
        }
        .context(cmd.to_owned())?;
        if !status.success() {
            bail!("`{cmd}` failed: {status}");
        }
        Ok(())
    }

    fn ctl(&self, action: &str) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let cmd = match action {
            "start" => format!(
                "{} -D {} -o '{opts}' -l {}/log -w start >/dev/null",
                self.bin.join("pg_ctl").display(),
                self.data().display(),
                self.dir.path().display()
            ),
            _ => format!(
                "{} -D {} -m immediate -w stop >/dev/null",
                self.bin.join("pg_ctl").display(),
                self.data().display()
            ),
        };
        Self::as_postgres(&cmd, false)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops at once (like a crash: `-m immediate`).
    pub fn stop(&self) -> Result<()> {
        self.ctl("stop")
    }

    pub fn restart(&self) -> Result<()> {
        self.ctl("start")?;
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("private postgres did not come back");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
