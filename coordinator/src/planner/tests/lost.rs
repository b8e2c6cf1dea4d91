//! Lost hosts (a target whose agent or replica went away mid-update) and regressions after a
//! commit.
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

/// A done target whose agent reports that this release regressed after its commit
/// (`watch_after_commit`) is a failure of the release, in the agent's words; the same report
/// about another release (or a recovered one) is not.
#[test]
fn regression_after_commit_is_a_failure_of_the_release() {
    let mut w = world(3, strategy(Budget::Count(1)));
    w.set("h1", HostState::Done);
    let regress = |w: &mut World, version: &str, regressed: bool| {
        let s = w.fleet.hosts.get_mut("h1").expect("h1");
        let svc = s.services.get_mut("svc").expect("svc");
        svc.version = version.into();
        svc.health = Health::Unhealthy;
        svc.detail = "regressed after commit: exec probe failed".into();
        svc.regressed = regressed;
    };
    regress(&mut w, "1", true);
    assert!(w.plan().failures.is_empty(), "another release regressed");
    regress(&mut w, "2", false);
    assert!(
        w.plan().failures.is_empty(),
        "unhealthy is not a regression"
    );
    regress(&mut w, "2", true);
    let p = w.plan();
    assert_eq!(p.failures, vec!["h1".to_string()]);
    let (phase, why) = p.phase.expect("halted");
    assert_eq!(phase, Phase::Failed);
    assert!(
        why.contains("first: h1: regressed after commit: exec probe failed"),
        "{why}"
    );
}

/// A lost target that stays silent becomes a failure once its `healthy_deadline` and its
/// `lost_grace` have passed (issue 14): not before, the planner wakes up for it, the reason
/// says it is lost and names both, and it keeps its share of the budget (S2: no other host
/// starts).
#[test]
fn a_host_lost_past_its_deadline_and_grace_is_a_failure_that_keeps_its_share() {
    let mut st = strategy(Budget::Count(1));
    st.healthy_deadline = std::time::Duration::from_secs(10);
    st.lost_grace = std::time::Duration::from_secs(7);
    let mut w = world(3, st);
    w.hold("h1");
    w.fleet.connected.remove("h1");
    let granted = w.steps["h1"].granted_at_ms;
    let p = w.plan();
    assert!(p.failures.is_empty(), "{p:?}");
    assert_eq!(p.wake_at_ms, Some(granted + 17_000), "{p:?}");
    w.now = granted + 16_999;
    assert!(w.plan().failures.is_empty(), "early");
    w.now = granted + 17_000;
    let p = w.plan();
    assert_eq!(p.failures, vec!["h1".to_string()]);
    assert!(p.grants.is_empty(), "S2: {p:?}");
    let (phase, why) = p.phase.expect("halted");
    assert_eq!(phase, Phase::Failed);
    assert!(why.contains("first: h1: lost mid-update"), "{why}");
    assert!(why.contains("healthy_deadline (10s)"), "{why}");
    assert!(why.contains("lost_grace (7s)"), "{why}");
}

/// With a `progress_deadline` shorter than `healthy_deadline` + `lost_grace`, a silent lost
/// host stalls the rollout first: it fails as stalled, naming the lost host, and the host is
/// not counted against `max_failures` (being lost is no verdict on the release yet).
#[test]
fn a_short_progress_deadline_ends_a_lost_host_stall_before_its_grace() {
    let mut st = strategy(Budget::Count(1));
    st.healthy_deadline = std::time::Duration::from_secs(10);
    st.lost_grace = std::time::Duration::from_secs(600);
    st.progress_deadline = std::time::Duration::from_secs(60);
    let mut w = world(3, st);
    w.hold("h1");
    w.fleet.connected.remove("h1");
    w.now += 60_000;
    let p = w.plan();
    assert!(p.failures.is_empty(), "{p:?}");
    let (phase, why) = p.phase.expect("stalled");
    assert_eq!(phase, Phase::Failed);
    assert!(
        why.contains("progress_deadline") && why.contains("lost mid-update") && why.contains("h1"),
        "{why}"
    );
    assert!(!why.contains("max_failures"), "{why}");
}
