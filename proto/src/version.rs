//! The agent-coordinator protocol's version, carried in `Hello` and `Welcome`, so that a fleet
//! in the middle of an upgrade (agents upgraded by a rollout, coordinators one by one) knows
//! what its peers speak.
//!
//! | version | what it added |
//! |---|---|
//! | 1 | everything before the field existed (peers that send 0) |
//! | 2 | `OUTCOME_STALE_TOKEN` with `OrderResult.highest_token`; the version fields |
//!
//! The rule: each side accepts a peer whose version is at least its `MIN_*` constant, older or
//! newer than itself; what a newer message adds is ignored by an older peer without harm
//! (proto3: an unknown enum value reads as `UNSPECIFIED`, which the coordinator treats as a
//! failed order, as before). A peer below the minimum is refused with a message that says
//! which side to upgrade.

/// The version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest agent protocol a coordinator of this build accepts.
pub const MIN_AGENT_PROTOCOL: u32 = 1;
/// The oldest coordinator protocol an agent of this build accepts.
pub const MIN_COORDINATOR_PROTOCOL: u32 = 1;

/// The version a peer speaks, from the field it sent (0: a peer from before the field).
pub fn peer_version(field: u32) -> u32 {
    field.max(1)
}

/// What to do with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compat {
    /// The same version.
    Same,
    /// Older but supported: work together; newer messages are ignored by it.
    Older,
    /// Newer: work together; it knows what we lack.
    Newer,
    /// Older than `min`: refuse.
    TooOld,
}

/// Decides about a peer speaking `peer` (the field as sent), given the oldest version `min`
/// this side accepts.
pub fn compat(peer: u32, min: u32) -> Compat {
    let v = peer_version(peer);
    match v {
        _ if v < min => Compat::TooOld,
        _ if v < PROTOCOL_VERSION => Compat::Older,
        _ if v == PROTOCOL_VERSION => Compat::Same,
        _ => Compat::Newer,
    }
}

/// Why a coordinator refuses an agent speaking protocol `agent` (for the agent's log).
pub fn agent_too_old(agent: u32, agent_version: &str) -> String {
    format!(
        "this agent ({agent_version}) speaks protocol {}, and this coordinator needs at least \
         {MIN_AGENT_PROTOCOL}; upgrade the agent (install a newer rollgate-agent on the host), \
         it will connect then",
        peer_version(agent)
    )
}

/// Why an agent gives up on a coordinator speaking protocol `coordinator`.
pub fn coordinator_too_old(coordinator: u32) -> String {
    format!(
        "the coordinator speaks protocol {}, and this agent needs at least \
         {MIN_COORDINATOR_PROTOCOL}; upgrade the coordinators first (an agent upgrade rollout \
         must come after them); retrying",
        peer_version(coordinator)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_one_version_apart_work_together() {
        // (field sent, minimum accepted, decision)
        let table = [
            (0, 1, Compat::Older), // a peer from before the field: protocol 1
            (1, 1, Compat::Older),
            (PROTOCOL_VERSION, 1, Compat::Same),
            (PROTOCOL_VERSION + 1, 1, Compat::Newer),
            (0, 2, Compat::TooOld),
            (1, 2, Compat::TooOld),
            (2, 2, Compat::Same),
        ];
        for (peer, min, want) in table {
            assert_eq!(compat(peer, min), want, "peer {peer}, min {min}");
        }
        assert!(agent_too_old(0, "0.0.9").contains("speaks protocol 1"));
        assert!(coordinator_too_old(1).contains("upgrade the coordinators first"));
    }
}
