//! Groups are the ones fixed when the rollout was created (issue 9, item 6). Four hosts in two
//! sites, one unavailable per site. host-3 (site-0) is dead when the rollout starts, so site-0's
//! unit is taken and host-1 (site-0) waits. Mid-rollout host-3 comes back relabelled
//! `site = "site-7"`, and is still starting its service (unavailable). It must keep counting in
//! site-0: host-1 may not go until host-3 is healthy. Before the fix host-3 moved to a fresh
//! group of its own, site-0 looked empty, and host-1 went down beside it: 2 down in site-0.

use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{brief, Fleet, FleetOpts, Mode};

#[test]
fn a_relabelled_host_keeps_counting_in_its_group() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 4,
        sites: 2,
        start_delay_ms: 2500,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 4\nmin_healthy_time = \"200ms\"")?;
    assert_eq!(fleet.host("host-3").group, "site-0");
    assert_eq!(fleet.host("host-1").group, "site-0");
    let observer = fleet.observe_grouped();
    fleet.kill_host("host-3");
    fleet.wait("host-3 offline", Duration::from_secs(20), || {
        let hosts = fleet.hosts()?;
        Ok(hosts
            .iter()
            .any(|h| h.host_id == "host-3" && !h.connected)
            .then_some(()))
    })?;

    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 4\ngroup_by = \"site\"\nmax_unavailable_per_group = 1\n\
         min_healthy_time = \"300ms\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_status(&id, "site-0 to be full", Duration::from_secs(20), |s| {
        s.blocked_by.contains("site site-0 budget full")
    })?;
    println!("with host-3 dead: {} — {}", brief(&s), s.blocked_by);

    fleet.set_label("host-3", "site", "site-7")?;
    fleet.agent("host-3").proc.restart()?;
    println!("host-3 back, relabelled site-7, starting its service");
    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    println!("rollout: {}", brief(&s));
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    let h3 = s
        .hosts
        .iter()
        .find(|h| h.host_id == "host-3")
        .expect("host-3");
    assert_eq!(
        h3.group, "site-0",
        "the status shows the group fixed at creation"
    );
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    seen.print(4, Some(1));
    let site0 = seen.max_per_group.get("site-0").copied().unwrap_or(0);
    assert!(
        site0 <= 1,
        "site-0's budget broken: {site0} down at once: {:?}",
        seen.worst_per_group.get("site-0")
    );
    assert!(seen.max_unavailable <= 4, "{:?}", seen.worst_set);
    Ok(())
}
