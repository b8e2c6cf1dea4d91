//! A coordinator replica cut off from etcd while its agents stay connected to it (issue 14,
//! item 4 D). Each replica reaches etcd through its own cuttable proxy ([`TcpProxy`]); the
//! leader's proxy black-holes mid-rollout (a partition: nothing crosses, nothing is refused),
//! while its agents' streams to it stay up. Within its lease TTL the cut leader must stop
//! granting (no slot it granted is committed after cut + TTL + margin; evidence: every slot
//! put in etcd's history, with its `granted_by`), and its agents must move to the replica that
//! still reaches etcd (their session keys name it), where the rollout finishes within budget.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{bin, Cut, Expected, Fleet, FleetOpts, Mode, ETCD_PREFIX, LEASE_TTL_SECS};

/// Slack on top of the lease TTL for "stopped granting" (timer granularity, a loaded machine).
const GRANT_MARGIN: Duration = Duration::from_secs(1);
/// Bound on the agents' move: the TTL, the cut replica's shutdown (its sessions' last etcd
/// writes time out), the agents' reconnect backoff, and a loaded machine.
const MOVE_BOUND: Duration = Duration::from_secs(20);
/// How long the partition lasts: well past the TTL, so that a grant held in the proxy would be
/// delivered long after the cut replica's lease expired.
const CUT_FOR: Duration = Duration::from_secs(3 * LEASE_TTL_SECS);

/// One slot put in etcd's history.
#[derive(Debug)]
struct Grant {
    revision: i64,
    host: String,
    token: u64,
    granted_by: String,
}

#[test]
fn leader_cut_from_etcd_stops_granting_within_its_ttl_and_its_agents_move() -> anyhow::Result<()> {
    let ttl = Duration::from_secs(LEASE_TTL_SECS);
    let fleet = Fleet::start(FleetOpts {
        agents: 4,
        coordinators: 2,
        start_delay_ms: 200,
        etcd_via_proxy: true,
        ..FleetOpts::default()
    })?;
    fleet.expect_exits(
        "coordinators",
        Expected::Exit,
        "a replica cut off etcd for a lease TTL exits by design",
    );
    let (observer, id, _) = fleet.mid_rollout(
        "max_unavailable = 1\nmin_healthy_time = \"1s\"\nhealthy_deadline = \"30s\"",
        "a first host granted",
        |s| s.hosts.iter().any(|h| h.state() != HostState::Pending),
    )?;
    let cut = fleet.wait_leader(Duration::from_secs(10))?;
    let cut_id = fleet.coordinators[cut].id.clone();
    let other_id = fleet.coordinators[1 - cut].id.clone();
    let on_cut: Vec<String> = sessions(&fleet)?
        .into_iter()
        .filter(|(_, r)| *r == cut_id)
        .map(|(h, _)| h)
        .collect();
    assert!(
        !on_cut.is_empty(),
        "no agent streams to the leader {cut_id}"
    );

    // The release's bytes on the replica that stays up too: an artifact lives in the store of
    // the replica it was pushed to, and a replica cut off etcd is not running for long; the
    // hosts granted meanwhile would give up fetching from it (this test is about grants).
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let out = std::process::Command::new(bin("rollgate"))
        .arg("--coordinator")
        .arg(fleet.coordinators[1 - cut].url())
        .args(fleet.operator.cli_args())
        .args(["artifact", "push"])
        .arg(&v2.path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "artifact push to {other_id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rev_cut = fleet.etcd_revision()?;
    fleet.etcd_proxy(cut).cut(Cut::BlackHole);
    let t_cut = Instant::now();
    println!("cut {cut_id} (the leader, holding {on_cut:?}) off etcd at revision {rev_cut}");

    // One poll: when leadership left the cut replica, when every agent streamed to the other
    // one, and etcd's revision at cut + TTL + margin (no grant of the cut replica may be
    // committed after it).
    let (mut led, mut moved, mut rev_deadline) = (None, None, None);
    fleet.wait(
        &format!("leadership and {on_cut:?} to move from {cut_id} to {other_id}"),
        MOVE_BOUND,
        || {
            if rev_deadline.is_none() && t_cut.elapsed() >= ttl + GRANT_MARGIN {
                rev_deadline = Some((fleet.etcd_revision()?, t_cut.elapsed()));
            }
            if led.is_none() && fleet.leader()?.is_some_and(|l| l != cut) {
                led = Some(t_cut.elapsed());
            }
            let s = sessions(&fleet)?;
            if moved.is_none()
                && s.len() == fleet.agents.len()
                && s.iter().all(|(_, r)| *r == other_id)
            {
                moved = Some(t_cut.elapsed());
            }
            match (led, moved, rev_deadline) {
                (Some(l), Some(m), Some(r)) => Ok(Some((l, m, r))),
                _ => bail!("leader moved at {led:?}, agents at {moved:?}; sessions {s:?}"),
            }
        },
    )?;
    let (Some(led), Some(moved), Some((rev_deadline, read_at))) = (led, moved, rev_deadline) else {
        bail!("the wait returned before everything was seen");
    };
    println!(
        "{other_id} leads {led:?} after the cut; every agent streams to {other_id} {moved:?} \
         after the cut (bound {MOVE_BOUND:?}, TTL {ttl:?}); etcd at revision {rev_deadline} \
         {read_at:?} after the cut"
    );
    std::thread::sleep(CUT_FOR.saturating_sub(t_cut.elapsed()));
    fleet.etcd_proxy(cut).heal();
    println!("healed {cut_id}'s link {:?} after the cut", t_cut.elapsed());

    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    fleet.wait_all_serving("2.0.0")?;
    let seen = observer.finish();
    seen.print(1, None);
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");

    let grants = slot_history(&fleet, rev_cut)?;
    for g in &grants {
        println!(
            "grant after the cut: {} token {} by {} at revision {}",
            g.host, g.token, g.granted_by, g.revision
        );
    }
    let late: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.granted_by == cut_id && g.revision > rev_deadline)
        .collect();
    assert!(
        late.is_empty(),
        "{cut_id}, cut off etcd, granted after its lease TTL ({ttl:?} + {GRANT_MARGIN:?}): {late:?}"
    );
    assert!(
        grants.iter().any(|g| g.granted_by == other_id),
        "no grant by {other_id} after the cut, yet the rollout finished: {grants:?}"
    );
    assert!(
        seen.max_unavailable <= 1,
        "budget broken: the observer saw {} down (budget 1): {:?}",
        seen.max_unavailable,
        seen.worst_set
    );

    // The reasons, in the operators' words.
    let log = std::fs::read_to_string(fleet.coordinators[cut].log())?;
    assert!(
        log.contains("could not renew its etcd lease")
            && log.contains("check the network between this replica and etcd")
            && log.contains("exiting so that its agents reconnect to another replica"),
        "{cut_id}'s log does not say why it gave up:\n{}",
        fleet.coordinators[cut].tail(20)
    );
    for h in &on_cut {
        let log = std::fs::read_to_string(&fleet.host(h).proc.log)?;
        let other_url = fleet.coordinators[1 - cut].url();
        assert!(
            log.contains("lost coordinator at") && log.contains(&format!("trying {other_url}")),
            "{h}'s log does not say it moved to {other_url}:\n{}",
            fleet.host(h).proc.tail(20)
        );
    }
    Ok(())
}

/// Every host's session: (host, replica holding its stream).
fn sessions(fleet: &Fleet) -> anyhow::Result<Vec<(String, String)>> {
    let prefix = format!("{ETCD_PREFIX}sessions/");
    fleet
        .etcd_get_prefix(&prefix)?
        .into_iter()
        .map(|(k, v)| {
            let r: serde_json::Value = serde_json::from_str(&v)?;
            let replica = r["replica_id"]
                .as_str()
                .with_context(|| format!("{k} names no replica: {v}"))?;
            Ok((k[prefix.len()..].to_string(), replica.to_string()))
        })
        .collect()
}

/// Every slot put since revision `from` (exclusive), from etcd's history (the test etcd never
/// compacts), in revision order.
fn slot_history(fleet: &Fleet, from: i64) -> anyhow::Result<Vec<Grant>> {
    let now = fleet.etcd_revision()?;
    fleet.block_on(async {
        let mut c = fleet.etcd.client().await?;
        let opts = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(from + 1);
        let mut stream = c.watch(format!("{ETCD_PREFIX}slots/"), Some(opts)).await?;
        let mut grants = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(1), stream.message()).await;
            let Ok(Ok(Some(resp))) = msg else { break };
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                if e.event_type() != etcd_client::EventType::Put {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_slice(kv.value())?;
                grants.push(Grant {
                    revision: kv.mod_revision(),
                    host: v["host_id"].as_str().unwrap_or_default().to_string(),
                    token: v["token"].as_u64().unwrap_or_default(),
                    granted_by: v["granted_by"].as_str().unwrap_or_default().to_string(),
                });
            }
            if grants.last().is_some_and(|g| g.revision >= now) {
                break;
            }
        }
        anyhow::Ok(grants)
    })
}
