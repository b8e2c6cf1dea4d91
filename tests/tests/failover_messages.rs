//! Messages that point the right way under faults:
//!
//! - a leader SIGSTOPped past its lease TTL and continued says it lost leadership because its
//!   lease expired, not that the leader key "holds a value rollgate cannot read … written by
//!   another version or by hand";
//! - a CLI whose certificate comes from another CA is told that the coordinator refused this
//!   certificate (naming the file and the fix), not "Is rollgate-coordinator running?", which
//!   stays the hint for a refused connection.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rollgate_tests::pki::Pki;
use rollgate_tests::{bin, free_port, wait_for, Expected, Fleet, FleetOpts, LEASE_TTL_SECS};

/// What the old code said about its own lost leadership.
const MISLEADING: &str = "written by another version or by hand";

#[test]
fn a_leader_paused_past_its_lease_says_it_lost_leadership() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        coordinators: 2,
        supervise: true,
        ..FleetOpts::default()
    })?;
    fleet.expect_exits(
        "coordinators",
        Expected::Exit,
        "a leader stopped past its lease TTL ends when it wakes (its lease is gone)",
    );
    let old = fleet.wait_leader(Duration::from_secs(10))?;
    let c = &fleet.coordinators[old];
    let mark = std::fs::metadata(c.log())?.len() as usize;
    c.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    fleet.wait_leader_change(old, Duration::from_secs(15))?;
    let past_ttl = Duration::from_secs(LEASE_TTL_SECS) + Duration::from_secs(1);
    if let Some(rest) = past_ttl.checked_sub(stopped.elapsed()) {
        std::thread::sleep(rest);
    }
    c.signal(Signal::SIGCONT);
    println!("SIGCONT {} after {:?}", c.id, stopped.elapsed());

    let said = wait_for(
        "the woken replica to say it lost leadership",
        Duration::from_secs(15),
        || {
            let text = std::fs::read_to_string(c.log())?;
            let new = text.get(mark..).unwrap_or_default();
            Ok(new
                .lines()
                .find(|l| {
                    l.contains("lost leadership") && l.contains("lease") && l.contains("expired")
                })
                .map(str::to_string))
        },
    );
    let line = said.inspect_err(|_| fleet.dump_logs())?;
    println!("it said: {line}");
    // Whatever else it logged from waking up to exiting (or campaigning again).
    std::thread::sleep(Duration::from_secs(1));
    let text = std::fs::read_to_string(c.log())?;
    let woke: Vec<&str> = text.get(mark..).unwrap_or_default().lines().collect();
    for l in woke
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
    {
        println!("  {l}");
    }
    assert!(
        !woke.iter().any(|l| l.contains(MISLEADING)),
        "the deposed leader blamed the leader key's contents: {woke:#?}"
    );
    Ok(())
}

#[test]
fn cli_with_a_certificate_from_another_ca_is_told_the_coordinator_refused_it() -> anyhow::Result<()>
{
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        ..FleetOpts::default()
    })?;
    let url = fleet.coordinator().url();
    // An operator certificate from another fleet's CA (same fleet name, even), presented with
    // the right fleet CA for checking the coordinator.
    let other = Pki::init(&fleet.dir.join("other-pki"))?;
    let foreign = other.operator()?;
    let out = Command::new(bin("rollgate"))
        .args(["--coordinator", &url, "--ca"])
        .arg(fleet.pki.ca())
        .arg("--cert")
        .arg(&foreign.cert)
        .arg("--key")
        .arg(&foreign.key)
        .arg("hosts")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("foreign CA: exit {:?}: {err}", out.status.code());
    assert!(!out.status.success(), "{err}");
    let want = format!(
        "the coordinator at {url} refused this certificate ({})",
        foreign.cert.display()
    );
    assert!(err.contains(&want), "want {want:?} in: {err}");
    assert!(
        err.contains("signed by the fleet CA") && err.contains("rollgate certs issue operator"),
        "no fix named: {err}"
    );
    assert!(!err.contains("Is rollgate-coordinator running"), "{err}");

    // Nothing listening: the "is it running?" hint stays.
    let nowhere = format!("https://127.0.0.1:{}", free_port());
    let out = Command::new(bin("rollgate"))
        .args(["--coordinator", &nowhere])
        .args(fleet.operator.cli_args())
        .arg("hosts")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("nothing listening: exit {:?}: {err}", out.status.code());
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "cannot reach the coordinator at {nowhere}: connection refused"
        )) && err.contains("Is rollgate-coordinator running?"),
        "{err}"
    );
    Ok(())
}
