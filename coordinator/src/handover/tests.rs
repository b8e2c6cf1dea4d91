use super::*;
use crate::store::{Health, HostRecord, HostState};

fn slot(host: &str, token: u64) -> SlotRecord {
    SlotRecord {
        rollout_id: "r".into(),
        token,
        host_id: host.into(),
        service: "web".into(),
        version: "2".into(),
        source: "store:".into(),
        sha256: "a".repeat(64),
        size: 1,
        signature: None,
        rollback: false,
        min_healthy_time_ms: 100,
        healthy_deadline_ms: 1000,
        granted_by: "c1".into(),
        granted_at_ms: 1,
    }
}

fn state(version: &str, health: Health) -> BTreeMap<String, ServiceState> {
    let s = ServiceState {
        version: version.into(),
        health,
        ..ServiceState::default()
    };
    BTreeMap::from([("web".to_string(), s)])
}

/// A fleet of h1 (updating, holding slot 5) and h2 (pending).
fn fleet() -> FleetView {
    let mut fleet = FleetView::default();
    for h in ["h1", "h2"] {
        let rec = HostRecord {
            host_id: h.into(),
            services: state("1", Health::Healthy),
            ..HostRecord::default()
        };
        fleet.hosts.insert(h.into(), rec);
    }
    fleet
        .slots
        .insert(("web".into(), "h1".into()), slot("h1", 5));
    fleet
}

fn done_step() -> HostStep {
    HostStep {
        state: HostState::Done,
        token: 5,
        ..HostStep::pending()
    }
}

fn offer(host: &str, drops_slot: bool) -> Offer {
    Offer {
        rollout: "r".into(),
        host: host.into(),
        service: "web".into(),
        step: done_step(),
        services: state("2", Health::Healthy),
        drops_slot,
        compares: vec![],
        ops: vec![],
    }
}

/// Carries `offers` through an open inbox, as the leader receives them.
fn carried(offers: Vec<Offer>) -> Vec<Carry> {
    let inbox = Inbox::default();
    let mut rx = inbox.open();
    for o in offers {
        inbox.offer(o).expect("open inbox takes the offer");
    }
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        out.push(c);
    }
    out
}

#[test]
fn a_result_applied_frees_its_slot_and_undo_puts_the_fleet_back() {
    let before = fleet();
    let mut fleet = before.clone();
    let mut steps = BTreeMap::new();
    let carry = carried(vec![offer("h1", true)]);
    let undo = apply(&carry, &mut steps, &mut fleet);
    assert_eq!(steps.get("h1"), Some(&done_step()));
    assert!(
        fleet.slot("web", "h1").is_none(),
        "the result drops h1's slot"
    );
    assert_eq!(fleet.hosts["h1"].services, state("2", Health::Healthy));
    assert_eq!(fleet.hosts["h2"], before.hosts["h2"]);
    undo.undo(&mut fleet);
    assert_eq!(fleet.hosts, before.hosts);
    assert_eq!(fleet.slots, before.slots);
}

#[test]
fn a_result_that_keeps_the_slot_leaves_it() {
    // The slot is another grant's (its token differs): the result does not drop it, and the
    // planner must go on counting it.
    let mut fleet = fleet();
    let carry = carried(vec![offer("h1", false)]);
    apply(&carry, &mut BTreeMap::new(), &mut fleet);
    assert_eq!(fleet.slot("web", "h1"), Some(&slot("h1", 5)));
}

#[test]
fn only_few_results_of_hosts_not_granted_are_carried() {
    let one = carried(vec![offer("h1", true)]);
    assert!(can_carry(&one, &["h2".to_string()]));
    assert!(
        !can_carry(&one, &["h1".to_string()]),
        "a host both reporting and granted again would write its step twice in one txn"
    );
    let twice = carried(vec![offer("h1", true), offer("h1", true)]);
    assert!(
        !can_carry(&twice, &[]),
        "two results of one host (an old and a new session) would write its keys twice"
    );
    let many = carried(
        (0..=MAX_CARRIED)
            .map(|i| offer(&format!("h{i}"), true))
            .collect(),
    );
    assert_eq!(many.len(), MAX_CARRIED + 1);
    assert!(!can_carry(&many, &[]));
    assert!(can_carry(&many[..MAX_CARRIED], &[]));
}

#[test]
fn the_inbox_takes_offers_only_while_open_and_tells_the_session() {
    let inbox = Inbox::default();
    assert!(
        inbox.offer(offer("h1", true)).is_none(),
        "closed: not leading"
    );
    let mut rx = inbox.open();
    let written = inbox.offer(offer("h1", true)).expect("open");
    let dropped = inbox.offer(offer("h2", true)).expect("open");
    rx.try_recv().expect("first").written(42);
    drop(rx.try_recv().expect("second"));
    assert_eq!(written.blocking_recv(), Ok(42));
    assert!(dropped.blocking_recv().is_err(), "handed back");
    inbox.close();
    assert!(inbox.offer(offer("h1", true)).is_none(), "closed again");
}

#[test]
fn a_full_inbox_refuses_rather_than_waits() {
    let inbox = Inbox::default();
    let _rx = inbox.open();
    let taken = (0..INBOX + 1)
        .filter(|_| inbox.offer(offer("h1", true)).is_some())
        .count();
    assert_eq!(taken, INBOX);
}
