//! Issue 10, item 2 (S9): a compromised host must not fill etcd. It sends thousands of statuses
//! with a changing 4 KiB detail as fast as its stream takes them, while a rollout runs on the
//! two honest hosts. Its record is written at most once per 250 ms (the latest state wins), the
//! detail is kept to 1 KiB with a marker, the coalescing is logged once, and the rollout
//! succeeds. Figures printed: statuses sent, writes of the host's record (its etcd version),
//! etcd's revision growth and its DB size before and after.

mod hostile_host_peer;

use std::time::{Duration, Instant};

use hostile_host_peer::{coordinator_log, service, HostilePeer};
use rollgate_proto::pb;
use rollgate_proto::pb::agent_message::Msg;
use rollgate_tests::pb::Phase;
use rollgate_tests::{http_get, Fleet, FleetOpts, Mode, ETCD_PREFIX};

const EVIL: &str = "host-evil";
const STATUSES: usize = 5000;
/// The coordinator's pacing of one host's record writes.
const WRITE_INTERVAL: Duration = Duration::from_millis(250);
/// The stored detail's bound.
const MAX_DETAIL: usize = 1024;

/// (writes of the hostile host's record so far, its stored value).
fn evil_record(fleet: &Fleet) -> anyhow::Result<(i64, String)> {
    fleet.block_on(async {
        let mut c = fleet.etcd.client().await?;
        let r = c.get(format!("{ETCD_PREFIX}hosts/{EVIL}"), None).await?;
        let kv = r
            .kvs()
            .first()
            .ok_or_else(|| anyhow::anyhow!("no record"))?;
        Ok((
            kv.version(),
            String::from_utf8_lossy(kv.value()).into_owned(),
        ))
    })
}

fn db_size(fleet: &Fleet) -> u64 {
    let (_, body) = http_get(&fleet.etcd.metrics_addr(), "/metrics").unwrap_or_default();
    body.lines()
        .find(|l| l.starts_with("etcd_mvcc_db_total_size_in_bytes "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn a_flooding_host_is_paced_and_others_roll_on() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        sites: 1,
        ..Default::default()
    })?;
    let peer = HostilePeer::connect(
        &fleet,
        pb::Hello {
            host_id: EVIL.into(),
            services: vec![service("flood", "1.0.0")],
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
                .any(|h| h.host_id == EVIL)
                .then_some(()))
        },
    )?;
    let (rev0, size0) = (fleet.etcd_revision()?, db_size(&fleet));
    let (writes0, _) = evil_record(&fleet)?;

    let tx = peer.tx.clone();
    let started = Instant::now();
    let flood = std::thread::spawn(move || {
        for i in 0..STATUSES {
            let mut s = service("flood", "1.0.0");
            s.detail = format!("{i:08} {}", "x".repeat(4096));
            let msg = pb::AgentMessage {
                msg: Some(Msg::Status(s)),
            };
            if tx.blocking_send(msg).is_err() {
                return i;
            }
        }
        STATUSES
    });
    let v1 = fleet.release("1.0.0", Mode::Healthy)?;
    let spec = fleet.spec_for_hosts(&v1, "max_unavailable = 1", &["host-1", "host-2"])?;
    let id = fleet.start_rollout(&spec)?;
    let sent = flood.join().expect("flood thread");
    let flood_time = started.elapsed();
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    println!(
        "honest rollout beside the flood: {} ({})",
        s.phase().word(),
        s.reason
    );
    assert_eq!(s.phase(), Phase::Succeeded);

    // The last coalesced state lands within one interval.
    let last = format!("{:08}", STATUSES - 1);
    let (writes, value) = fleet.wait(
        "the latest status to be written",
        Duration::from_secs(5),
        || {
            let (w, v) = evil_record(&fleet)?;
            Ok(v.contains(&last).then_some((w, v)))
        },
    )?;
    let elapsed = started.elapsed();
    let (rev1, size1) = (fleet.etcd_revision()?, db_size(&fleet));
    let writes = writes - writes0;
    let bound = (elapsed.as_millis() / WRITE_INTERVAL.as_millis()) as i64 + 2;
    println!(
        "flood: {sent} statuses in {flood_time:.2?}; host-evil's record written {writes} times in \
         {elapsed:.2?} (bound {bound}); etcd revision +{} (whole fleet, rollout included); etcd DB \
         {size0} -> {size1} bytes; stored record {} bytes",
        rev1 - rev0,
        value.len()
    );
    assert_eq!(sent, STATUSES, "the coordinator dropped the session");
    assert!(writes <= bound, "{writes} writes, more than {bound}");
    let v: serde_json::Value = serde_json::from_str(&value)?;
    let detail = v["services"]["flood"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.len() <= MAX_DETAIL && detail.ends_with("[cut]"),
        "detail of {} bytes stored: {}",
        detail.len(),
        &detail[..detail.len().min(40)]
    );
    let log = coordinator_log(&fleet);
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("coalescing")).collect();
    println!(
        "throttle lines logged: {}\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert_eq!(lines.len(), 1, "the throttle is logged once a minute");
    assert!(lines[0].contains(EVIL), "the line does not name the host");
    Ok(())
}
