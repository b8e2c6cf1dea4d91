//! The independent observer: polls every host's service directly and records the worst
//! number of hosts unavailable at once.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;

use crate::*;

/// How a settled rollout ended, for tests that check its phase and why its hosts failed.
/// Shown as "failed host-1: why | host-2: why".
#[derive(Debug, Clone)]
pub struct Ending {
    /// The phase it settled in.
    pub phase: pb::Phase,
    /// Its hosts' reasons, joined with " | ".
    pub reasons: String,
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.phase.word(), self.reasons)
    }
}

/// A one-line summary of a status, for wait messages.
pub fn brief(s: &pb::RolloutStatus) -> String {
    format!(
        "phase {} blocked_by {:?} unavailable {}/{} hosts {:?}",
        s.phase().word(),
        s.blocked_by,
        s.unavailable,
        s.max_unavailable,
        s.hosts
            .iter()
            .map(|h| format!(
                "{}:{}{}",
                h.host_id,
                h.state().word(),
                match h.step() {
                    pb::Step::Unspecified => String::new(),
                    step => format!("/{}", step.word()),
                }
            ))
            .collect::<Vec<_>>()
    )
}

/// Minimal HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let addr: SocketAddr = addr.parse()?;
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {buf:?}"))?;
    let body = buf
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((status, body))
}

/// The version a service on 127.0.0.1:`port` reports, if it is up and healthy.
pub fn service_version(port: u16) -> Option<String> {
    service_version_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// The version the service at `addr` reports, if it is up and healthy.
pub fn service_version_at(addr: SocketAddr) -> Option<String> {
    service_answer_at(addr).ok()
}

/// The version the service at `addr` reports, or why not: `Err(true)` when nothing listens
/// (the connection was refused: the process is down or restarting), `Err(false)` for any other
/// failure (unhealthy, or too slow to answer on a loaded machine).
pub fn service_answer_at(addr: SocketAddr) -> Result<String, bool> {
    match http_get(&addr.to_string(), "/health") {
        Ok((200, body)) => body.strip_prefix("ok ").map(str::to_string).ok_or(false),
        Ok(_) => Err(false),
        Err(e) => Err(e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)),
    }
}

/// One poll of a service, for an observer that counts only definite evidence
/// ([`Observer::definite_only`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Answered healthy with this version.
    Serving(String),
    /// Definitely not serving: refused (`true`: nothing listens), or answered but not healthy,
    /// or reset mid-answer (the process went away).
    Down(bool),
    /// No answer in time: on a loaded machine this says more about the observer than the
    /// service, so it changes nothing.
    NoAnswer,
}

/// Polls the service at `addr` once (see [`Poll`]).
pub fn poll_service(addr: SocketAddr) -> Poll {
    use std::io::ErrorKind;
    match http_get(&addr.to_string(), "/health") {
        Ok((200, body)) => match body.strip_prefix("ok ") {
            Some(v) => Poll::Serving(v.to_string()),
            None => Poll::Down(false),
        },
        Ok(_) => Poll::Down(false),
        Err(e) => match e.downcast_ref::<std::io::Error>().map(|e| e.kind()) {
            Some(ErrorKind::ConnectionRefused) => Poll::Down(true),
            Some(ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => Poll::Down(false),
            _ => Poll::NoAnswer,
        },
    }
}

/// Shared state of an observer's polling threads.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Per host: its service is down right now.
    down: Vec<bool>,
    /// Per host: the test says it is unreachable (counts as down whatever the service says).
    forced: Vec<bool>,
    max: usize,
    worst: Vec<String>,
    max_per_group: BTreeMap<String, usize>,
    worst_per_group: BTreeMap<String, Vec<String>>,
    versions: Vec<Vec<String>>,
    /// Per host: when its service stopped answering (while it is down), and whether a
    /// connection was refused since.
    down_since: Vec<Option<(std::time::Instant, bool)>>,
    /// Every outage seen.
    outages: Vec<Outage>,
}

/// A time a host's service did not answer healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub host: String,
    /// When it began, since the observer started.
    pub began: Duration,
    pub lasted: Duration,
    /// Nothing listened at some point (the process was down or restarting), as opposed to
    /// answers that were unhealthy or late.
    pub refused: bool,
}

impl Seen {
    /// Records host `i` answering (`down = false`) or not at `now`, keeping its outages.
    fn poll(&mut self, i: usize, answer: Result<(), bool>, name: &str, start: std::time::Instant) {
        let now = std::time::Instant::now();
        match (self.down_since[i], answer) {
            (None, Err(refused)) => self.down_since[i] = Some((now, refused)),
            (Some((since, r)), Err(refused)) => self.down_since[i] = Some((since, r || refused)),
            (Some((since, refused)), Ok(())) => {
                self.down_since[i] = None;
                self.outages.push(Outage {
                    host: name.to_string(),
                    began: since - start,
                    lasted: now - since,
                    refused,
                });
            }
            (None, Ok(())) => {}
        }
        self.down[i] = answer.is_err();
    }

    pub(crate) fn record(&mut self, names: &[String], groups: &[Option<String>]) {
        let is_down = |j: usize| self.down[j] || self.forced[j];
        let now: Vec<usize> = (0..names.len()).filter(|&j| is_down(j)).collect();
        if now.len() > self.max {
            self.max = now.len();
            self.worst = now.iter().map(|&j| names[j].clone()).collect();
        }
        let mut per_group: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &j in &now {
            if let Some(g) = &groups[j] {
                per_group.entry(g.as_str()).or_default().push(j);
            }
        }
        for (g, members) in per_group {
            let best = self.max_per_group.entry(g.to_string()).or_insert(0);
            if members.len() > *best {
                *best = members.len();
                self.worst_per_group.insert(
                    g.to_string(),
                    members.iter().map(|&j| names[j].clone()).collect(),
                );
            }
        }
    }
}

/// Polls every host's service directly and keeps the worst count of hosts unavailable at once
/// (fleet-wide, and per group when started with groups).
#[derive(Debug)]
pub struct Observer {
    pub(crate) stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
    names: Vec<String>,
    groups: Vec<Option<String>>,
    start: std::time::Instant,
}

/// What an observer saw.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Most hosts unavailable at one instant.
    pub max_unavailable: usize,
    /// Which hosts they were, at the first time that maximum was reached.
    pub worst_set: Vec<String>,
    /// Per group (observers started with groups): most of its hosts unavailable at once.
    /// Groups never seen with a host down are listed with 0.
    pub max_per_group: BTreeMap<String, usize>,
    /// Per group: which hosts, the first time that group's maximum was reached.
    pub worst_per_group: BTreeMap<String, Vec<String>>,
    /// Per host, the distinct versions seen serving healthy, in order.
    pub versions: Vec<(String, Vec<String>)>,
    /// Every outage (one still going when the observer stopped counts up to then).
    pub outages: Vec<Outage>,
}

impl Observation {
    /// Prints the worst fleet-wide count (and per group, if kept) against the budgets.
    pub fn print(&self, budget: usize, per_group: Option<usize>) {
        println!(
            "observer: worst {} hosts unavailable at once (budget {budget}): {:?}",
            self.max_unavailable, self.worst_set
        );
        if let Some(g) = per_group {
            for (group, max) in &self.max_per_group {
                println!(
                    "observer: {group}: worst {max} unavailable at once (budget {g}): {:?}",
                    self.worst_per_group.get(group).cloned().unwrap_or_default()
                );
            }
        }
    }
}

impl Observer {
    /// Starts one polling thread per (host, service address).
    pub fn start(hosts: Vec<(String, SocketAddr)>) -> Self {
        Self::start_inner(hosts.into_iter().map(|(h, a)| (h, a, None)).collect())
    }

    /// Like [`Observer::start`], also keeping the worst count per group (e.g. `site`).
    pub fn start_grouped(hosts: Vec<(String, SocketAddr, String)>) -> Self {
        Self::start_inner(hosts.into_iter().map(|(h, a, g)| (h, a, Some(g))).collect())
    }

    pub(crate) fn start_inner(hosts: Vec<(String, SocketAddr, Option<String>)>) -> Self {
        Self::start_with(hosts, false)
    }

    /// Like [`Observer::start_grouped`], counting only definite evidence: a poll that gets no
    /// answer in time (the observer starved on a loaded machine) leaves the host as it was;
    /// refused, unhealthy and reset answers count. The nemesis suite uses it: its fleet of 21
    /// namespaces and 6 etcd and coordinator processes loads a 2-core machine.
    pub fn definite_only(hosts: Vec<(String, SocketAddr, String)>) -> Self {
        let hosts = hosts.into_iter().map(|(h, a, g)| (h, a, Some(g))).collect();
        Self::start_with(hosts, true)
    }

    fn start_with(hosts: Vec<(String, SocketAddr, Option<String>)>, definite: bool) -> Self {
        let n = hosts.len();
        let stop = Arc::new(AtomicBool::new(false));
        let names: Vec<String> = hosts.iter().map(|(h, _, _)| h.clone()).collect();
        let groups: Vec<Option<String>> = hosts.iter().map(|(_, _, g)| g.clone()).collect();
        let mut seen = Seen {
            down: vec![false; n],
            forced: vec![false; n],
            versions: vec![Vec::new(); n],
            down_since: vec![None; n],
            ..Seen::default()
        };
        for g in groups.iter().flatten() {
            seen.max_per_group.insert(g.clone(), 0);
        }
        let seen = Arc::new(Mutex::new(seen));
        let start = std::time::Instant::now();
        let threads = hosts
            .into_iter()
            .enumerate()
            .map(|(i, (_, addr, _))| {
                let (stop, seen, names, groups) =
                    (stop.clone(), seen.clone(), names.clone(), groups.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match definite {
                            false => service_answer_at(addr),
                            true => match poll_service(addr) {
                                Poll::Serving(v) => Ok(v),
                                Poll::Down(refused) => Err(refused),
                                Poll::NoAnswer => {
                                    std::thread::sleep(OBSERVE_EVERY);
                                    continue;
                                }
                            },
                        };
                        let v = answer.clone().ok();
                        {
                            let mut s = lock(&seen);
                            s.poll(i, answer.map(|_| ()), &names[i], start);
                            s.record(&names, &groups);
                            if let Some(v) = v {
                                if s.versions[i].last() != Some(&v) {
                                    s.versions[i].push(v);
                                }
                            }
                        }
                        std::thread::sleep(OBSERVE_EVERY);
                    }
                })
            })
            .collect();
        Observer {
            stop,
            threads,
            seen,
            names,
            groups,
            start,
        }
    }

    /// Counts `host` as unavailable (or stops doing so) whatever its service answers: for a
    /// host the coordinator cannot reach (its agent frozen or cut off), which is unavailable
    /// by definition even while its service still answers the observer.
    pub fn count_as_down(&self, host: &str, down: bool) {
        let i = self
            .names
            .iter()
            .position(|n| n == host)
            .expect("observed host");
        let mut s = lock(&self.seen);
        s.forced[i] = down;
        s.record(&self.names, &self.groups);
    }

    /// The worst fleet-wide count so far.
    pub fn max_so_far(&self) -> usize {
        lock(&self.seen).max
    }

    /// Stops polling and reports.
    pub fn finish(self) -> Observation {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let mut s = lock(&self.seen);
        for i in 0..self.names.len() {
            let name = self.names[i].clone();
            s.poll(i, Ok(()), &name, self.start);
        }
        Observation {
            max_unavailable: s.max,
            worst_set: s.worst.clone(),
            max_per_group: s.max_per_group.clone(),
            worst_per_group: s.worst_per_group.clone(),
            versions: self.names.iter().cloned().zip(s.versions.clone()).collect(),
            outages: s.outages.clone(),
        }
    }
}
