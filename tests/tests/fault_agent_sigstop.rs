//! S1/S2 with a frozen agent: while host X holds the only slot (verifying), its agent is
//! SIGSTOPped for longer than the session timeout plus the coordinator's lease TTL. X is then
//! unreachable, so it is unavailable by definition even though its service still answers; the
//! observer is told so (`count_as_down`) and must never see a second host down. Nothing else may
//! start while X is away (lease/session expiry never frees the budget), and `blocked_by` names
//! X. After SIGCONT, X reconnects and the rollout finishes.
//!
//! S4 (a token lower than the agent's `highest_token` is refused): the running coordinator never
//! re-sends an old token, so this test only checks the journal side (the agent durably recorded
//! the token it acted on, the one in the status). An etcd restore that puts the grant counter
//! back in time is `etcd_restore.rs`; the agent's refusal of a stale token is in the agent's
//! own tests (agent/tests/executor.rs, agent/tests/reporting.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::Signal;
use rollgate_tests::pb::{HostState, Phase, Step};
use rollgate_tests::{brief, session_timeout, Fleet, FleetOpts, Mode, LEASE_TTL_SECS};

#[test]
fn frozen_agent_holds_its_slot_and_nothing_else_starts() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 4,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    // max_failures = 1: a host that vanishes mid-update may count as a failure (S2); this test
    // is about the budget, not the failure policy.
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\nmin_healthy_time = \"2s\"\nhealthy_deadline = \"30s\"\nmax_failures = 1",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let before = fleet.wait_status(
        &id,
        "a host verifying 2.0.0",
        Duration::from_secs(30),
        |s| {
            s.hosts
                .iter()
                .any(|h| h.state() == HostState::Updating && h.step() == Step::Verifying)
        },
    )?;
    let x = before
        .hosts
        .iter()
        .find(|h| h.state() == HostState::Updating && h.step() == Step::Verifying)
        .map(|h| h.host_id.clone())
        .expect("found above");
    let states_before: BTreeMap<String, HostState> = before
        .hosts
        .iter()
        .map(|h| (h.host_id.clone(), h.state()))
        .collect();

    fleet.agent(&x).proc.signal(Signal::SIGSTOP);
    observer.count_as_down(&x, true);
    let window =
        session_timeout() + Duration::from_secs(LEASE_TTL_SECS) + Duration::from_millis(1500);
    println!("SIGSTOPped {x}'s agent while it was verifying; watching for {window:?}");

    let mut x_states = BTreeSet::new();
    let mut worst_unavailable = 0;
    let last = fleet.hold_for(&id, window, |s| {
        worst_unavailable = worst_unavailable.max(s.unavailable);
        for h in &s.hosts {
            if h.host_id == x {
                x_states.insert(h.state());
                if !matches!(h.state(), HostState::Updating | HostState::Lost) {
                    bail!("{x} left updating/lost while frozen: {}", h.state().word());
                }
            } else if Some(&h.state()) != states_before.get(&h.host_id) {
                bail!(
                    "{} went from {:?} to {} while {x} held the budget frozen",
                    h.host_id,
                    states_before.get(&h.host_id),
                    h.state().word()
                );
            }
        }
        if s.unavailable > 1 {
            bail!("status says {} unavailable (budget 1)", s.unavailable);
        }
        Ok(())
    })?;
    println!(
        "while {x} was frozen: its states {x_states:?}; worst unavailable in status {worst_unavailable}/1; blocked_by: {:?}",
        last.blocked_by
    );
    assert!(
        last.blocked_by.contains(&x),
        "blocked_by does not name the frozen host {x}: {:?}",
        last.blocked_by
    );

    fleet.agent(&x).proc.signal(Signal::SIGCONT);
    // X's agent runs again: from here on the observer judges X by its service alone. Until the
    // coordinator hears from X again (connected, or its result counted), X still holds the
    // budget, so no other host may move.
    observer.count_as_down(&x, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = fleet.status(&id)?;
        let hx = s.hosts.iter().find(|h| h.host_id == x).expect("x");
        let back =
            hx.connected || hx.state() != HostState::Updating && hx.state() != HostState::Lost;
        if !back {
            for h in s.hosts.iter().filter(|h| h.host_id != x) {
                assert_eq!(
                    Some(&h.state()),
                    states_before.get(&h.host_id),
                    "{} moved before {x} was back: {}",
                    h.host_id,
                    brief(&s)
                );
            }
        }
        if back {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{x} did not come back within 30 s of SIGCONT: {}",
            brief(&s)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let reconnected = Instant::now();

    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    println!(
        "settled {:?} after {x} reconnected: phase {}, reason {:?}",
        reconnected.elapsed(),
        s.phase().word(),
        s.reason
    );
    let seen = observer.finish();
    seen.print(1, None);

    let hx = s.hosts.iter().find(|h| h.host_id == x).expect("x");
    println!(
        "{x}: {} token {} running {:?} reason {:?}",
        hx.state().word(),
        hx.token,
        hx.running_version,
        hx.reason
    );
    for h in s.hosts.iter().filter(|h| h.host_id != x) {
        assert_eq!(
            h.state(),
            HostState::Done,
            "{} did not finish: {s:?}",
            h.host_id
        );
    }
    if hx.state() == HostState::Done {
        assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
        assert_eq!(fleet.serving(&x).as_deref(), Some("2.0.0"));
    } else {
        assert!(
            !hx.reason.is_empty(),
            "{x} ended {} without a reason: {s:?}",
            hx.state().word()
        );
    }
    // Grants are distinct per host.
    let tokens: Vec<u64> = s.hosts.iter().map(|h| h.token).filter(|t| *t > 0).collect();
    let distinct: BTreeSet<u64> = tokens.iter().copied().collect();
    assert_eq!(tokens.len(), distinct.len(), "a token was reused: {s:?}");
    // S4, journal side: the agent durably remembers the token it acted on.
    let highest = fleet.highest_token(&x)?;
    println!(
        "{x}: journal highest_token {highest:?}, status token {}",
        hx.token
    );
    if hx.token > 0 {
        assert!(
            highest.is_some_and(|h| h >= hx.token),
            "{x}'s journal highest_token {highest:?} is below the token it was granted ({})",
            hx.token
        );
    }
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} hosts unavailable at once: {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
