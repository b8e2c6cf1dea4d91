//! Which events each change of a record makes (tables over `derive`).

use std::collections::BTreeMap;

use rollgate_proto::spec::{ReleaseSpec, RolloutSpec, Strategy, TargetSpec};

use super::derive::{derive, Subject};
use super::{EventKind, NewEvent};
use crate::store::{
    AgentStep, HostRecord, HostState, HostStep, OperatorStamp, Phase, RolloutRecord, WaveDone,
    WaveGate,
};

const OPERATOR: &str = "spiffe://test/operator/alice";

fn rollout() -> RolloutRecord {
    RolloutRecord {
        id: "r-1".into(),
        spec: RolloutSpec {
            service: "web".into(),
            release: ReleaseSpec {
                version: "2.0.0".into(),
                source: "store:".into(),
                sha256: "a".repeat(64),
                size: 1,
                file: None,
                image: None,
                signature: None,
                signature_file: None,
            },
            targets: TargetSpec::default(),
            strategy: Strategy::default(),
        },
        targets: vec!["h1".into(), "h2".into()],
        max_unavailable: 1,
        phase: Phase::Rolling,
        reason: String::new(),
        created_at_ms: 1,
        updated_at_ms: 1,
        wave: 0,
        tolerated_failures: 0,
        previous: None,
        rollback_of: None,
        rolled_back_by: None,
        groups: BTreeMap::new(),
        group_budgets: BTreeMap::new(),
        wave_done: None,
        created_by: Some(OPERATOR.into()),
        operator: None,
    }
}

fn step(state: HostState, step: AgentStep) -> HostStep {
    HostStep {
        state,
        token: 7,
        step,
        reason: if state.is_failure() {
            "probe failed".into()
        } else {
            String::new()
        },
        running_version: "2.0.0".into(),
        ..HostStep::pending()
    }
}

fn bytes<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("encode")
}

fn kinds(events: &[NewEvent]) -> Vec<EventKind> {
    events.iter().filter_map(|e| e.kind).collect()
}

fn rollout_change(before: Option<&RolloutRecord>, after: &RolloutRecord) -> Vec<NewEvent> {
    let b = before.map(bytes);
    derive(
        &Subject::Rollout("r-1".into()),
        b.as_deref(),
        Some(&bytes(after)),
    )
}

#[test]
fn a_new_rollout_says_who_created_it_and_with_which_spec() {
    let r = rollout();
    let events = rollout_change(None, &r);
    assert_eq!(kinds(&events), [EventKind::RolloutCreated]);
    assert_eq!(events[0].by.as_deref(), Some(OPERATOR));
    assert_eq!(events[0].spec.as_ref(), Some(&r.spec));
    assert_eq!(events[0].service.as_deref(), Some("web"));
}

#[test]
fn phase_changes_name_the_operator_only_when_one_acted() {
    let before = rollout();
    let table = [
        (Phase::Paused, true, EventKind::RolloutPaused),
        (Phase::Failed, false, EventKind::RolloutHalted),
        (Phase::Aborted, true, EventKind::RolloutAborted),
        (Phase::Succeeded, false, EventKind::RolloutSucceeded),
        (Phase::RollingBack, false, EventKind::RolloutRollingBack),
    ];
    for (phase, by_operator, kind) in table {
        let mut after = before.clone();
        after.phase = phase;
        after.reason = "why".into();
        if by_operator {
            after.operator = Some(OperatorStamp {
                by: OPERATOR.into(),
                at_ms: 5,
            });
        }
        let events = rollout_change(Some(&before), &after);
        assert_eq!(kinds(&events), [kind], "{phase:?}");
        assert_eq!(events[0].phase, Some(phase));
        assert_eq!(events[0].reason, "why");
        let want = by_operator.then_some(OPERATOR);
        assert_eq!(events[0].by.as_deref(), want, "{phase:?}");
    }
    let mut paused = before.clone();
    paused.phase = Phase::Paused;
    let events = rollout_change(Some(&paused), &before);
    assert_eq!(kinds(&events), [EventKind::RolloutResumed]);
}

#[test]
fn a_wave_opening_is_an_event_and_other_writes_are_not() {
    let before = rollout();
    let mut after = before.clone();
    after.wave = 1;
    assert_eq!(
        kinds(&rollout_change(Some(&before), &after)),
        [EventKind::WaveOpened]
    );
    let mut touched = before.clone();
    touched.updated_at_ms = 99;
    assert!(rollout_change(Some(&before), &touched).is_empty());
}

fn stamped(wave: u32, at_ms: i64, gate: WaveGate) -> Option<WaveDone> {
    Some(WaveDone { wave, at_ms, gate })
}

/// A rollout at its canary gate (h1 is the canary), before and after a write.
fn at_the_canary_gate(
    before: Option<WaveDone>,
    change: impl Fn(&mut RolloutRecord),
) -> Vec<NewEvent> {
    let mut was = rollout();
    was.spec.strategy.canary = Some(rollgate_proto::spec::Budget::Count(1));
    was.wave_done = before;
    let mut now = was.clone();
    change(&mut now);
    rollout_change(Some(&was), &now)
}

#[test]
fn a_manual_gate_is_announced_once_when_the_leader_stamps_it() {
    let manual = stamped(0, 5, WaveGate::Manual);
    // (what, the stamp before, the write, the events it makes)
    type Row = (
        &'static str,
        Option<WaveDone>,
        fn(&mut RolloutRecord),
        &'static [EventKind],
    );
    let table: [Row; 6] = [
        (
            "the leader stamps the manual gate",
            None,
            |r| r.wave_done = stamped(0, 5, WaveGate::Manual),
            &[EventKind::GateWaiting],
        ),
        (
            "a timed gate opens by itself: no call to act",
            None,
            |r| r.wave_done = stamped(0, 5, WaveGate::Timed),
            &[],
        ),
        (
            "a later write keeps the stamp",
            manual,
            |r| r.updated_at_ms = 99,
            &[],
        ),
        (
            "a pause at the gate",
            manual,
            |r| r.phase = Phase::Paused,
            &[EventKind::RolloutPaused],
        ),
        (
            "the promote",
            manual,
            |r| r.wave = 1,
            &[EventKind::WaveOpened],
        ),
        (
            "the next gate is timed",
            manual,
            |r| r.wave_done = stamped(1, 9, WaveGate::Timed),
            &[],
        ),
    ];
    for (what, before, change, want) in table {
        assert_eq!(kinds(&at_the_canary_gate(before, change)), want, "{what}");
    }
    let events = at_the_canary_gate(None, |r| r.wave_done = stamped(0, 5, WaveGate::Manual));
    let e = &events[0];
    assert_eq!(e.rollout.as_deref(), Some("r-1"));
    assert_eq!(e.service.as_deref(), Some("web"));
    assert_eq!(e.wave, Some(0), "the wave that finished");
    assert_eq!(e.by, None, "the leader stamped it, no operator");
    assert_eq!(
        e.reason,
        "waiting at the canary gate: the canary (h1) is done; check it, then run \
         `rollgate rollout promote r-1`"
    );
}

#[test]
fn a_stamp_stored_before_gates_had_kinds_is_timed() {
    // Only timed gates were stamped then: reading one must not announce a manual gate.
    let old: WaveDone = serde_json::from_str(r#"{"wave":0,"at_ms":5}"#).expect("decode");
    assert_eq!(old.gate, WaveGate::Timed);
    assert!(at_the_canary_gate(None, |r| r.wave_done = Some(old)).is_empty());
}

/// A step record before, after, and the events the change makes.
type Row<'a> = (Option<&'a [u8]>, HostStep, &'a [EventKind]);

#[test]
fn a_hosts_part_is_granted_stepped_and_finished() {
    let subject = Subject::Step {
        rollout: "r-1".into(),
        host: "h1".into(),
    };
    let pending = bytes(&HostStep::pending());
    let table: [Row<'_>; 5] = [
        (
            None,
            step(HostState::Updating, AgentStep::None),
            &[EventKind::HostGranted],
        ),
        (
            Some(&pending),
            step(HostState::Updating, AgentStep::None),
            &[EventKind::HostGranted],
        ),
        (
            Some(&bytes(&step(HostState::Updating, AgentStep::None))),
            step(HostState::Updating, AgentStep::Verifying),
            &[EventKind::HostStep],
        ),
        (
            Some(&bytes(&step(HostState::Updating, AgentStep::Verifying))),
            step(HostState::Done, AgentStep::Verifying),
            &[EventKind::HostDone],
        ),
        (
            Some(&bytes(&step(HostState::Updating, AgentStep::RollingBack))),
            step(HostState::RolledBack, AgentStep::RollingBack),
            &[EventKind::HostRolledBack],
        ),
    ];
    for (before, after, want) in table {
        let events = derive(&subject, before, Some(&bytes(&after)));
        assert_eq!(kinds(&events), want, "{after:?}");
        assert!(events
            .iter()
            .all(|e| e.token == Some(7) && e.host.as_deref() == Some("h1")));
    }
    let failed = derive(
        &subject,
        Some(&bytes(&step(HostState::Updating, AgentStep::Starting))),
        Some(&bytes(&step(HostState::Failed, AgentStep::Starting))),
    );
    assert_eq!(failed[0].reason, "probe failed");
}

#[test]
fn fences_and_forgets_are_events_and_statuses_are_not() {
    let subject = Subject::Host("h1".into());
    let plain = HostRecord {
        host_id: "h1".into(),
        ..HostRecord::default()
    };
    let fenced = HostRecord {
        fenced: true,
        fenced_by: Some(OPERATOR.into()),
        ..plain.clone()
    };
    let events = derive(&subject, Some(&bytes(&plain)), Some(&bytes(&fenced)));
    assert_eq!(kinds(&events), [EventKind::HostFenced]);
    assert_eq!(events[0].by.as_deref(), Some(OPERATOR));
    let forgotten = derive(&subject, Some(&bytes(&plain)), None);
    assert_eq!(kinds(&forgotten), [EventKind::HostForgotten]);
    let mut seen = plain.clone();
    seen.last_seen_ms = 5;
    assert!(derive(&subject, Some(&bytes(&plain)), Some(&bytes(&seen))).is_empty());
}

#[test]
fn only_the_records_events_come_from_have_subjects() {
    assert_eq!(
        Subject::of("rollouts/r-1"),
        Some(Subject::Rollout("r-1".into()))
    );
    assert_eq!(Subject::of("hosts/h1"), Some(Subject::Host("h1".into())));
    for key in [
        "events/00000000000000000001",
        "events-cursor",
        "rollouts/r-1/staged/h1",
        "slots/web/h1",
        "token",
    ] {
        assert_eq!(Subject::of(key), None, "{key}");
    }
    // A record that does not decode makes no event (the planner and the CLI report it).
    assert!(derive(&Subject::Rollout("r-1".into()), None, Some(b"{not json")).is_empty());
}

#[test]
fn batches_fit_a_transaction_and_never_split_a_revision() {
    use super::recorder::batches;
    let revs = |b: &Vec<(i64, ())>| b.iter().map(|(r, _)| *r).collect::<Vec<_>>();
    let drafts = |revs: &[i64]| revs.iter().map(|r| (*r, ())).collect::<Vec<_>>();
    /// Revisions in, batch size, revisions per batch out.
    type Case = (&'static [i64], usize, &'static [&'static [i64]]);
    let cases: &[Case] = &[
        (&[], 3, &[]),
        (&[1, 2, 3], 3, &[&[1, 2, 3]]),
        (&[1, 2, 3, 4], 3, &[&[1, 2, 3], &[4]]),
        // Revision 2's events stay together: the batch closes before them.
        (&[1, 2, 2, 2, 3], 3, &[&[1], &[2, 2, 2], &[3]]),
        (&[1, 1, 2, 2], 3, &[&[1, 1], &[2, 2]]),
        // More events in one revision than fit: a batch of its own.
        (&[1, 2, 2, 2, 2, 3], 3, &[&[1], &[2, 2, 2, 2], &[3]]),
    ];
    for (input, max, want) in cases {
        let got: Vec<Vec<i64>> = batches(drafts(input), *max).iter().map(revs).collect();
        let want: Vec<Vec<i64>> = want.iter().map(|b| b.to_vec()).collect();
        assert_eq!(got, want, "{input:?} in batches of {max}");
    }
    let big = batches(drafts(&(0..1000).collect::<Vec<_>>()), 100);
    assert_eq!(big.len(), 10);
    assert!(big.iter().all(|b| b.len() == 100));
}
