//! The fleet's etcd helpers, leadership, faults (kill, cut, restore) and log dumps.

use crate::*;
use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Fleet {
    /// Waits (up to 60 s) until a host of rollout `id` is updating and verifying its release;
    /// returns that status and the host.
    pub fn wait_verifying(&self, id: &str) -> anyhow::Result<(pb::RolloutStatus, String)> {
        let verifying = |s: &pb::RolloutStatus| {
            s.hosts
                .iter()
                .find(|h| h.state() == pb::HostState::Updating && h.step() == pb::Step::Verifying)
                .map(|h| h.host_id.clone())
        };
        let s = self.wait_status(id, "a host verifying", Duration::from_secs(60), |s| {
            verifying(s).is_some()
        })?;
        let x = verifying(&s).context("checked by the wait")?;
        Ok((s, x))
    }

    /// Writes `value` at `key` behind the coordinators' backs (a fault: what a restore or a
    /// confused operator leaves behind).
    pub fn etcd_put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            c.put(key, value, None).await?;
            Ok(())
        })
    }

    /// Deletes `key` behind the coordinators' backs (a fault: e.g. a leader's election key,
    /// which deposes it exactly as its lease running out would, while the process lives on).
    pub fn etcd_delete(&self, key: &str) -> anyhow::Result<()> {
        self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let r = c.delete(key, None).await?;
            anyhow::ensure!(r.deleted() == 1, "etcd key {key} was not there to delete");
            Ok(())
        })
    }

    /// All keys under `prefix` in etcd with their values, in key order.
    pub fn etcd_get_prefix(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let r = c
                .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
                .await?;
            Ok(r.kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect())
        })
    }

    /// etcd's current revision (the header of a read under [`ETCD_PREFIX`]): it grows with
    /// every write anywhere in etcd, so an unchanged revision means nothing was written.
    pub fn etcd_revision(&self) -> anyhow::Result<i64> {
        self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let r = c
                .get(
                    ETCD_PREFIX,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await?;
            r.header()
                .map(|h| h.revision())
                .context("etcd answered without a header")
        })
    }

    /// Keys under [`ETCD_PREFIX`] last written after revision `rev`, with their mod revision
    /// (deleted keys do not show).
    pub fn etcd_keys_modified_after(&self, rev: i64) -> anyhow::Result<Vec<(String, i64)>> {
        self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let r = c
                .get(
                    ETCD_PREFIX,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_keys_only(),
                    ),
                )
                .await?;
            Ok(r.kvs()
                .iter()
                .filter(|kv| kv.mod_revision() > rev)
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.mod_revision(),
                    )
                })
                .collect())
        })
    }

    pub(crate) async fn etcd_client(&self) -> anyhow::Result<etcd_client::Client> {
        if self.etcd_peers.is_empty() {
            return self.etcd.client().await;
        }
        // A cluster: any member that answers.
        let endpoints: Vec<&str> = std::iter::once(&self.etcd)
            .chain(&self.etcd_peers)
            .map(|e| e.endpoint.as_str())
            .collect();
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(Duration::from_secs(2));
        Ok(etcd_client::Client::connect(endpoints, Some(opts)).await?)
    }

    /// Index (into `coordinators`) of the replica holding leadership, read from the election
    /// key in etcd (`<prefix>leader/<lease>`, the oldest one leads; its value is the
    /// replica_id). `None` while nobody leads.
    pub fn leader(&self) -> anyhow::Result<Option<usize>> {
        let value = self.runtime.block_on(async {
            let mut c = self.etcd_client().await?;
            let opts = etcd_client::GetOptions::new()
                .with_prefix()
                .with_sort(
                    etcd_client::SortTarget::Create,
                    etcd_client::SortOrder::Ascend,
                )
                .with_limit(1);
            let r = c.get(format!("{ETCD_PREFIX}leader/"), Some(opts)).await?;
            anyhow::Ok(
                r.kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
            )
        })?;
        match value {
            None => Ok(None),
            Some(v) => match self.coordinators.iter().position(|c| c.id == v) {
                Some(i) => Ok(Some(i)),
                None => bail!("the leader key names {v:?}, which is not a replica of this fleet"),
            },
        }
    }

    /// Waits until some replica leads; returns its index.
    pub fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let r = wait_for("a leader", timeout, || self.leader());
        self.note(r)
    }

    /// Waits until a replica other than `old` leads; returns its index.
    pub fn wait_leader_change(&self, old: usize, timeout: Duration) -> anyhow::Result<usize> {
        let r = wait_for(
            &format!("leadership to move away from {}", self.coordinators[old].id),
            timeout,
            || match self.leader()? {
                Some(i) if i != old => Ok(Some(i)),
                other => bail!("leader: {:?}", other.map(|i| &self.coordinators[i].id)),
            },
        );
        self.note(r)
    }

    /// kill -9 etcd, keep it down for `down_for`, then start it again on the same ports and
    /// data dir and wait until it is healthy.
    pub fn restart_etcd(&mut self, down_for: Duration) -> anyhow::Result<()> {
        // A replica whose lease etcd let lapse while down ends by design (the supervisor
        // starts it again); a crash still fails the test.
        self.expect_exits("coordinators", Expected::Exit, "the test restarted etcd");
        self.etcd.proc.kill9();
        std::thread::sleep(down_for);
        self.etcd.proc.restart()?;
        let r = self.etcd.wait_healthy();
        self.note(r)
    }

    /// Waits until no rollout of `service` is active (the coordinator's
    /// `<prefix>services/<service>/active` key is gone): the next rollout may start.
    pub fn wait_service_free(&self, service: &str) -> anyhow::Result<()> {
        let key = format!("{ETCD_PREFIX}services/{service}/active");
        self.wait(
            &format!("service {service} to be free"),
            Duration::from_secs(10),
            || {
                let kvs = self.etcd_get_prefix(&key)?;
                match kvs.iter().find(|(k, _)| *k == key) {
                    None => Ok(Some(())),
                    Some((_, v)) => bail!("{key} = {v}"),
                }
            },
        )
    }

    /// A cold backup of etcd, taken while no rollout is active: kill -9 it, copy its data dir
    /// to `<dir>/<name>`, start it again.
    pub fn etcd_backup(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        // A replica whose lease etcd let lapse while down ends by design (the supervisor
        // starts it again); a crash still fails the test.
        self.expect_exits("coordinators", Expected::Exit, "the test restarted etcd");
        self.wait_service_free("web")?;
        let data = self.dir.join("etcd-data");
        let backup = self.dir.join(name);
        self.etcd.proc.kill9();
        let copied = copy_dir(&data, &backup);
        self.etcd.proc.restart()?;
        copied?;
        let r = self.etcd.wait_healthy();
        self.note(r)?;
        Ok(backup)
    }

    /// Puts a backup taken with [`Fleet::etcd_backup`] back: kill -9 etcd, replace its data
    /// dir, start it, then restart every coordinator (as an operator does after a restore).
    pub fn etcd_restore(&mut self, backup: &Path) -> anyhow::Result<()> {
        // A replica whose lease etcd let lapse while down ends by design (the supervisor
        // starts it again); a crash still fails the test.
        self.expect_exits("coordinators", Expected::Exit, "the test restarted etcd");
        let data = self.dir.join("etcd-data");
        self.etcd.proc.kill9();
        fs::remove_dir_all(&data).with_context(|| format!("cannot remove {}", data.display()))?;
        copy_dir(backup, &data)?;
        self.etcd.proc.restart()?;
        let r = self.etcd.wait_healthy();
        self.note(r)?;
        for c in &self.coordinators {
            c.restart()?;
        }
        self.wait_coordinator()
    }

    /// What the supervisor did: one line per coordinator that exited on its own.
    pub fn coordinator_restarts(&self) -> Vec<String> {
        self.supervisor
            .as_ref()
            .map(|s| lock(&s.events).clone())
            .unwrap_or_default()
    }

    pub(crate) fn net_host(&self, host: &str) -> anyhow::Result<&NetHost> {
        let net = self
            .net
            .as_ref()
            .context("cut/heal need a fleet started with netns: true")?;
        let i = self
            .agents
            .iter()
            .position(|a| a.id == host)
            .with_context(|| format!("no host {host}"))?;
        Ok(&net.hosts[i])
    }

    /// Takes `host`'s link down: agent <-> coordinator and observer <-> service, both ways.
    pub fn cut(&self, host: &str) -> anyhow::Result<()> {
        let h = self.net_host(host)?;
        ip(&["link", "set", &h.veth, "down"])
    }

    /// Puts `host`'s link back.
    pub fn heal(&self, host: &str) -> anyhow::Result<()> {
        let h = self.net_host(host)?;
        ip(&["link", "set", &h.veth, "up"])
    }

    pub(crate) fn note<T>(&self, r: anyhow::Result<T>) -> anyhow::Result<T> {
        if r.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }

    /// Prints the tail of every log.
    pub fn dump_logs(&self) {
        eprintln!("---- logs under {} ----", self.dir.display());
        let mut logs: Vec<(String, PathBuf, String)> = vec![(
            "etcd".into(),
            self.etcd.proc.log.clone(),
            self.etcd.proc.tail(TAIL_LINES),
        )];
        for c in &self.coordinators {
            logs.push((c.id.clone(), c.log(), c.tail(TAIL_LINES)));
        }
        for a in &self.agents {
            logs.push((a.id.clone(), a.proc.log.clone(), a.proc.tail(TAIL_LINES)));
        }
        for (name, path, tail) in logs {
            eprintln!("==== {name} ({}) ====\n{tail}", path.display());
        }
        for e in self.coordinator_restarts() {
            eprintln!("{e}");
        }
    }

    /// kill -9 a host whole: its agent, then its service (a power cut, as far as the
    /// coordinator and the observer can tell).
    pub fn kill_host(&mut self, id: &str) {
        self.agent(id).proc.kill9();
        kill_services_of(self.host(id));
    }

    /// Sets a label in a host's agent config (it takes effect when the agent restarts).
    pub fn set_label(&self, id: &str, key: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(id).join("agent.toml");
        let text = fs::read_to_string(&path)?;
        let mut out = String::new();
        let mut in_labels = false;
        for line in text.lines() {
            if line.starts_with('[') {
                in_labels = line == "[labels]";
            }
            if in_labels && line.starts_with(&format!("{key} =")) {
                out.push_str(&format!("{key} = \"{value}\"\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        fs::write(&path, out)?;
        Ok(())
    }

    /// SIGKILLs the service processes an agent left behind (it was killed itself).
    pub(crate) fn kill_orphan_services(&self) {
        for a in &self.agents {
            kill_services_of(a);
        }
    }
}

/// SIGKILLs an agent's service processes.
pub(crate) fn kill_services_of(a: &Agent) {
    for pid in service_pids(a) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// An agent's running service processes, found by their pidfiles and checked to be this host's
/// test service.
pub fn service_pids(a: &Agent) -> Vec<Pid> {
    let mut pidfiles = Vec::new();
    find_named(&a.state_dir, "pid", 4, &mut pidfiles);
    pidfiles
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok()?.trim().parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains("rollgate-testsvc")
                && cmdline.contains(&format!("--port {}", a.service_port))
        })
        .map(Pid::from_raw)
        .collect()
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() || self.failed.load(Ordering::Relaxed) {
            eprintln!("---- test failed ----");
            self.dump_logs();
        }
        if let Some(s) = self.supervisor.as_mut() {
            s.shutdown();
        }
        // Seen before the harness stops everything; the test fails after the clean-up.
        let failing = std::thread::panicking() || self.failed.load(Ordering::Relaxed);
        let unplanned = if failing {
            Vec::new()
        } else {
            self.unplanned_exits()
        };
        for a in &mut self.agents {
            a.proc.signal(Signal::SIGCONT);
            a.proc.stop(Duration::from_secs(3));
        }
        self.kill_orphan_services();
        for c in &self.coordinators {
            c.signal(Signal::SIGCONT);
            c.kill9();
        }
        self.etcd.proc.kill9();
        // Namespaces go after every process in them.
        drop(self.net.take());
        self.fail_on_unplanned_exits(unplanned);
        if std::env::var_os("KEEP_TEST_DIRS").is_some() {
            if let Some(guard) = self.dir_guard.take() {
                eprintln!("keeping {}", guard.keep().display());
            }
        }
    }
}

/// `cp -a from to`.
pub(crate) fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .context("cannot run cp")?;
    if !out.status.success() {
        bail!(
            "cp -a {} {} failed: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub(crate) fn find_named(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && depth > 0 {
            find_named(&p, name, depth - 1, out);
        } else if ft.is_file() && e.file_name() == name {
            out.push(p);
        }
    }
}

impl Fleet {
    /// Makes replica `i` the one control calls and the CLI try first.
    pub fn prefer(&self, i: usize) {
        self.preferred
            .store(i, std::sync::atomic::Ordering::Relaxed);
    }
}
