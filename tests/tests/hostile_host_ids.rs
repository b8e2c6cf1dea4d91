//! Issue 10, item 1 (S9): one compromised host must not freeze the control plane. The host
//! (its own real certificate, a hand-written session) is granted a slot in rollout R, then
//! sends ids that are not rollout ids (`R/hosts/host-evil`, `R/../x`) and the id of a rollout
//! that does not target it. Nothing may be written for them, each refusal is logged naming the
//! host, and `rollout status R`, `rollout list` and the leader keep working. Then a bad value
//! written straight into etcd under one rollout degrades that rollout alone: `list` shows the
//! others and names the broken key, `status` of another rollout works, and the leader still
//! drives another rollout to success.

mod hostile_host_peer;

use std::time::Duration;

use hostile_host_peer::{coordinator_log, etcd_put, service, spec_for, HostilePeer};
use rollgate_proto::pb;
use rollgate_proto::pb::agent_message::Msg;
use rollgate_tests::pb::Phase;
use rollgate_tests::{Fleet, FleetOpts, Mode, ETCD_PREFIX};

const EVIL: &str = "host-evil";
/// How long the test watches for a stray key after the hostile messages.
const WATCH_WINDOW: Duration = Duration::from_secs(3);

fn rollout_keys(fleet: &Fleet) -> anyhow::Result<Vec<String>> {
    Ok(fleet
        .etcd_get_prefix(&format!("{ETCD_PREFIX}rollouts/"))?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

#[test]
fn hostile_ids_are_refused_and_a_bad_record_degrades_one_rollout() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        ..Default::default()
    })?;
    // R0: host-1 only, ended (a rollout that does not target the hostile host).
    let v1 = fleet.release("1.0.0", Mode::Healthy)?;
    let r0 =
        fleet.start_rollout(&fleet.spec_for_hosts(&v1, "max_unavailable = 1", &["host-1"])?)?;
    fleet.wait_settled(&r0, Duration::from_secs(60))?;

    let peer = HostilePeer::connect(
        &fleet,
        pb::Hello {
            host_id: EVIL.into(),
            agent_version: "evil".into(),
            services: vec![service("web", "1.0.0"), service("api", "1.0.0")],
            ..Default::default()
        },
        false,
    )?;
    fleet.wait(
        "the hostile host to connect",
        Duration::from_secs(10),
        || {
            Ok(fleet
                .hosts()?
                .iter()
                .any(|h| h.host_id == EVIL && h.connected)
                .then_some(()))
        },
    )?;
    // R: host-evil only; it holds its slot (it never answers the order).
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let r = fleet.start_rollout(&fleet.spec_for_hosts(&v2, "max_unavailable = 1", &[EVIL])?)?;
    fleet.wait_status(
        &r,
        "host-evil to hold its slot",
        Duration::from_secs(30),
        |s| s.hosts.iter().any(|h| h.host_id == EVIL && h.holds_slot),
    )?;
    let token = fleet.wait(
        "the order to reach host-evil",
        Duration::from_secs(10),
        || Ok(peer.updates().first().map(|o| o.token)),
    )?;
    let before = rollout_keys(&fleet)?;

    let hostile_ids = [format!("{r}/hosts/{EVIL}"), format!("{r}/../x"), r0.clone()];
    for rid in &hostile_ids {
        peer.send(Msg::Staged(pb::StageResult {
            rollout_id: rid.clone(),
            service: "web".into(),
            ok: true,
            ..Default::default()
        }))?;
        peer.send(Msg::Progress(pb::OrderProgress {
            rollout_id: rid.clone(),
            token,
            service: "web".into(),
            message: "hostile".into(),
            ..Default::default()
        }))?;
        peer.send(Msg::Result(pb::OrderResult {
            rollout_id: rid.clone(),
            token,
            service: "web".into(),
            outcome: pb::Outcome::Succeeded as i32,
            ..Default::default()
        }))?;
    }
    let start = std::time::Instant::now();
    while start.elapsed() < WATCH_WINDOW {
        let now = rollout_keys(&fleet)?;
        let stray: Vec<&String> = now.iter().filter(|k| !before.contains(k)).collect();
        println!("stray keys so far: {stray:?}");
        assert!(stray.is_empty(), "a hostile host wrote {stray:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = fleet.cli_ok(&["rollout", "status", &r])?;
    println!("rollout status {r} still works:\n{status}");
    let list = fleet.cli_ok(&["rollout", "list"])?;
    println!("rollout list still works:\n{list}");
    let log = coordinator_log(&fleet);
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(EVIL) && l.contains("refused"))
        .collect();
    println!("refusals logged:\n{}", refusals.join("\n"));
    for rid in &hostile_ids {
        assert!(
            refusals.iter().any(|l| l.contains(rid.as_str())),
            "no refusal naming host-evil and {rid:?} in the coordinator's log"
        );
    }

    // One bad record (written by hand) under R0 degrades R0 alone.
    let broken = format!("{ETCD_PREFIX}rollouts/{r0}/hosts/host-1");
    etcd_put(&fleet, &broken, "not json")?;
    let list = fleet.cli_ok(&["rollout", "list"])?;
    println!("rollout list with a broken record:\n{list}");
    assert!(
        list.contains(&r),
        "the healthy rollout {r} is missing:\n{list}"
    );
    assert!(
        list.contains(&broken),
        "the broken key is not named:\n{list}"
    );
    let out = fleet.cli(&["rollout", "status", &r0])?;
    let err = String::from_utf8_lossy(&out.stderr);
    println!("rollout status {r0}: {err}");
    assert!(!out.status.success() && err.contains(&broken), "{err}");
    fleet.cli_ok(&["rollout", "status", &r])?;

    // The leader skips the broken one and still drives another rollout: R (broken now too,
    // by hand) is skipped, an `api` rollout on host-evil (answering with success) finishes.
    etcd_put(
        &fleet,
        &format!("{ETCD_PREFIX}rollouts/{r}/hosts/{EVIL}"),
        "{",
    )?;
    drop(peer);
    let _peer = HostilePeer::connect(
        &fleet,
        pb::Hello {
            host_id: EVIL.into(),
            services: vec![service("api", "1.0.0")],
            ..Default::default()
        },
        true,
    )?;
    let api = fleet.start_rollout(&spec_for(&fleet, "api", "2.0.0", &[EVIL])?)?;
    let s = fleet.wait_settled(&api, Duration::from_secs(30))?;
    println!("api rollout beside the broken one: {}", s.phase().word());
    assert_eq!(s.phase(), Phase::Succeeded);
    let log = coordinator_log(&fleet);
    let skipped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("rollout {r}: cannot read it")))
        .collect();
    println!(
        "leader's lines about the broken rollout {r} (rate-limited): {}\n{}",
        skipped.len(),
        skipped.join("\n")
    );
    assert_eq!(
        skipped.len(),
        1,
        "the leader logs a broken rollout once a minute"
    );
    Ok(())
}
