//! Lost hosts: a target whose agent or replica went away mid-update.
use super::*;

/// An agent that dies mid-update while its replica lives leaves the slot alive: the host is
/// lost all the same (it shows lost, not "updating", and the stall names it so), and an agent
/// that had said it was rolling back is still the release's failure.
#[test]
fn host_whose_agent_went_away_mid_update_is_lost() {
    let mut w = world(3, strategy(Budget::Count(1)));
    w.hold("h1");
    w.fleet.connected.remove("h1");
    let p = w.plan();
    assert!(p.grants.is_empty(), "S2: {p:?}");
    assert!(p.blocked_by.contains("lost mid-update"), "{}", p.blocked_by);
    assert!(p.failures.is_empty(), "silence is not a failure: {p:?}");
    w.steps.get_mut("h1").expect("h1").step = AgentStep::RollingBack;
    assert_eq!(w.plan().failures, vec!["h1".to_string()]);
}
