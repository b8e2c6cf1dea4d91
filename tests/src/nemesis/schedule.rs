//! The fault schedule: a pure function of the seed and the shape of the fleet, so a failing
//! seed replays the same faults at the same offsets.

use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which replica a replica fault hits, resolved when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replica {
    /// Whoever leads at that moment.
    Leader,
    /// A replica that does not lead (the n-th of them, modulo how many there are).
    Follower(usize),
}

/// One fault. Indices are 0-based into the fleet's agents, replicas or etcd members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of an agent; it is started again when the fault ends.
    KillAgent(usize),
    /// SIGSTOP of an agent; SIGCONT when the fault ends.
    PauseAgent(usize),
    /// The agent's host drops every packet to and from the coordinators (its service stays
    /// reachable); healed when the fault ends.
    CutAgent(usize),
    /// kill -9 of a replica; started again when the fault ends.
    KillReplica(Replica),
    /// SIGSTOP of a replica (past its lease TTL it loses its lease and leadership).
    PauseReplica(Replica),
    /// The replica's links to every etcd member black-holed.
    CutReplicaFromEtcd(Replica),
    /// kill -9 of one etcd member (the cluster keeps quorum).
    KillEtcdMember(usize),
    /// kill -9 of two etcd members: quorum lost, every write waits.
    LoseEtcdQuorum(usize, usize),
}

/// What part of the system a fault hits; at most one fault per part of the control plane runs
/// at a time (two agents may be hit at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Agent,
    Replica,
    Etcd,
}

impl Fault {
    fn part(self) -> Part {
        match self {
            Fault::KillAgent(_) | Fault::PauseAgent(_) | Fault::CutAgent(_) => Part::Agent,
            Fault::KillReplica(_) | Fault::PauseReplica(_) | Fault::CutReplicaFromEtcd(_) => {
                Part::Replica
            }
            Fault::KillEtcdMember(_) | Fault::LoseEtcdQuorum(..) => Part::Etcd,
        }
    }

    /// The agent it hits, if any.
    pub fn agent(self) -> Option<usize> {
        match self {
            Fault::KillAgent(a) | Fault::PauseAgent(a) | Fault::CutAgent(a) => Some(a),
            _ => None,
        }
    }
}

/// One scheduled fault: starts `at` after the rollout starts, lasts `hold`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Offset from the start of the faults.
    pub at: Duration,
    /// How long it lasts.
    pub hold: Duration,
    /// What it is.
    pub fault: Fault,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "+{:>5.1}s for {:.1}s: {:?}",
            self.at.as_secs_f64(),
            self.hold.as_secs_f64(),
            self.fault
        )
    }
}

/// The shape of the fleet the schedule is drawn for.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Agents.
    pub agents: usize,
    /// etcd members.
    pub etcd_members: usize,
    /// How long faults are started for.
    pub window: Duration,
}

/// The faults of one seed, in start order. Each fault starts 0.3–1.5 s after the previous one
/// and holds 0.2–3.5 s (past the 2 s lease TTL of the test replicas about a third of the time);
/// a fault is skipped when one of the same part of the control plane (replica, etcd) or on the
/// same agent would still be running, or when two agents are already hit.
pub fn generate(seed: u64, shape: Shape) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut steps: Vec<Step> = Vec::new();
    let mut at = Duration::from_millis(rng.gen_range(200..1_000));
    while at < shape.window {
        let fault = draw(&mut rng, shape);
        let hold = Duration::from_millis(rng.gen_range(200..3_500));
        let running: Vec<&Step> = steps.iter().filter(|s| s.at + s.hold > at).collect();
        let clash = running.iter().any(|s| {
            let same_part = s.fault.part() == fault.part() && fault.part() != Part::Agent;
            let same_agent = fault.agent().is_some() && s.fault.agent() == fault.agent();
            same_part || same_agent
        });
        let agents_hit = running.iter().filter(|s| s.fault.agent().is_some()).count();
        let too_many_agents = fault.part() == Part::Agent && agents_hit >= 2;
        if !clash && !too_many_agents {
            steps.push(Step { at, hold, fault });
        }
        at += Duration::from_millis(rng.gen_range(300..1_500));
    }
    steps
}

fn draw(rng: &mut ChaCha8Rng, shape: Shape) -> Fault {
    let agent = rng.gen_range(0..shape.agents);
    let replica = match rng.gen_range(0..3) {
        0 => Replica::Leader,
        n => Replica::Follower(n - 1),
    };
    let member = rng.gen_range(0..shape.etcd_members);
    match rng.gen_range(0..100) {
        0..=14 => Fault::KillAgent(agent),
        15..=29 => Fault::PauseAgent(agent),
        30..=44 => Fault::CutAgent(agent),
        45..=56 => Fault::KillReplica(replica),
        57..=68 => Fault::PauseReplica(replica),
        69..=78 => Fault::CutReplicaFromEtcd(replica),
        79..=90 => Fault::KillEtcdMember(member),
        _ => Fault::LoseEtcdQuorum(member, (member + 1) % shape.etcd_members),
    }
}

/// What a release does in this seed: healthy everywhere, or failing on some hosts (the bad
/// release the rollout must stop on).
pub fn bad_hosts(seed: u64, agents: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xbad_5eed);
    match rng.gen_range(0..3) {
        0 => {
            let n = rng.gen_range(1..=3);
            let mut hosts: Vec<usize> = (0..n).map(|_| rng.gen_range(1..agents)).collect();
            hosts.sort_unstable();
            hosts.dedup();
            hosts
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: Shape = Shape {
        agents: 21,
        etcd_members: 3,
        window: Duration::from_secs(20),
    };

    #[test]
    fn same_seed_same_schedule_and_parts_never_overlap() {
        for seed in 0..200 {
            let a = generate(seed, SHAPE);
            assert_eq!(a, generate(seed, SHAPE), "seed {seed}");
            assert!(!a.is_empty(), "seed {seed} drew no fault");
            for (i, s) in a.iter().enumerate() {
                for t in &a[..i] {
                    if t.at + t.hold > s.at && s.fault.part() != Part::Agent {
                        assert_ne!(t.fault.part(), s.fault.part(), "seed {seed}: {t} / {s}");
                    }
                }
            }
        }
        assert_ne!(generate(1, SHAPE), generate(2, SHAPE));
    }
}
