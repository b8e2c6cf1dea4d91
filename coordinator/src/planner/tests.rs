//! Planner tables.
use super::*;
use crate::store::{
    AgentStep, Health, HostRecord, ServiceState, SlotRecord, WaveDone, WaveGate, MAX_INTERRUPTIONS,
};
use rollgate_proto::spec::{
    Budget, FailureBudget, Gate, OnFailure, ReleaseSpec, RolloutSpec, Strategy, TargetSpec,
};
use std::time::Duration;

mod deadline;
mod gates;
mod lost;

const NOW: i64 = 1_000_000;

struct World {
    rollout: RolloutRecord,
    steps: BTreeMap<String, HostStep>,
    staged: BTreeMap<String, StageRecord>,
    fleet: FleetView,
    now: i64,
    /// Observed::progress_seen_ms (the leader's own time of the latest progress).
    progress_seen: Option<i64>,
}

fn world(n: usize, strategy: Strategy) -> World {
    let targets: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
    let budget = strategy.max_unavailable.resolve(n);
    let spec = RolloutSpec {
        service: "svc".into(),
        release: ReleaseSpec {
            version: "2".into(),
            source: "store:".into(),
            sha256: "a".repeat(64),
            size: 1,
            file: None,
            image: None,
            signature: None,
            signature_file: None,
        },
        targets: TargetSpec::default(),
        strategy,
    };
    let mut fleet = FleetView::default();
    for (i, h) in targets.iter().enumerate() {
        let mut rec = HostRecord {
            host_id: h.clone(),
            ..HostRecord::default()
        };
        rec.labels.insert("site".into(), format!("s{}", i % 3));
        rec.services.insert(
            "svc".into(),
            ServiceState {
                version: "1".into(),
                health: Health::Healthy,
                ..ServiceState::default()
            },
        );
        fleet.hosts.insert(h.clone(), rec);
        fleet.connected.insert(h.clone(), 7);
    }
    World {
        rollout: RolloutRecord {
            id: "r".into(),
            max_unavailable: budget,
            spec,
            targets,
            phase: Phase::Rolling,
            reason: String::new(),
            created_at_ms: NOW - 1000,
            updated_at_ms: NOW - 1000,
            wave: 0,
            tolerated_failures: 0,
            previous: None,
            rollback_of: None,
            rolled_back_by: None,
            groups: BTreeMap::new(),
            group_budgets: BTreeMap::new(),
            wave_done: None,
            created_by: None,
            operator: None,
        },
        steps: BTreeMap::new(),
        staged: BTreeMap::new(),
        fleet,
        now: NOW,
        progress_seen: None,
    }
}

fn strategy(budget: Budget) -> Strategy {
    Strategy {
        max_unavailable: budget,
        ..Strategy::default()
    }
}

/// The planner's answer as the tables read it: the decision and the report's words, in the
/// fields the tables were written against (`explain` makes the words).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Outcome {
    /// Decision::Grant's hosts.
    grants: Vec<String>,
    /// Decision::SetPhase, its reason in words.
    phase: Option<(Phase, String)>,
    /// Decision::OpenWave.
    advance_wave: Option<u32>,
    /// Decision::StartRollback, its reason in words.
    rollback: Option<String>,
    /// Decision::StampWave: the wave.
    stamp_wave: Option<u32>,
    /// Decision::StampWave: what opens its gate.
    stamp_gate: Option<WaveGate>,
    /// Decision::WaitUntil, or Grant's recheck time.
    wake_at_ms: Option<i64>,
    unavailable: Vec<(String, Unavailable)>,
    groups: Vec<GroupUse>,
    failures: Vec<String>,
    blocked_by: String,
    gate: String,
}

impl From<Plan> for Outcome {
    fn from(p: Plan) -> Outcome {
        let mut out = Outcome {
            blocked_by: explain::blocked_by(&p.report),
            gate: explain::gate(&p.report),
            unavailable: p.report.unavailable,
            groups: p.report.groups,
            failures: p.report.failures,
            ..Outcome::default()
        };
        match p.decision {
            Decision::Wait => {}
            Decision::WaitUntil(at) => out.wake_at_ms = Some(at),
            Decision::Grant {
                hosts,
                recheck_at_ms,
            } => {
                out.grants = hosts;
                out.wake_at_ms = recheck_at_ms;
            }
            Decision::StampWave(s) => {
                out.stamp_wave = Some(s.wave);
                out.stamp_gate = Some(s.gate);
            }
            Decision::OpenWave(w) => out.advance_wave = Some(w),
            Decision::SetPhase(phase, why) => out.phase = Some((phase, explain::verdict(&why))),
            Decision::StartRollback(why) => out.rollback = Some(explain::verdict(&why)),
        }
        out
    }
}

impl World {
    fn plan(&self) -> Outcome {
        plan(Observed {
            rollout: &self.rollout,
            steps: &self.steps,
            staged: &self.staged,
            fleet: &self.fleet,
            now_ms: self.now,
            progress_seen_ms: self.progress_seen,
        })
        .into()
    }
    fn set(&mut self, h: &str, state: HostState) {
        let step = self.steps.entry(h.into()).or_insert_with(HostStep::pending);
        step.state = state;
        step.updated_at_ms = NOW - 500;
    }
    fn hold(&mut self, h: &str) {
        self.set(h, HostState::Updating);
        let step = self.steps.get_mut(h).expect("step");
        step.token = 9;
        step.granted_at_ms = NOW - 500;
        self.fleet.slots.insert(
            ("svc".into(), h.into()),
            SlotRecord {
                rollout_id: "r".into(),
                token: 9,
                host_id: h.into(),
                service: "svc".into(),
                version: "2".into(),
                source: "store:".into(),
                sha256: String::new(),
                size: 1,
                signature: None,
                rollback: false,
                min_healthy_time_ms: 0,
                healthy_deadline_ms: 1,
                granted_by: "x".into(),
                granted_at_ms: 0,
            },
        );
    }
    fn health(&mut self, h: &str, health: Health) {
        self.fleet
            .hosts
            .get_mut(h)
            .and_then(|r| r.services.get_mut("svc"))
            .expect("host")
            .health = health;
    }
}

#[test]
fn grants_up_to_the_budget() {
    let cases = [
        (10, Budget::Count(3), 3),
        (10, Budget::Percent(39), 3),
        (1, Budget::Percent(10), 1),
        (4, Budget::Count(10), 4),
        (9, Budget::Percent(50), 4),
    ];
    for (n, b, want) in cases {
        let w = world(n, strategy(b));
        assert_eq!(w.plan().grants.len(), want, "{n} targets at {b}");
    }
}

#[test]
fn slots_held_and_outages_count_against_the_budget() {
    let mut w = world(10, strategy(Budget::Count(3)));
    w.hold("h1");
    w.fleet.connected.remove("h5");
    w.health("h7", Health::Unhealthy);
    let p = w.plan();
    assert_eq!(p.unavailable.len(), 3);
    // h7 is already unavailable: upgrading it keeps the count at 3; nothing else fits.
    assert_eq!(p.grants, vec!["h7".to_string()]);
}

#[test]
fn a_slot_in_another_rollout_of_the_service_counts() {
    let mut w = world(3, strategy(Budget::Count(1)));
    w.hold("h2");
    w.steps.clear(); // the slot belongs to an older rollout
    let p = w.plan();
    assert!(p.grants.is_empty(), "{p:?}");
    assert_eq!(
        p.unavailable,
        vec![("h2".to_string(), Unavailable::Updating)]
    );
}

#[test]
fn offline_host_blocks_everyone_at_budget_one() {
    let mut w = world(5, strategy(Budget::Count(1)));
    w.fleet.connected.remove("h3");
    let p = w.plan();
    assert!(p.grants.is_empty(), "{p:?}");
    assert!(
        p.blocked_by.contains("budget full: 1/1"),
        "{}",
        p.blocked_by
    );
    assert!(p.blocked_by.contains("h3 offline"), "{}", p.blocked_by);
}

#[test]
fn lost_host_keeps_its_share_and_fails_only_after_its_deadline_and_grace() {
    let mut w = world(3, strategy(Budget::Count(1)));
    w.hold("h1");
    w.fleet.slots.clear(); // its replica's lease expired
    let p = w.plan();
    assert_eq!(
        progress(
            &Observed {
                rollout: &w.rollout,
                steps: &w.steps,
                staged: &w.staged,
                fleet: &w.fleet,
                now_ms: w.now,
                progress_seen_ms: None,
            },
            "h1"
        ),
        Progress::Lost
    );
    assert!(p.grants.is_empty(), "S2: lease expiry frees nothing: {p:?}");
    assert!(p.blocked_by.contains("lost mid-update"), "{}", p.blocked_by);
    assert!(p.phase.is_none());
    assert!(p.failures.is_empty(), "silence is not a failure yet: {p:?}");
    // Nothing moves while it is lost; silent past its healthy_deadline (default 2m) and
    // lost_grace (default 5m), it is a failure (before the 10m progress deadline would call
    // it a stall).
    let deadline = NOW - 500 + Duration::from_secs(420).as_millis() as i64;
    assert_eq!(p.wake_at_ms, Some(deadline));
    w.now = deadline - 1;
    let p = w.plan();
    assert!(p.phase.is_none() && p.failures.is_empty(), "{p:?}");
    w.now = deadline;
    let (phase, why) = w.plan().phase.expect("stalled");
    assert_eq!(phase, Phase::Failed);
    assert!(
        why.contains("lost mid-update") && why.contains("h1"),
        "{why}"
    );
    assert!(why.contains("max_failures"), "{why}");
}

#[test]
fn fenced_host_stops_counting() {
    let mut w = world(3, strategy(Budget::Count(1)));
    w.fleet.connected.remove("h1");
    w.fleet.hosts.get_mut("h1").expect("h1").fenced = true;
    assert_eq!(w.plan().grants, vec!["h2".to_string()]);
}

#[test]
fn group_budgets() {
    let mut st = strategy(Budget::Count(5));
    st.group_by = Some("site".into());
    st.max_unavailable_per_group = Some(Budget::Count(1));
    let mut w = world(9, st);
    // h1, h4, h7 are site s0; h2, h5, h8 s1; h3, h6, h9 s2.
    let p = w.plan();
    assert_eq!(p.grants, vec!["h1", "h2", "h3"]);
    w.hold("h1");
    w.fleet.connected.remove("h2");
    let p = w.plan();
    assert_eq!(p.grants, vec!["h3"], "one per site: s0 and s1 are full");
    assert_eq!(p.groups.len(), 3);
    assert!(p.groups.iter().all(|g| g.max_unavailable == 1));
    w.hold("h3");
    let p = w.plan();
    assert!(p.grants.is_empty());
    assert!(
        p.blocked_by.contains("site s0 budget full"),
        "{}",
        p.blocked_by
    );
}

#[test]
fn first_failure_halts_by_default() {
    let mut w = world(10, strategy(Budget::Count(3)));
    w.hold("h1");
    w.set("h2", HostState::RolledBack);
    let p = w.plan();
    assert!(p.grants.is_empty());
    assert_eq!(p.phase.map(|(ph, _)| ph), Some(Phase::Failed));
}

#[test]
fn a_host_rolling_back_counts_as_failed_at_once() {
    let mut w = world(4, strategy(Budget::Count(2)));
    w.hold("h1");
    w.hold("h2");
    let s = w.steps.get_mut("h1").expect("h1");
    s.step = AgentStep::RollingBack;
    s.message = "not healthy within 4s: http probe answered 500".into();
    let p = w.plan();
    let (phase, why) = p.phase.expect("halted");
    assert_eq!(phase, Phase::Failed);
    // The reason is the agent's verdict, not empty (the result is still to come).
    assert!(why.contains("first: h1: not healthy within 4s"), "{why}");
    assert_eq!(p.failures, vec!["h1"]);
}

#[test]
fn failure_policies() {
    for (on, want_phase, want_rollback) in [
        (OnFailure::Pause, Some(Phase::Paused), false),
        (OnFailure::Rollback, None, true),
    ] {
        let mut st = strategy(Budget::Count(1));
        st.max_failures = FailureBudget::Percent(25);
        st.on_failure = on;
        let mut w = world(4, st);
        w.set("h1", HostState::RolledBack);
        assert_eq!(w.plan().grants, vec!["h2"], "1 of 4 is within 25%");
        w.set("h2", HostState::Failed);
        let p = w.plan();
        assert_eq!(p.phase.map(|(ph, _)| ph), want_phase, "{on}");
        assert_eq!(p.rollback.is_some(), want_rollback, "{on}");
        // An operator resuming accepts the failures so far.
        w.rollout.tolerated_failures = 2;
        assert_eq!(w.plan().grants, vec!["h3"]);
    }
}

#[test]
fn failures_within_max_failures_end_succeeded() {
    let mut st = strategy(Budget::Count(1));
    st.max_failures = FailureBudget::Count(1);
    let mut w = world(4, st);
    w.set("h1", HostState::RolledBack);
    assert_eq!(w.plan().grants, vec!["h2".to_string()]);
    for h in ["h2", "h3", "h4"] {
        w.set(h, HostState::Done);
    }
    assert_eq!(w.plan().phase.map(|(ph, _)| ph), Some(Phase::Succeeded));
}

#[test]
fn done_when_every_target_is_done_and_none_is_in_flight() {
    let mut w = world(2, strategy(Budget::Count(1)));
    w.set("h1", HostState::Done);
    w.hold("h2");
    assert_eq!(w.plan().phase, None);
    w.set("h2", HostState::Done);
    assert_eq!(w.plan().phase.map(|(ph, _)| ph), Some(Phase::Succeeded));
}

#[test]
fn paused_grants_nothing_and_says_so() {
    let mut w = world(3, strategy(Budget::Count(3)));
    w.rollout.phase = Phase::Paused;
    let p = w.plan();
    assert!(p.grants.is_empty());
    assert!(p.blocked_by.starts_with("paused"), "{}", p.blocked_by);
}

#[test]
fn fresh_hosts_are_not_outages() {
    let mut w = world(4, strategy(Budget::Count(2)));
    for h in ["h1", "h2", "h3", "h4"] {
        let s = w
            .fleet
            .hosts
            .get_mut(h)
            .and_then(|r| r.services.get_mut("svc"))
            .expect("svc");
        s.version.clear();
        s.health = Health::Stopped;
    }
    let p = w.plan();
    assert!(p.unavailable.is_empty());
    assert_eq!(p.grants.len(), 2);
}

#[test]
fn wave_bounds_table() {
    let mut st = strategy(Budget::Count(1));
    assert_eq!(wave_bounds(&st, 10, false), vec![10]);
    st.canary = Some(Budget::Count(1));
    st.waves = vec![Budget::Percent(50)];
    assert_eq!(wave_bounds(&st, 10, false), vec![1, 5, 10]);
    assert_eq!(
        wave_bounds(&st, 10, true),
        vec![10],
        "rollbacks have no canary"
    );
    st.waves = vec![Budget::Count(1), Budget::Percent(100)];
    assert_eq!(wave_bounds(&st, 3, false), vec![1, 3]);
}

#[test]
fn manual_canary_gate() {
    let mut st = strategy(Budget::Count(2));
    st.canary = Some(Budget::Count(1));
    let mut w = world(4, st);
    assert_eq!(w.plan().grants, vec!["h1"], "only the canary");
    w.set("h1", HostState::Done);
    let p = w.plan();
    assert!(p.grants.is_empty());
    assert_eq!(p.gate, "manual promote");
    assert!(
        p.blocked_by.contains("rollgate rollout promote r"),
        "{}",
        p.blocked_by
    );
    w.now += 3_600_000;
    assert_eq!(
        w.plan().phase,
        None,
        "no progress deadline at a manual gate"
    );
    w.rollout.wave = 1;
    assert_eq!(w.plan().grants, vec!["h2", "h3"]);
}

#[test]
fn baked_canary_and_paused_waves() {
    let mut st = strategy(Budget::Count(4));
    st.canary = Some(Budget::Count(1));
    st.canary_gate = Gate::Bake(Duration::from_secs(60));
    st.waves = vec![Budget::Count(2)];
    st.pause_between_waves = Duration::from_secs(10);
    let mut w = world(4, st);
    w.set("h1", HostState::Done); // done at NOW - 500 (by the serving replica's clock)
    let p = w.plan();
    assert_eq!(
        p.stamp_wave,
        Some(0),
        "the leader stamps the wave's end first"
    );
    assert!(p.grants.is_empty() && p.advance_wave.is_none());
    w.rollout.wave_done = Some(WaveDone {
        wave: 0,
        at_ms: NOW,
        gate: WaveGate::Timed,
    });
    let p = w.plan();
    assert!(p.gate.starts_with("canary bake"), "{}", p.gate);
    assert_eq!(p.wake_at_ms, Some(NOW + 60_000));
    w.now = NOW + 60_000 - 1;
    assert_eq!(
        w.plan().advance_wave,
        None,
        "one clock: a step stamped earlier skips nothing"
    );
    w.now = NOW + 60_000;
    assert_eq!(w.plan().advance_wave, Some(1));
    w.rollout.wave = 1;
    w.rollout.updated_at_ms = w.now;
    assert_eq!(w.plan().grants, vec!["h2"]);
    w.set("h2", HostState::Done);
    w.steps.get_mut("h2").expect("h2").updated_at_ms = w.now;
    assert_eq!(w.plan().stamp_wave, Some(1));
    w.rollout.wave_done = Some(WaveDone {
        wave: 1,
        at_ms: w.now,
        gate: WaveGate::Timed,
    });
    let p = w.plan();
    assert!(p.gate.starts_with("pause between waves"), "{}", p.gate);
    w.now += 10_000;
    assert_eq!(w.plan().advance_wave, Some(2));
}

#[test]
fn progress_deadline_fails_a_stall_with_its_reason() {
    let mut st = strategy(Budget::Count(1));
    st.progress_deadline = Duration::from_secs(300);
    let mut w = world(3, st);
    w.fleet.connected.remove("h2");
    w.set("h1", HostState::Done);
    let p = w.plan();
    assert!(p.phase.is_none());
    assert_eq!(p.wake_at_ms, Some(NOW - 500 + 300_000));
    w.now = NOW - 500 + 300_000;
    let (phase, reason) = w.plan().phase.expect("deadline fires");
    assert_eq!(phase, Phase::Failed);
    assert!(
        reason.contains("no progress for 5m") && reason.contains("h2 offline"),
        "{reason}"
    );
}

#[test]
fn stage_first_waits_for_every_target() {
    let mut st = strategy(Budget::Count(2));
    st.stage_first = true;
    let mut w = world(3, st);
    let ok = |ok: bool, reason: &str| StageRecord {
        ok,
        reason: reason.into(),
        at_ms: NOW,
    };
    w.staged.insert("h1".into(), ok(true, ""));
    w.staged.insert("h2".into(), ok(false, "disk full"));
    w.fleet.connected.remove("h3");
    let p = w.plan();
    assert!(p.grants.is_empty());
    assert!(
        p.blocked_by.contains("1/3")
            && p.blocked_by.contains("h2: disk full")
            && p.blocked_by.contains("h3"),
        "{}",
        p.blocked_by
    );
    w.staged.insert("h2".into(), ok(true, ""));
    w.staged.insert("h3".into(), ok(true, ""));
    w.fleet.connected.insert("h3".into(), 7);
    assert_eq!(w.plan().grants, vec!["h1", "h2"]);
}

#[test]
fn prefetch_stages_ahead_without_holding_grants_back() {
    let mut st = strategy(Budget::Count(2));
    st.prefetch = true;
    let mut w = world(3, st);
    // Nobody has staged yet; one host's staging failed: prefetch gates nothing.
    w.staged.insert(
        "h2".into(),
        StageRecord {
            ok: false,
            reason: "disk full".into(),
            at_ms: NOW,
        },
    );
    assert_eq!(w.plan().grants, vec!["h1", "h2"]);
}

/// Adds a host of the service that is not a target.
fn bystander(w: &mut World, h: &str, site: &str, health: Health) {
    let mut rec = w.fleet.hosts.get("h1").expect("h1").clone();
    rec.host_id = h.into();
    rec.labels.insert("site".into(), site.into());
    rec.services.get_mut("svc").expect("svc").health = health;
    w.fleet.hosts.insert(h.into(), rec);
    w.fleet.connected.insert(h.into(), 7);
}

#[test]
fn every_host_of_the_service_counts_not_only_targets() {
    // A rollback of h1, h2 under the parent's budget of 2, while h3 and h4 (the parent's other
    // hosts) are down: nothing may start (issue 9, item 1).
    let mut w = world(2, strategy(Budget::Count(2)));
    w.rollout.rollback_of = Some("parent".into());
    bystander(&mut w, "h3", "s0", Health::Unhealthy);
    bystander(&mut w, "h4", "s1", Health::Healthy);
    w.fleet.connected.remove("h4");
    let p = w.plan();
    assert!(p.grants.is_empty(), "{p:?}");
    assert_eq!(p.unavailable.len(), 2);
    assert!(
        p.blocked_by.contains("h3 unhealthy (not a target)")
            && p.blocked_by.contains("h4 offline (not a target)"),
        "{}",
        p.blocked_by
    );
    w.fleet.connected.insert("h4".into(), 7);
    assert_eq!(w.plan().grants, vec!["h1"], "one unit left");
}

#[test]
fn an_order_in_flight_counts_whatever_health_says() {
    // h2 reconnected after its replica died while it was rolling back for an ended rollout: its
    // slot is gone, its health still says healthy, its agent reports the order (item 2).
    let mut w = world(3, strategy(Budget::Count(1)));
    let s = w.fleet.hosts.get_mut("h2").expect("h2");
    let svc = s.services.get_mut("svc").expect("svc");
    svc.in_flight_token = 41;
    svc.in_flight_rollout = "old".into();
    let p = w.plan();
    assert_eq!(p.unavailable, vec![("h2".into(), Unavailable::Updating)]);
    assert!(p.grants.is_empty(), "{p:?}");
}

#[test]
fn fence_and_forget() {
    let mut w = world(3, strategy(Budget::Count(1)));
    // A fenced host that is connected and holds a slot still counts (item 5).
    w.hold("h1");
    w.steps.clear();
    w.fleet.hosts.get_mut("h1").expect("h1").fenced = true;
    assert_eq!(
        w.plan().unavailable,
        vec![("h1".into(), Unavailable::Updating)]
    );
    // Fenced and gone: vouched for.
    w.fleet.slots.clear();
    w.fleet.connected.remove("h1");
    assert!(w.plan().unavailable.is_empty());
    // Forgotten (no record): not offline forever.
    w.fleet.hosts.remove("h1");
    assert!(w.plan().unavailable.is_empty());
}

#[test]
fn an_unreadable_release_is_an_outage_not_a_fresh_host() {
    let mut w = world(3, strategy(Budget::Count(1)));
    let s = w.fleet.hosts.get_mut("h3").expect("h3");
    let svc = s.services.get_mut("svc").expect("svc");
    svc.version.clear();
    svc.health = Health::Unhealthy;
    svc.detail = "cannot read the current release's metadata".into();
    assert_eq!(
        w.plan().unavailable,
        vec![("h3".into(), Unavailable::Unhealthy)]
    );
}

#[test]
fn groups_are_the_ones_frozen_at_creation() {
    let mut st = strategy(Budget::Count(5));
    st.group_by = Some("site".into());
    st.max_unavailable_per_group = Some(Budget::Count(1));
    let mut w = world(6, st);
    // h1, h4 are s0; h2, h5 s1; h3, h6 s2 (frozen).
    for (i, h) in ["h1", "h2", "h3", "h4", "h5", "h6"].iter().enumerate() {
        w.rollout
            .groups
            .insert(h.to_string(), format!("s{}", i % 3));
    }
    for g in ["s0", "s1", "s2"] {
        w.rollout.group_budgets.insert(g.into(), 1);
    }
    w.hold("h1");
    // h4 is relabelled into s1 and h2 loses its label: neither moves (item 6).
    w.fleet
        .hosts
        .get_mut("h4")
        .expect("h4")
        .labels
        .insert("site".into(), "s1".into());
    w.fleet.hosts.get_mut("h2").expect("h2").labels.clear();
    let p = w.plan();
    assert_eq!(p.grants, vec!["h2", "h3"], "{p:?}");
    assert_eq!(p.groups.len(), 3, "no new group for the unlabelled host");
    assert!(p
        .groups
        .iter()
        .all(|g| g.hosts == 2 && g.max_unavailable == 1));
}

#[test]
fn interrupted_hosts_are_granted_again_and_fail_only_after_the_bound() {
    use crate::sessions::results::{host_state_after, result_reason};
    use rollgate_proto::pb::Outcome as Out;
    // (max_failures, other hosts' states, h1 held again, grants, phase, failures, unavailable)
    type Row = (
        u32,
        &'static [HostState],
        bool,
        &'static [&'static str],
        Option<Phase>,
        &'static [&'static str],
        &'static [&'static str],
    );
    let table: [Row; 5] = [
        // Interrupted and undone: granted again, not a failure with max_failures = 0.
        (
            0,
            &[HostState::Done, HostState::Done],
            false,
            &["h1"],
            None,
            &[],
            &[],
        ),
        // Granted again: it counts against the budget while updating, so h2 waits.
        (
            0,
            &[HostState::Pending, HostState::Done],
            true,
            &[],
            None,
            &[],
            &["h1"],
        ),
        // Not final: the rollout does not end while it waits for its regrant.
        (
            0,
            &[HostState::Done, HostState::Done],
            true,
            &[],
            None,
            &[],
            &["h1"],
        ),
        // A real failure still counts; the interrupted host does not.
        (
            0,
            &[HostState::RolledBack, HostState::Done],
            false,
            &[],
            Some(Phase::Failed),
            &["h2"],
            &[],
        ),
        (
            1,
            &[HostState::RolledBack, HostState::Done],
            false,
            &["h1"],
            None,
            &["h2"],
            &[],
        ),
    ];
    for (i, (max_failures, others, held, grants, phase, failures, unavailable)) in
        table.into_iter().enumerate()
    {
        let mut st = strategy(Budget::Count(1));
        st.max_failures = FailureBudget::Count(max_failures);
        let mut w = world(3, st);
        w.set("h1", HostState::Interrupted);
        if held {
            w.hold("h1");
        }
        for (h, s) in ["h2", "h3"].iter().zip(others) {
            w.set(h, *s);
        }
        let p = w.plan();
        assert_eq!(p.grants, grants.to_vec(), "row {i}: {p:?}");
        assert_eq!(p.phase.as_ref().map(|(ph, _)| *ph), phase, "row {i}: {p:?}");
        assert_eq!(p.failures, failures.to_vec(), "row {i}");
        let out: Vec<&str> = p.unavailable.iter().map(|(h, _)| h.as_str()).collect();
        assert_eq!(out, unavailable.to_vec(), "row {i}");
    }

    // The bound: the third interrupted grant makes the host a failure, with that reason.
    let mut w = world(3, strategy(Budget::Count(1)));
    w.set("h2", HostState::Done);
    w.set("h3", HostState::Done);
    let mut count = 0;
    for attempt in 1..=MAX_INTERRUPTIONS {
        let (state, after) = host_state_after(Out::Interrupted, count);
        count = after;
        w.set("h1", state);
        let s = w.steps.get_mut("h1").expect("h1");
        s.reason = result_reason(state, count, "agent restarted during the update to 2");
        let p = w.plan();
        if attempt < MAX_INTERRUPTIONS {
            assert_eq!(p.grants, vec!["h1"], "attempt {attempt}");
            assert!(p.phase.is_none(), "attempt {attempt}: {p:?}");
        } else {
            let (ph, why) = p.phase.expect("failed after the bound");
            assert_eq!(ph, Phase::Failed);
            assert!(
                why.contains("interrupted 3 times (agent restarts or stale tokens)"),
                "{why}"
            );
        }
    }
}
