//! A 3-member (or N-member) etcd cluster on loopback, for faults that a single etcd cannot
//! show: one member down (the cluster goes on), two down (quorum lost: every write waits).

use std::path::Path;
use std::time::Duration;

use anyhow::bail;

use crate::etcd::Member;
use crate::*;

/// The members of one etcd cluster; member `k` is `etcd-k` (1-based) with its data dir
/// `<dir>/etcd-k-data` and its log `<dir>/etcd-k.log`.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in order.
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until every one is healthy (a leader is elected).
    pub fn start(dir: &Path, n: usize) -> anyhow::Result<Self> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = (1..=n)
            .map(|k| format!("etcd-{k}=http://127.0.0.1:{}", ports[k - 1].1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (k, (client, peer)) in (1..=n).zip(ports) {
            let member = Member {
                name: format!("etcd-{k}"),
                data: dir.join(format!("etcd-{k}-data")),
                log: dir.join(format!("etcd-{k}.log")),
                client,
                peer,
                cluster: cluster.clone(),
            };
            let mut etcd = Etcd::launch_member(&member, None)?;
            etcd.proc.name = member.name;
            members.push(etcd);
        }
        for m in &members {
            m.wait_healthy()?;
        }
        Ok(EtcdCluster { members })
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.endpoint.clone()).collect()
    }

    /// kill -9 of member `i` (0-based).
    pub fn kill(&mut self, i: usize) {
        self.members[i].proc.kill9();
    }

    /// Starts member `i` again on its data dir and ports (it rejoins the cluster).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.members[i].proc.restart()
    }

    /// Waits until every member answers healthy (quorum and a leader).
    pub fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        for m in &self.members {
            while let Err(e) = m.wait_healthy() {
                if std::time::Instant::now() > deadline {
                    bail!("etcd cluster not healthy after {timeout:?}: {e:#}");
                }
            }
        }
        Ok(())
    }
}
