//! S1 per group: 9 hosts in 3 sites, `group_by = "site"`, `max_unavailable = 3`,
//! `max_unavailable_per_group = 1`. Every host is upgraded; the observer, which knows each
//! host's site, never sees more than 1 host of a site down, nor more than 3 overall. Sites are
//! laid out in blocks of consecutive hosts, so a planner that ignored them fails here.

use std::time::Duration;

use rollgate_tests::pb::Phase;
use rollgate_tests::{Fleet, FleetOpts, Mode, SiteLayout};

#[test]
fn nine_hosts_in_three_sites_at_most_one_down_per_site() -> anyhow::Result<()> {
    // 300 ms before each start binds: restarts are real outages the observer can see overlap.
    let fleet = Fleet::start(FleetOpts {
        agents: 9,
        start_delay_ms: 300,
        sites: 3,
        // host-1..3 in site-0, host-4..6 in site-1, ...: taking hosts in order while ignoring
        // the sites would put 3 of site-0 down at once.
        site_layout: SiteLayout::Blocks,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 9\nmin_healthy_time = \"200ms\"")?;

    let observer = fleet.observe_grouped();
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 3\ngroup_by = \"site\"\nmax_unavailable_per_group = 1\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"30s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(120))?;
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    seen.print(3, Some(1));
    println!(
        "status: group_by {:?}, groups {:?}",
        s.group_by,
        s.groups
            .iter()
            .map(|g| format!(
                "{}: {} hosts, budget {}",
                g.group, g.hosts, g.max_unavailable
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert_eq!(s.done, 9, "{s:?}");
    assert_eq!(seen.max_per_group.len(), 3, "{:?}", seen.max_per_group);
    for (site, worst) in &seen.max_per_group {
        assert!(
            *worst <= 1,
            "per-site budget broken: the observer saw {worst} hosts of {site} down at once: {:?}",
            seen.worst_per_group.get(site)
        );
    }
    assert!(
        seen.max_unavailable <= 3,
        "budget broken: the observer saw {} down (budget 3): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );
    assert!(
        seen.max_unavailable >= 1,
        "the observer never saw a host restart, so it observed nothing"
    );
    Ok(())
}
