//! An unreadable release is not "never ran" (issue 9, item 7). host-3's current release
//! metadata is damaged: its agent can no longer say what runs there and reports it broken
//! (UNHEALTHY, version ""). The coordinator must count that as an outage: with
//! `max_unavailable = 1` the rollout repairs host-3 first (upgrading a host that is already
//! unavailable adds nothing) and starts no other host while host-3 is out of service. Before
//! the fix an empty version read as "never ran the service": host-3 counted for nothing and the
//! rollout took host-1 down beside it.

use std::time::Duration;

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{brief, Fleet, FleetOpts, Mode};

#[test]
fn a_host_whose_release_cannot_be_read_counts_as_down() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        start_delay_ms: 500,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let meta = fleet
        .host("host-3")
        .state_dir
        .join("services/web/current/.release.json")
        .canonicalize()?;
    std::fs::write(&meta, b"{not json")?;
    println!("damaged {}", meta.display());
    let broken = fleet.wait(
        "host-3 to report itself broken",
        Duration::from_secs(20),
        || {
            let hosts = fleet.hosts()?;
            let s = hosts
                .iter()
                .find(|h| h.host_id == "host-3")
                .and_then(|h| h.services.first().cloned());
            Ok(s.filter(|s| s.health() == rollgate_proto::pb::Health::Unhealthy))
        },
    )?;
    println!("host-3 reports: {:?} {:?}", broken.version, broken.detail);
    assert!(broken.detail.contains(".release.json"), "{}", broken.detail);

    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let id = fleet
        .start_rollout(&fleet.spec(&v2, "max_unavailable = 1\nmin_healthy_time = \"300ms\"")?)?;
    let first = fleet.status(&id)?;
    println!("at start: {} — {}", brief(&first), first.blocked_by);
    // Until host-3 is repaired, no other host may leave `pending`.
    let order = std::cell::RefCell::new(Vec::<String>::new());
    let s = fleet.wait_status(&id, "host-3 repaired", Duration::from_secs(60), |s| {
        let repaired = s
            .hosts
            .iter()
            .any(|h| h.host_id == "host-3" && h.state() == HostState::Done);
        let mut order = order.borrow_mut();
        for h in s
            .hosts
            .iter()
            .filter(|h| h.state() != HostState::Pending && !repaired)
        {
            if !order.contains(&h.host_id) {
                order.push(h.host_id.clone());
            }
        }
        repaired
    })?;
    println!("host-3 repaired: {}", brief(&s));
    let order = order.into_inner();
    assert_eq!(
        order.first().map(String::as_str),
        Some("host-3"),
        "another host went first while host-3 was broken: {order:?}"
    );
    assert_eq!(
        order.len(),
        1,
        "another host started while host-3 was broken (budget 1): {order:?}"
    );
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    fleet.wait_all_serving("2.0.0")?;
    Ok(())
}
