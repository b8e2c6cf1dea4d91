//! Rollout strategy on a real fleet: the manual canary gate, the rollback failure policy, and
//! the progress deadline (L1). Each test keeps an observer and prints its worst count against
//! the budget.

use std::time::{Duration, Instant};

use anyhow::bail;
use nix::sys::signal::Signal;
use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{Fleet, FleetOpts, Mode};

/// canary = 1 with a manual gate: the canary finishes, then nothing else starts until an
/// operator promotes; status says it waits at a gate for a promote. After the promote the
/// rollout succeeds.
#[test]
fn manual_canary_gate_holds_until_promoted() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 4,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 2\ncanary = 1\ncanary_gate = \"manual\"\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"30s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;

    // Until the canary is done, only one host may have started (the canary wave is 1 host even
    // though the budget is 2).
    let mut most_started = 0;
    let canary = fleet.wait("the canary to be done", Duration::from_secs(30), || {
        let s = fleet.status(&id)?;
        let started: Vec<&str> = s
            .hosts
            .iter()
            .filter(|h| h.state() != HostState::Pending)
            .map(|h| h.host_id.as_str())
            .collect();
        most_started = most_started.max(started.len());
        if started.len() > 1 {
            // Not something to wait out: report at once.
            return Ok(Some(Err(format!(
                "{} hosts started in a canary wave of 1: {started:?}",
                started.len()
            ))));
        }
        Ok(s.hosts
            .iter()
            .find(|h| h.state() == HostState::Done)
            .map(|h| Ok(h.host_id.clone())))
    })?;
    let canary = match canary {
        Ok(c) => c,
        Err(e) => bail!("{e}"),
    };
    println!("canary {canary} is done; holding 2 s to see that nothing else starts");

    let last = fleet.hold_for(&id, Duration::from_secs(2), |s| {
        for h in s.hosts.iter().filter(|h| h.host_id != canary) {
            if h.state() != HostState::Pending {
                bail!(
                    "{} started before the gate was promoted: {}",
                    h.host_id,
                    h.state().word()
                );
            }
        }
        Ok(())
    })?;
    println!(
        "at the gate: phase {} gate {:?} blocked_by {:?} wave {}/{}",
        last.phase().word(),
        last.gate,
        last.blocked_by,
        last.wave,
        last.waves
    );
    assert!(
        !last.gate.is_empty(),
        "status.gate is empty at the manual gate: {last:?}"
    );
    assert!(
        last.blocked_by.to_lowercase().contains("promote"),
        "blocked_by does not say a promote is awaited: {:?}",
        last.blocked_by
    );

    let promoted = fleet.promote(&id)?;
    println!(
        "promoted: phase {} gate {:?}",
        promoted.phase().word(),
        promoted.gate
    );
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    seen.print(2, None);
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert_eq!(s.done, 4, "{s:?}");
    assert!(
        seen.max_unavailable <= 2,
        "budget broken: the observer saw {} down (budget 2): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}

/// on_failure = "rollback" with max_failures = 1 and a release that fails on host-3 and host-4
/// only: the second failure rolls the rollout back; the rollback rollout succeeds and every
/// host serves the old release again (checked on the services themselves).
#[test]
fn second_failure_rolls_every_host_back_to_the_old_release() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 4,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    let bad = fleet.release_failing_on("2.0.0", &["host-3", "host-4"])?;
    let spec = fleet.spec(
        &bad,
        "max_unavailable = 1\nmax_failures = 1\non_failure = \"rollback\"\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"3s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    println!(
        "{id}: phase {} reason {:?} rolled_back_by {:?}; hosts {:?}",
        s.phase().word(),
        s.reason,
        s.rolled_back_by,
        s.hosts
            .iter()
            .map(|h| format!("{}:{}", h.host_id, h.state().word()))
            .collect::<Vec<_>>()
    );
    assert_eq!(s.phase(), Phase::RolledBack, "{s:?}");
    assert!(
        !s.rolled_back_by.is_empty(),
        "rolled_back_by is empty: {s:?}"
    );

    let rb = fleet.wait_settled(&s.rolled_back_by, Duration::from_secs(90))?;
    println!(
        "rollback {}: phase {} version {} rollback_of {:?} done {}/{}",
        rb.id,
        rb.phase().word(),
        rb.version,
        rb.rollback_of,
        rb.done,
        rb.total
    );
    assert_eq!(rb.phase(), Phase::Succeeded, "{rb:?}");
    assert_eq!(rb.rollback_of, id, "{rb:?}");
    assert_eq!(rb.version, "1.0.0", "{rb:?}");
    fleet.wait_all_serving("1.0.0")?;
    for a in &fleet.agents {
        assert_eq!(
            fleet.serving(&a.id).as_deref(),
            Some("1.0.0"),
            "{} does not serve the old release",
            a.id
        );
    }
    let seen = observer.finish();
    seen.print(1, None);
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}

/// L1: host-2 is offline and holds the only unit of budget, so nothing can start; with
/// progress_deadline = 3s the rollout fails soon after, with a reason that says "progress" and
/// names what blocked it.
#[test]
fn stalled_rollout_fails_at_its_progress_deadline() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 4,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    fleet.agent("host-2").proc.signal(Signal::SIGSTOP);
    // Its service still answers, but the host is unreachable: unavailable by definition.
    observer.count_as_down("host-2", true);
    fleet.wait(
        "host-2 to count as offline",
        Duration::from_secs(10),
        || {
            Ok(fleet
                .hosts()?
                .iter()
                .find(|h| h.host_id == "host-2" && !h.connected)
                .map(|_| ()))
        },
    )?;

    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"2s\"\nprogress_deadline = \"3s\"",
    )?;
    let started = Instant::now();
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(3 + 15))?;
    let took = started.elapsed();
    println!(
        "ended {} after {took:?} (progress_deadline 3s): reason {:?}",
        s.phase().word(),
        s.reason
    );
    fleet.agent("host-2").proc.signal(Signal::SIGCONT);
    observer.count_as_down("host-2", false);
    let seen = observer.finish();
    seen.print(1, None);
    assert_eq!(s.phase(), Phase::Failed, "{s:?}");
    assert!(
        s.reason.to_lowercase().contains("progress"),
        "the reason does not mention progress: {:?}",
        s.reason
    );
    assert!(
        s.reason.contains("host-2"),
        "the reason does not name what blocked it (host-2): {:?}",
        s.reason
    );
    for h in &s.hosts {
        assert_eq!(
            h.state(),
            HostState::Pending,
            "{} started while the budget was full: {s:?}",
            h.host_id
        );
    }
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
