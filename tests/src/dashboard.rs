//! A running `rollgate dashboard` for the browser tests: started with an operator identity on
//! a free loopback port, its login address read from its first line; killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::pki::TlsFiles;
use crate::{bin, Fleet};

/// How long the dashboard may take to print its address.
pub const DASHBOARD_START: Duration = Duration::from_secs(20);
/// How long the dashboard may take to stop after Ctrl-C.
pub const DASHBOARD_STOP: Duration = Duration::from_secs(10);

/// A running `rollgate dashboard`.
#[derive(Debug)]
pub struct Dashboard {
    child: Child,
    /// The login address it printed (`http://127.0.0.1:PORT/?token=...`).
    pub login: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its later stdout lines (kept so it never blocks on a full pipe).
    _stdout: Receiver<String>,
}

impl Dashboard {
    /// Starts it with the fleet's operator identity.
    pub fn start(fleet: &Fleet) -> anyhow::Result<Self> {
        Self::start_as(fleet, &fleet.operator)
    }

    /// Starts it with `who`'s certificate (a viewer, a deployer, ...).
    pub fn start_as(fleet: &Fleet, who: &TlsFiles) -> anyhow::Result<Self> {
        let mut child = Command::new(bin("rollgate"))
            .arg("--coordinator")
            .arg(fleet.coordinator_url())
            .args(who.cli_args())
            .args(["dashboard", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start rollgate dashboard")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut d = Dashboard {
            child,
            login: String::new(),
            base: String::new(),
            _stdout: lines,
        };
        let line = d
            ._stdout
            .recv_timeout(DASHBOARD_START)
            .context("rollgate dashboard printed no address")?;
        d.login = line
            .strip_prefix("dashboard: ")
            .with_context(|| format!("unexpected first line: {line}"))?
            .to_string();
        d.base = d
            .login
            .split_once("/?token=")
            .map(|(b, _)| b.to_string())
            .with_context(|| format!("no token in {}", d.login))?;
        println!("dashboard at {}", d.base);
        Ok(d)
    }

    /// Fails if the dashboard exited (a crash) before the test was done with it.
    pub fn still_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("rollgate dashboard exited on its own: {status}");
        }
        Ok(())
    }

    /// Sends SIGINT (Ctrl-C) and requires a clean exit within [`DASHBOARD_STOP`].
    pub fn interrupt_and_wait(&mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
        let deadline = Instant::now() + DASHBOARD_STOP;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("rollgate dashboard ended with {status} after Ctrl-C");
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("rollgate dashboard did not stop within {DASHBOARD_STOP:?} of Ctrl-C")
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
