//! The harness's own features, checked against real processes: leader lookup and failover
//! with several replicas, the coordinator supervisor, etcd restart, network namespaces with
//! cut/heal, the grouped observer, and releases that fail on chosen hosts. These pass with any
//! coordinator that elects a leader; the fault tests rely on them.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use rollgate_tests::{
    bin, free_port, http_get, service_version, wait_for, Fleet, FleetOpts, Observer, Proc,
};

#[test]
fn leader_is_read_from_etcd_and_moves_when_it_dies() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 0,
        coordinators: 2,
        ..FleetOpts::default()
    })?;
    let first = fleet.wait_leader(Duration::from_secs(10))?;
    println!("leader: {}", fleet.coordinators[first].id);
    let keys = fleet.etcd_get_prefix(&format!("{}leader/", rollgate_tests::ETCD_PREFIX))?;
    assert!(
        keys.iter().any(|(_, v)| v == &fleet.coordinators[first].id),
        "{keys:?}"
    );
    fleet.coordinators[first].kill9();
    let second = fleet.wait_leader_change(first, Duration::from_secs(15))?;
    assert_ne!(first, second);
    // The control client fails over to the live replica.
    fleet.hosts()?;
    // A replica killed by the harness stays down: the supervisor only restarts self-exits.
    std::thread::sleep(Duration::from_secs(1));
    assert!(fleet.coordinators[first].exited());
    assert!(fleet.coordinator_restarts().is_empty());
    Ok(())
}

#[test]
fn supervisor_restarts_a_coordinator_that_exits_on_its_own() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        ..FleetOpts::default()
    })?;
    let before = fleet.coordinator().pid();
    // SIGTERM: the coordinator shuts down cleanly by itself, as it does when its lease is lost.
    fleet.coordinator().signal(Signal::SIGTERM);
    fleet.wait(
        "the supervisor to restart it",
        Duration::from_secs(15),
        || {
            Ok((!fleet.coordinator_restarts().is_empty()
                && fleet.coordinator().pid() != before
                && !fleet.coordinator().exited())
            .then_some(()))
        },
    )?;
    fleet.wait_replica(0)?;
    fleet.wait_connected(1)?;
    println!("{:?}", fleet.coordinator_restarts());
    Ok(())
}

#[test]
fn etcd_restart_keeps_its_data_and_ports() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(FleetOpts {
        agents: 2,
        ..FleetOpts::default()
    })?;
    let prefix = format!("{}hosts/", rollgate_tests::ETCD_PREFIX);
    let before = fleet.etcd_get_prefix(&prefix)?;
    assert!(!before.is_empty(), "no host records in etcd");
    let endpoint = fleet.etcd.endpoint.clone();
    fleet.restart_etcd(Duration::from_millis(500))?;
    assert_eq!(fleet.etcd.endpoint, endpoint);
    let after = fleet.etcd_get_prefix(&prefix)?;
    let keys = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&before), keys(&after));
    // The fleet works again (the coordinator survived or was restarted by the supervisor).
    fleet.wait_coordinator()?;
    fleet.wait_connected(2)?;
    println!("supervisor: {:?}", fleet.coordinator_restarts());
    Ok(())
}

#[test]
fn netns_fleet_serves_cuts_heals_and_cleans_up() -> anyhow::Result<()> {
    let names: Vec<String>;
    {
        let fleet = Fleet::start(FleetOpts {
            agents: 2,
            netns: true,
            ..FleetOpts::default()
        })?;
        let net = fleet.net.as_ref().expect("netns fleet");
        names = net.hosts.iter().map(|h| h.ns.clone()).collect();
        println!(
            "bridge {} at {}; hosts {:?}",
            net.bridge, net.gateway, net.hosts
        );
        assert!(fleet.coordinator_addr().ip() == net.gateway);
        fleet.install("1.0.0", "max_unavailable = 2\nmin_healthy_time = \"200ms\"")?;
        let a1 = fleet.host("host-1").service_addr;
        assert_ne!(
            a1.ip(),
            Ipv4Addr::LOCALHOST,
            "observer must use the namespace address"
        );
        assert_eq!(fleet.serving("host-1").as_deref(), Some("1.0.0"));
        // The service is in its namespace, not on the root namespace's loopback.
        assert_eq!(service_version(a1.port()), None);

        fleet.cut("host-1")?;
        fleet.wait(
            "host-1 unreachable and offline",
            Duration::from_secs(15),
            || {
                let offline = fleet
                    .hosts()?
                    .iter()
                    .any(|h| h.host_id == "host-1" && !h.connected);
                Ok((offline && fleet.serving("host-1").is_none()).then_some(()))
            },
        )?;
        assert_eq!(fleet.serving("host-2").as_deref(), Some("1.0.0"));
        fleet.heal("host-1")?;
        fleet.wait("host-1 back", Duration::from_secs(30), || {
            let online = fleet
                .hosts()?
                .iter()
                .any(|h| h.host_id == "host-1" && h.connected);
            Ok((online && fleet.serving("host-1").is_some()).then_some(()))
        })?;
    }
    let list = String::from_utf8(Command::new("ip").args(["netns", "list"]).output()?.stdout)?;
    for n in &names {
        assert!(!list.contains(n.as_str()), "{n} left behind: {list}");
    }
    Ok(())
}

#[test]
fn grouped_observer_counts_per_group() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut svcs = Vec::new();
    let mut hosts = Vec::new();
    for (i, group) in ["a", "a", "b", "b"].iter().enumerate() {
        let port = free_port();
        let p = Proc::spawn(
            &format!("svc-{i}"),
            &[
                bin("rollgate-testsvc").display().to_string(),
                "--port".into(),
                port.to_string(),
                "--version".into(),
                "1".into(),
            ],
            &dir.path().join(format!("svc-{i}.log")),
        )?;
        wait_for("the service to answer", Duration::from_secs(10), || {
            Ok(service_version(port))
        })?;
        svcs.push(p);
        hosts.push((
            format!("h{i}"),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            group.to_string(),
        ));
    }
    let observer = Observer::start_grouped(hosts);
    // Both of group a down, then one of b.
    svcs[0].kill9();
    svcs[1].kill9();
    wait_for("2 down", Duration::from_secs(5), || {
        Ok((observer.max_so_far() >= 2).then_some(()))
    })?;
    svcs[2].kill9();
    wait_for("3 down", Duration::from_secs(5), || {
        Ok((observer.max_so_far() >= 3).then_some(()))
    })?;
    observer.count_as_down("h3", true);
    let seen = observer.finish();
    seen.print(4, Some(2));
    assert_eq!(seen.max_unavailable, 4);
    assert_eq!(seen.max_per_group.get("a"), Some(&2));
    assert_eq!(seen.max_per_group.get("b"), Some(&2));
    Ok(())
}

#[test]
fn release_failing_on_answers_unhealthy_only_on_those_hosts() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        ..FleetOpts::default()
    })?;
    let rel = fleet.release_failing_on("9.9.9", &["host-2"])?;
    for a in &fleet.agents {
        // Run the wrapper as the agent would (it appends --port), on a spare port.
        let port = free_port();
        let mut child = Command::new("sh")
            .arg(&rel.path)
            .args([
                "--port",
                &a.service_port.to_string(),
                "--port",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let got = fleet.wait("the release to answer", Duration::from_secs(10), || {
            Ok(http_get(&format!("127.0.0.1:{port}"), "/health").ok())
        });
        let _ = child.kill();
        let _ = child.wait();
        let (code, body) = got?;
        println!("{}: {code} {body}", a.id);
        let want = if a.id == "host-2" { 500 } else { 200 };
        assert_eq!(code, want, "{}: {body}", a.id);
    }
    Ok(())
}

/// No silent crashes (issue 14, item 2): an agent that dies of a signal the harness did not
/// send (here a raw SIGABRT, as an abort would), and a replica killed behind the harness's back
/// (as the OOM killer would; the supervisor restarts it), fail the test when the fleet is
/// dropped, naming the process and how it ended; a declared exit does not.
#[test]
fn an_unplanned_crash_fails_the_test_and_a_declared_one_does_not() -> anyhow::Result<()> {
    use rollgate_tests::Expected;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        ..FleetOpts::default()
    })?;
    let raw = |pid: Option<nix::unistd::Pid>, sig| {
        nix::sys::signal::kill(pid.expect("running"), sig).expect("signal sent")
    };
    raw(fleet.host("host-1").proc.pid(), Signal::SIGABRT);
    raw(fleet.coordinator().pid(), Signal::SIGKILL);
    wait_for(
        "the supervisor to restart coord-1",
        Duration::from_secs(10),
        || Ok((!fleet.coordinator_restarts().is_empty()).then_some(())),
    )?;
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(fleet)));
    let msg = match dropped {
        Ok(()) => panic!("the fleet was dropped without complaint after two unplanned crashes"),
        Err(p) => p.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    println!("{}", msg.lines().take(3).collect::<Vec<_>>().join("\n"));
    assert!(msg.contains("2 unplanned exit(s)"), "{msg}");
    assert!(msg.contains("host-1 crashed (signal: 6"), "{msg}");
    assert!(msg.contains("coord-1 crashed (signal: 9"), "{msg}");

    // The same crash, declared by the test: no complaint.
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        ..FleetOpts::default()
    })?;
    fleet.expect_exits("host-1", Expected::Crash, "this test aborts it");
    raw(fleet.host("host-1").proc.pid(), Signal::SIGABRT);
    wait_for("host-1 to die", Duration::from_secs(10), || {
        let p = fleet.host("host-1").proc.pid().expect("child");
        Ok(std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_or(true, |s| s.contains(") Z "))
            .then_some(()))
    })?;
    drop(fleet);
    Ok(())
}
