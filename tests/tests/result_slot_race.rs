//! No slot outlives its recorded result (S2; nemesis seed 1061). The race: a host whose
//! grant's slot vanished (its old holder's lease ran out) reconnects, and its hello's result is
//! recorded while this replica's order dispatcher re-attaches the grant, i.e. puts the slot
//! back. If the result's transaction read "no slot" before the re-attach and did not compare
//! it, the step became done and the re-attached slot stayed, bound to a live lease: a done host
//! held a share of the budget for ever and the rollout never finished.
//!
//! Forced here with the test-only pause point `before-result-commit` (cargo feature
//! `fault-injection`): host X's link is cut while it verifies, its slot is deleted (what its
//! holder's lease running out does), its update finishes during the cut, and the link heals;
//! the coordinator reads X's step and "no slot" for the hello's result and pauses; the test
//! puts the slot back (what the dispatcher's re-attach does) and lets it go on. The slot must
//! be gone, X done, and the other host granted: the rollout succeeds. Two protections make it
//! so, each enough here: the result's transaction compares the slot as read (absent
//! included) and reads again when it lost the race; and a repeated result of a recorded grant
//! drops a slot left of that grant. With both taken out (the code before this fix) the slot
//! stays and the other host is never granted: "budget full: 1/1 unavailable (host-1
//! updating)" with host-1 done, the state seed 1061 ended in.

use std::path::Path;
use std::time::{Duration, Instant};

use rollgate_tests::pb::Phase;
use rollgate_tests::{brief, wait_for, Fleet, FleetOpts, Mode, ETCD_PREFIX};

const POINT: &str = "before-result-commit";

fn slots(fleet: &Fleet) -> anyhow::Result<Vec<(String, String)>> {
    fleet.etcd_get_prefix(&format!("{ETCD_PREFIX}slots/"))
}

#[test]
fn a_slot_re_attached_while_the_result_is_recorded_is_dropped_with_it() -> anyhow::Result<()> {
    let pause = tempfile::tempdir()?;
    let wrap = format!(
        "ROLLGATE_TEST_PAUSE_DIR={} ROLLGATE_TEST_PAUSE_POINTS={POINT}",
        pause.path().display()
    );
    let mut opts = FleetOpts {
        agents: 2,
        netns: true,
        ..FleetOpts::default()
    };
    opts.coordinator_wrap = std::iter::once("env".to_string())
        .chain(wrap.split(' ').map(str::to_string))
        .collect();
    let fleet = Fleet::start(opts)?;
    let v1 = fleet.release("1.0.0", Mode::Healthy)?;
    let spec = fleet.spec(&v1, "max_unavailable = 1\nmin_healthy_time = \"8s\"")?;
    let id = fleet.start_rollout(&spec)?;
    let (s, x) = fleet.wait_verifying(&id)?;
    let other = s
        .hosts
        .iter()
        .find(|h| h.host_id != x)
        .map(|h| h.host_id.clone())
        .expect("two hosts");

    // X goes away mid-update; once the coordinator has dropped its session (so nothing
    // re-attaches its grant at once), its slot vanishes as with an old holder's lease.
    fleet.cut(&x)?;
    let session = format!("{ETCD_PREFIX}sessions/{x}");
    wait_for(
        "the coordinator to drop X's session",
        Duration::from_secs(20),
        || {
            let left = fleet.etcd_get_prefix(&session)?;
            Ok(left.is_empty().then_some(()))
        },
    )?;
    let (slot_key, slot_value) = slots(&fleet)?
        .into_iter()
        .find(|(k, _)| k.ends_with(&format!("/{x}")))
        .ok_or_else(|| anyhow::anyhow!("no slot of {x}"))?;
    fleet.etcd_delete(&slot_key)?;
    println!("cut {x} while it verifies and deleted its slot {slot_key}");
    // Its update finishes during the cut (min_healthy_time 8 s); then it comes back.
    let log = fleet
        .agents
        .iter()
        .find(|a| a.id == x)
        .map(|a| a.proc.log.clone())
        .expect("x is an agent");
    wait_for(
        "X's order to finish during the cut",
        Duration::from_secs(40),
        || {
            Ok(std::fs::read_to_string(&log)?
                .contains("order finished: succeeded")
                .then_some(()))
        },
    )?;
    fleet.heal(&x)?;

    let paused = wait_for(
        "the coordinator to pause before recording X's result",
        Duration::from_secs(30),
        || Ok(std::fs::read_to_string(pause.path().join(format!("{POINT}.paused"))).ok()),
    )?;
    println!("paused: {paused}");
    assert!(
        paused.contains(&x) && paused.contains("no slot"),
        "the pause came at another result than X's hello result with its slot gone: {paused}"
    );
    // The dispatcher's re-attach, between the result's reads and its write.
    fleet.etcd_put(&slot_key, &slot_value)?;
    std::fs::write(pause.path().join(format!("{POINT}.go")), "")?;
    let resumed = Instant::now();

    let end = fleet.wait_status(&id, "the rollout to end", Duration::from_secs(40), |s| {
        s.phase() != Phase::Rolling
    });
    let left = slots(&fleet)?;
    let s = match end {
        Ok(s) => s,
        Err(e) => panic!(
            "the rollout did not end after the result was recorded ({e:#}); slots left: \
             {left:?}; {other} waits behind {x}'s slot"
        ),
    };
    println!(
        "{:.1?} after the result went on: {} ({}); slots left: {left:?}",
        resumed.elapsed(),
        s.phase().word(),
        brief(&s)
    );
    assert_eq!(s.phase(), Phase::Succeeded, "{}", brief(&s));
    assert!(left.is_empty(), "a slot outlived its result: {left:?}");
    assert_each_result_recorded_once(&fleet.coordinators[0].log())?;
    Ok(())
}

/// Each of the two hosts' results is recorded exactly once ("host updated and healthy"): the
/// result whose transaction lost the race was read again and recorded, not twice, not lost.
fn assert_each_result_recorded_once(log: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log)?;
    let done = text.matches("host updated and healthy").count();
    assert_eq!(
        done,
        2,
        "each host's result recorded once: {done} in {}",
        log.display()
    );
    Ok(())
}
