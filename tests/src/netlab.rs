//! Network namespaces: every agent (and so its service) in its own namespace on a bridge.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::*;

// ------------------------------------------------------------------------------------------
// Network namespaces
// ------------------------------------------------------------------------------------------

/// Serializes subnet picking and creation within this process.
pub(crate) static NET_LOCK: Mutex<()> = Mutex::new(());
/// Numbers hosts across every fleet of this process, so names never clash.
pub(crate) static NET_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip ARGS`; an error carries its stderr.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_out(args).map(|_| ())
}

pub(crate) fn ip_out(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One host's namespace.
#[derive(Debug, Clone)]
pub struct NetHost {
    /// Namespace name, `rg-<pid>-<n>`.
    pub ns: String,
    /// The root-namespace end of its veth pair (on the bridge); down = cut.
    pub veth: String,
    /// Its address (inside the namespace, on `eth0`).
    pub addr: Ipv4Addr,
}

/// A bridge in the root namespace with address 10.213.X.1/24 (X picked free) and one network
/// namespace per host attached to it by a veth pair. Everything is removed on drop (after
/// killing whatever still runs inside the namespaces: processes this harness started).
#[derive(Debug)]
pub struct NetLab {
    /// The bridge's name.
    pub bridge: String,
    /// The bridge's address: coordinators listen here.
    pub gateway: Ipv4Addr,
    /// The hosts, in fleet order.
    pub hosts: Vec<NetHost>,
    bridge_made: bool,
}

impl NetLab {
    /// Creates the bridge and `n` namespaces.
    pub fn create(n: usize) -> anyhow::Result<Self> {
        if let Err(e) = Command::new("ip").arg("-V").output() {
            bail!("netns mode needs iproute2's `ip` (apt-get install iproute2): {e}");
        }
        assert!(n <= 200, "netns mode takes up to 200 hosts");
        let _guard = lock(&NET_LOCK);
        sweep_stale_netns();
        let pid = std::process::id();
        let x = pick_subnet(pid)?;
        let seq = NET_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut lab = NetLab {
            bridge: format!("rgbr{pid:x}-{seq}"),
            gateway: Ipv4Addr::new(10, 213, x, 1),
            hosts: Vec::new(),
            bridge_made: false,
        };
        ip(&["link", "add", &lab.bridge, "type", "bridge"]).context(
            "cannot create a bridge for netns mode: it needs root (CAP_NET_ADMIN); CI runs as root",
        )?;
        lab.bridge_made = true;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.gateway),
            "dev",
            &lab.bridge,
        ])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for i in 0..n {
            let seq = NET_SEQ.fetch_add(1, Ordering::Relaxed);
            let host = NetHost {
                ns: format!("rg-{pid}-{seq}"),
                veth: format!("rgv{pid:x}-{seq}"),
                addr: Ipv4Addr::new(10, 213, x, 11 + i as u8),
            };
            ip(&["netns", "add", &host.ns]).with_context(|| {
                format!(
                    "cannot create network namespace {}: netns mode needs root; CI runs as root",
                    host.ns
                )
            })?;
            lab.hosts.push(host.clone());
            ip(&[
                "link", "add", &host.veth, "type", "veth", "peer", "name", "eth0", "netns",
                &host.ns,
            ])?;
            ip(&["link", "set", &host.veth, "master", &lab.bridge, "up"])?;
            ip(&[
                "-n",
                &host.ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &host.ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host.ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for h in &self.hosts {
            if let Ok(pids) = ip_out(&["netns", "pids", &h.ns]) {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let _ = ip(&["netns", "del", &h.ns]);
            let _ = ip(&["link", "del", &h.veth]);
        }
        if self.bridge_made {
            let _ = ip(&["link", "del", &self.bridge]);
        }
    }
}

/// Picks X for 10.213.X.0/24 that no address on this machine uses yet.
pub(crate) fn pick_subnet(pid: u32) -> anyhow::Result<u8> {
    let addrs = ip_out(&["-o", "-4", "addr", "show"])?;
    let used: BTreeSet<u8> = addrs
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("10.213."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    let start = (pid % 240) as usize;
    (0..240)
        .map(|k| ((start + k) % 240 + 10) as u8)
        .find(|x| !used.contains(x))
        .context("no free 10.213.X.0/24 subnet for netns mode")
}

/// Removes namespaces, veths and bridges left by test processes that no longer exist (killed
/// before they could clean up). Only names of this harness's exact shape are touched.
pub(crate) fn sweep_stale_netns() {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(list) = ip_out(&["netns", "list"]) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let parts: Vec<&str> = name.split('-').collect();
            if let ["rg", pid, seq] = parts.as_slice() {
                if let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), seq.parse::<u32>()) {
                    if !alive(pid) {
                        let _ = ip(&["netns", "del", name]);
                    }
                }
            }
        }
    }
    if let Ok(links) = ip_out(&["-o", "link", "show"]) {
        for line in links.lines() {
            // "12: rgv1a2b-3@if2: <...>" -> "rgv1a2b-3"
            let Some(name) = line
                .split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n))
            else {
                continue;
            };
            let hexpid = name
                .strip_prefix("rgbr")
                .or_else(|| name.strip_prefix("rgv"))
                .and_then(|rest| rest.split_once('-'))
                .filter(|(_, seq)| seq.parse::<u32>().is_ok())
                .and_then(|(h, _)| u32::from_str_radix(h, 16).ok());
            if let Some(pid) = hexpid {
                if !alive(pid) {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
    }
}
