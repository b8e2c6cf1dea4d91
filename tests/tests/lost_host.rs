//! Issue 14 item 4.2, a host lost mid-update that never returns: host X's agent and service
//! are kill -9'd (a power cut) while X verifies a good release and holds the only slot; it
//! never comes back. Being lost is no verdict on the release (issue 12: no failure after a
//! grace, `max_failures` untouched), so nothing happens at `healthy_deadline`; X keeps its
//! share of the budget (S2: nothing else starts) and shows `lost`, and the rollout fails at
//! its `progress_deadline` (L1), counted from X's last step, with a reason that names X as
//! lost. Measured: the time from the kill to the failure, against both deadlines.

use std::time::{Duration, Instant};

use anyhow::bail;
use rollgate_tests::pb::{HostState, Phase, Step};
use rollgate_tests::{brief, Fleet, FleetOpts, Mode};

const HEALTHY_DEADLINE: Duration = Duration::from_secs(4);
const PROGRESS_DEADLINE: Duration = Duration::from_secs(12);
/// How late the failure may come on a loaded machine (planning rounds, etcd, status polls).
const MARGIN: Duration = Duration::from_secs(8);
/// The step's stamp precedes the status poll that saw it by at most the polling gap.
const POLL_SLACK: Duration = Duration::from_secs(1);

#[test]
fn a_host_lost_for_good_ends_the_rollout_at_its_progress_deadline() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        &format!(
            "max_unavailable = 1\nmax_failures = 0\nmin_healthy_time = \"3s\"\n\
             healthy_deadline = \"{}s\"\nprogress_deadline = \"{}s\"",
            HEALTHY_DEADLINE.as_secs(),
            PROGRESS_DEADLINE.as_secs()
        ),
    )?;
    let id = fleet.start_rollout(&spec)?;
    let verifying = |s: &rollgate_tests::pb::RolloutStatus| {
        s.hosts
            .iter()
            .find(|h| h.state() == HostState::Updating && h.step() == Step::Verifying)
            .map(|h| h.host_id.clone())
    };
    let s = fleet.wait_status(&id, "a host verifying", Duration::from_secs(60), |s| {
        verifying(s).is_some()
    })?;
    let seen_verifying = Instant::now();
    let x = verifying(&s).expect("checked above");
    let others: Vec<(String, HostState)> = s
        .hosts
        .iter()
        .filter(|h| h.host_id != x)
        .map(|h| (h.host_id.clone(), h.state()))
        .collect();
    fleet.kill_host(&x);
    let killed = Instant::now();
    println!("kill -9 of {x}'s agent and service while it verifies 2.0.0; it never comes back");

    // Until the progress deadline: still rolling, no failure, nobody else moves, and X shows
    // lost once its session is gone.
    let quiet = PROGRESS_DEADLINE - POLL_SLACK - seen_verifying.elapsed();
    let mut x_states = Vec::new();
    let last = fleet.hold_for(&id, quiet, |s| {
        if s.phase() != Phase::Rolling || s.failed != 0 {
            bail!(
                "ended early, {:?} after the kill (healthy_deadline {HEALTHY_DEADLINE:?}, \
                 progress_deadline {PROGRESS_DEADLINE:?}): {} {}",
                killed.elapsed(),
                s.phase().word(),
                s.reason
            );
        }
        for h in &s.hosts {
            if h.host_id == x {
                if x_states.last() != Some(&h.state()) {
                    x_states.push(h.state());
                }
            } else if !others.contains(&(h.host_id.clone(), h.state())) {
                bail!("{} moved while {x} held the only slot", h.host_id);
            }
        }
        Ok(())
    })?;
    println!(
        "{:?} after the kill: still rolling; {x} went {x_states:?}; blocked_by: {}",
        killed.elapsed(),
        last.blocked_by
    );
    let hx = last.hosts.iter().find(|h| h.host_id == x).expect("x");
    assert_eq!(
        hx.state(),
        HostState::Lost,
        "{x} is not shown lost: {}",
        brief(&last)
    );
    assert!(
        last.blocked_by.contains("lost mid-update") && last.blocked_by.contains(&x),
        "blocked_by does not name {x} as lost: {:?}",
        last.blocked_by
    );

    let s = fleet.wait_status(&id, "the rollout to fail", MARGIN * 2, |s| {
        s.phase() != Phase::Rolling
    })?;
    let after_kill = killed.elapsed();
    let after_step = seen_verifying.elapsed();
    println!(
        "failed {after_kill:.1?} after the kill ({after_step:.1?} after its last step was seen; \
         healthy_deadline {HEALTHY_DEADLINE:?}, progress_deadline {PROGRESS_DEADLINE:?}, \
         margin {MARGIN:?}): {}",
        s.reason
    );
    let seen = observer.finish();
    seen.print(1, None);
    assert_eq!(s.phase(), Phase::Failed, "{}", brief(&s));
    assert!(
        after_step + POLL_SLACK >= PROGRESS_DEADLINE,
        "failed before the progress deadline: {after_step:?}"
    );
    assert!(
        after_kill <= PROGRESS_DEADLINE + MARGIN,
        "failed too late: {after_kill:?} after the kill"
    );
    for word in ["progress_deadline", "lost mid-update", x.as_str()] {
        assert!(
            s.reason.contains(word),
            "the reason does not say {word:?}: {:?}",
            s.reason
        );
    }
    assert!(
        !s.reason.contains("max_failures"),
        "being lost was taken as a failure of the release: {:?}",
        s.reason
    );
    assert_eq!(s.failed, 0, "{}", brief(&s));
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok(())
}
