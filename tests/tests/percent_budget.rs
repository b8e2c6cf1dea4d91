//! Issue 14 item 4.4, a percent budget: `max_unavailable = "40%"` of 7 hosts is 2 (2.8 rounded
//! down; rounding up would allow 3), and `"10%"` of 7 is 1 (0.7 rounds down to 0, and a
//! budget is never below 1, else nothing could ever start). The spec's doc, the README and
//! `Budget::resolve` all say: rounds down, never below 1. Each host's restart keeps its
//! service down for 1.5 s, so the independent observer sees the budget fully used, and
//! would see a third host down if the budget were rounded up.

use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{brief, Fleet, FleetOpts, Mode, Observation};

const HOSTS: usize = 7;

/// Rolls `version` out with `max_unavailable = "{percent}%"` and returns what the observer
/// saw and the budget the coordinator resolved.
fn roll(fleet: &Fleet, version: &str, percent: u32) -> anyhow::Result<(Observation, u32)> {
    let observer = fleet.observe();
    let rel = fleet.release(version, Mode::Healthy)?;
    let spec = fleet.spec(
        &rel,
        &format!("max_unavailable = \"{percent}%\"\nmin_healthy_time = \"500ms\""),
    )?;
    let id = fleet.start_rollout(&spec)?;
    let resolved = fleet.status(&id)?.max_unavailable;
    println!("{percent}% of {HOSTS} hosts: the coordinator's budget is {resolved}");
    let s = fleet.wait_settled(&id, Duration::from_secs(120))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{}", brief(&s));
    fleet.wait_all_serving(version)?;
    let seen = observer.finish();
    seen.print(resolved as usize, None);
    Ok((seen, resolved))
}

#[test]
fn percent_budgets_round_down_and_never_below_one() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: HOSTS,
        start_delay_ms: 1500,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 7\nmin_healthy_time = \"200ms\"")?;

    let (seen, resolved) = roll(&fleet, "2.0.0", 40)?;
    assert!(
        seen.max_unavailable <= 2,
        "40% of {HOSTS} hosts: the observer saw {} down at once (budget 2, rounded down): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    // Otherwise the bound above proves nothing: the rollout must have used its budget.
    assert_eq!(
        seen.max_unavailable, 2,
        "the rollout never had 2 hosts down at once, so the budget was not exercised"
    );
    assert_eq!(
        resolved, 2,
        "40% of {HOSTS} hosts resolved to {resolved}, not 2"
    );

    let (seen, resolved) = roll(&fleet, "3.0.0", 10)?;
    assert_eq!(
        resolved, 1,
        "10% of {HOSTS} hosts resolved to {resolved}, not 1 (never below 1)"
    );
    assert_eq!(
        seen.max_unavailable, 1,
        "10% of {HOSTS} hosts: the observer saw {} down at once (budget 1): {:?}",
        seen.max_unavailable, seen.worst_set
    );
    Ok(())
}
