//! Carrying faults out on a live fleet, and undoing them.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use super::schedule::{Fault, Replica};
use crate::*;

/// A fault as carried out: the concrete process or link it hit, to undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    KilledAgent(usize),
    PausedAgent(usize),
    CutAgent(usize),
    KilledReplica(usize),
    PausedReplica(usize),
    CutReplica(usize),
    KilledEtcd(usize),
    LostQuorum(usize, usize),
}

/// nftables table that drops a host's traffic to and from the coordinators.
const CUT_TABLE: &str = "rollgate_nemesis_cut";

/// The replica `r` names now: the leader as etcd says (replica 1 while nobody can tell).
fn resolve(fleet: &Fleet, r: Replica) -> usize {
    let leader = fleet.leader().ok().flatten();
    match r {
        Replica::Leader => leader.unwrap_or(0),
        Replica::Follower(n) => {
            let others: Vec<usize> = (0..fleet.coordinators.len())
                .filter(|i| Some(*i) != leader)
                .collect();
            others[n % others.len()]
        }
    }
}

/// Starts `fault`; returns what it hit.
pub fn start(fleet: &mut Fleet, fault: Fault) -> anyhow::Result<Applied> {
    Ok(match fault {
        Fault::KillAgent(a) => {
            fleet.agents[a].proc.kill9();
            Applied::KilledAgent(a)
        }
        Fault::PauseAgent(a) => {
            fleet.agents[a].proc.signal(Signal::SIGSTOP);
            Applied::PausedAgent(a)
        }
        Fault::CutAgent(a) => {
            cut_control(fleet, a)?;
            Applied::CutAgent(a)
        }
        Fault::KillReplica(r) => {
            let i = resolve(fleet, r);
            fleet.coordinators[i].kill9();
            Applied::KilledReplica(i)
        }
        Fault::PauseReplica(r) => {
            let i = resolve(fleet, r);
            fleet.coordinators[i].signal(Signal::SIGSTOP);
            Applied::PausedReplica(i)
        }
        Fault::CutReplicaFromEtcd(r) => {
            let i = resolve(fleet, r);
            fleet.cut_etcd_link(i, Cut::BlackHole);
            Applied::CutReplica(i)
        }
        Fault::KillEtcdMember(m) => {
            fleet.etcd_member(m).proc.kill9();
            Applied::KilledEtcd(m)
        }
        Fault::LoseEtcdQuorum(m, n) => {
            fleet.etcd_member(m).proc.kill9();
            fleet.etcd_member(n).proc.kill9();
            Applied::LostQuorum(m, n)
        }
    })
}

/// Undoes a fault: restarts, continues or heals what it hit.
pub fn end(fleet: &mut Fleet, applied: Applied) -> anyhow::Result<()> {
    match applied {
        Applied::KilledAgent(a) => fleet.agents[a].proc.restart()?,
        Applied::PausedAgent(a) => fleet.agents[a].proc.signal(Signal::SIGCONT),
        Applied::CutAgent(a) => heal_control(fleet, a)?,
        Applied::KilledReplica(i) => fleet.coordinators[i].restart()?,
        Applied::PausedReplica(i) => fleet.coordinators[i].signal(Signal::SIGCONT),
        Applied::CutReplica(i) => fleet.heal_etcd_link(i),
        Applied::KilledEtcd(m) => fleet.etcd_member(m).proc.restart()?,
        Applied::LostQuorum(m, n) => {
            fleet.etcd_member(m).proc.restart()?;
            fleet.etcd_member(n).proc.restart()?;
        }
    }
    Ok(())
}

/// Drops every packet between agent `a`'s namespace and the coordinators' ports (the agent
/// and its downloads), leaving its service reachable to the observer.
fn cut_control(fleet: &Fleet, a: usize) -> anyhow::Result<()> {
    let ports: Vec<String> = fleet
        .coordinators
        .iter()
        .map(|c| c.addr.port().to_string())
        .collect();
    let ports = ports.join(", ");
    let script = format!(
        "table inet {CUT_TABLE} {{\n\
         chain out {{ type filter hook output priority 0; policy accept; tcp dport {{ {ports} }} drop; }}\n\
         chain in {{ type filter hook input priority 0; policy accept; tcp sport {{ {ports} }} drop; }}\n\
         }}\n"
    );
    nft(fleet, a, &script)
}

fn heal_control(fleet: &Fleet, a: usize) -> anyhow::Result<()> {
    nft(fleet, a, &format!("delete table inet {CUT_TABLE}\n"))
}

/// Runs an nft script in agent `a`'s network namespace.
fn nft(fleet: &Fleet, a: usize, script: &str) -> anyhow::Result<()> {
    let ns = fleet.net_host(&fleet.agents[a].id)?.ns.clone();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (apt-get install nftables)")?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
