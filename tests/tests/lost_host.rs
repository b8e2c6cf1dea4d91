//! Issue 14 item 4.2, a host lost mid-update that never returns: host X's agent and service
//! are kill -9'd (a power cut) while X verifies a good release and holds the only slot; it
//! never comes back. Before anything ends the rollout, X keeps its share of the budget
//! (nothing else starts) and shows `lost`. Then one of two things ends it, whichever is due
//! first:
//! - silent past its `healthy_deadline` and `lost_grace` (counted from its grant), X counts as
//!   failed; with `max_failures = 0` the rollout halts, naming X as lost;
//! - a `progress_deadline` shorter than that fails the rollout as stalled, naming X as lost,
//!   without counting X as failed (issue 12: being lost is no verdict on the release yet).
//!
//! A host that comes back within its grace is no failure: `lost_session.rs`.
//! Measured: the time from the rollout's start, the kill and X's last step to the end.

use std::time::{Duration, Instant};

use anyhow::bail;
use rollgate_tests::pb::{HostState, Phase, RolloutStatus};
use rollgate_tests::{brief, Fleet, FleetOpts, Mode};

const HEALTHY_DEADLINE: Duration = Duration::from_secs(4);
/// How late the end may come on a loaded machine (planning rounds, etcd, status polls).
const MARGIN: Duration = Duration::from_secs(8);
/// The step's stamp precedes the status poll that saw it by at most the polling gap.
const POLL_SLACK: Duration = Duration::from_secs(1);

/// Which deadline ends the rollout.
#[derive(Debug, Clone, Copy)]
enum Ends {
    /// `lost_grace` this long: X fails at healthy_deadline + grace after its grant.
    LostGrace(Duration),
    /// `progress_deadline` this long (default lost_grace, 5m): the stall ends it.
    Progress(Duration),
}

impl Ends {
    fn strategy(self) -> String {
        let (progress, grace) = match self {
            Ends::LostGrace(g) => (
                Duration::from_secs(60),
                format!("lost_grace = \"{}s\"", g.as_secs()),
            ),
            Ends::Progress(p) => (p, String::new()),
        };
        format!(
            "max_unavailable = 1\nmax_failures = 0\nmin_healthy_time = \"3s\"\n\
             healthy_deadline = \"{}s\"\nprogress_deadline = \"{}s\"\n{grace}",
            HEALTHY_DEADLINE.as_secs(),
            progress.as_secs()
        )
    }
}

#[test]
fn a_host_lost_for_good_fails_after_its_healthy_deadline_and_lost_grace() -> anyhow::Result<()> {
    let grace = Duration::from_secs(4);
    let (s, t) = lose_a_host(Ends::LostGrace(grace))?;
    let fails_after = HEALTHY_DEADLINE + grace;
    assert!(
        t.after_start >= fails_after,
        "failed before healthy_deadline + lost_grace ({fails_after:?}): {:?} after the rollout \
         started",
        t.after_start
    );
    assert!(
        t.after_step <= fails_after + MARGIN,
        "failed too late: {:?} after X was seen verifying",
        t.after_step
    );
    for word in [
        "lost mid-update",
        "max_failures",
        "lost_grace (4s)",
        t.x.as_str(),
    ] {
        assert!(
            s.reason.contains(word),
            "the reason does not say {word:?}: {:?}",
            s.reason
        );
    }
    assert_eq!(s.failed, 1, "{}", brief(&s));
    Ok(())
}

#[test]
fn a_host_lost_for_good_ends_a_shorter_progress_deadline_as_a_stall() -> anyhow::Result<()> {
    let progress = Duration::from_secs(12);
    let (s, t) = lose_a_host(Ends::Progress(progress))?;
    assert!(
        t.after_step + POLL_SLACK >= progress,
        "failed before the progress deadline: {:?}",
        t.after_step
    );
    assert!(
        t.after_kill <= progress + MARGIN,
        "failed too late: {:?} after the kill",
        t.after_kill
    );
    for word in ["progress_deadline", "lost mid-update", t.x.as_str()] {
        assert!(
            s.reason.contains(word),
            "the reason does not say {word:?}: {:?}",
            s.reason
        );
    }
    assert!(
        !s.reason.contains("max_failures"),
        "being lost within its grace was taken as a failure of the release: {:?}",
        s.reason
    );
    assert_eq!(s.failed, 0, "{}", brief(&s));
    Ok(())
}

/// When the rollout ended, from the rollout's start, the kill and X's last step seen.
struct Timing {
    x: String,
    after_start: Duration,
    after_kill: Duration,
    after_step: Duration,
}

/// Starts a rollout of a good release at budget 1, kills X while it verifies, checks that
/// nothing moves and X shows lost until the first deadline is due, and returns the failed
/// rollout's status.
fn lose_a_host(ends: Ends) -> anyhow::Result<(RolloutStatus, Timing)> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let observer = fleet.observe();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v2, &ends.strategy())?;
    // X's grant comes after this (possibly before start_rollout returns): a lost failure may
    // not come before this + deadline + grace.
    let started = Instant::now();
    let id = fleet.start_rollout(&spec)?;
    let (s, x) = fleet.wait_verifying(&id)?;
    let seen_verifying = Instant::now();
    let others: Vec<(String, HostState)> = s
        .hosts
        .iter()
        .filter(|h| h.host_id != x)
        .map(|h| (h.host_id.clone(), h.state()))
        .collect();
    fleet.kill_host(&x);
    let killed = Instant::now();
    println!("kill -9 of {x}'s agent and service while it verifies 2.0.0; it never comes back");

    // Until the first deadline: still rolling, no failure, nobody else moves, and X shows
    // lost once its session is gone.
    let quiet = match ends {
        Ends::LostGrace(g) => (HEALTHY_DEADLINE + g).saturating_sub(started.elapsed()),
        Ends::Progress(p) => p.saturating_sub(seen_verifying.elapsed()),
    } - POLL_SLACK;
    let last = hold_still(&fleet, &id, &x, &others, quiet, killed)?;
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
    let t = Timing {
        x,
        after_start: started.elapsed(),
        after_kill: killed.elapsed(),
        after_step: seen_verifying.elapsed(),
    };
    println!(
        "{ends:?}: failed {:.1?} after the kill, {:.1?} after the rollout started, {:.1?} after \
         X was seen verifying (healthy_deadline {HEALTHY_DEADLINE:?}, margin {MARGIN:?}): {}",
        t.after_kill, t.after_start, t.after_step, s.reason
    );
    let seen = observer.finish();
    seen.print(1, None);
    assert_eq!(s.phase(), Phase::Failed, "{}", brief(&s));
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    Ok((s, t))
}

/// For `window`: the rollout stays rolling with no failure and no host but X moves.
fn hold_still(
    fleet: &Fleet,
    id: &str,
    x: &str,
    others: &[(String, HostState)],
    window: Duration,
    killed: Instant,
) -> anyhow::Result<RolloutStatus> {
    let mut x_states = Vec::new();
    let last = fleet.hold_for(id, window, |s| {
        if s.phase() != Phase::Rolling || s.failed != 0 {
            bail!(
                "ended early, {:?} after the kill: {} {}",
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
    Ok(last)
}
