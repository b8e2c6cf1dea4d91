//! Logs stay first-class under systemd (issue 13, item 4). The coordinator runs as a unit of a
//! real `systemd --user` manager with a real `systemd-journald` beside it, as on a host; every
//! event of a rollout must be a journal entry of its own, sent over journald's native protocol
//! (not a text line on stderr), with the fields `ROLLOUT_ID`, `HOST_ID` and `SERVICE`, so that
//! `journalctl ROLLOUT_ID=r-…` finds exactly that rollout's events.

use std::collections::BTreeSet;
use std::time::Duration;

use rollgate_tests::managers::UserManager;
use rollgate_tests::pb::Phase;
use rollgate_tests::{Fleet, FleetOpts, Mode};
use serde_json::Value;

/// Journal entries matching `filter` (e.g. `ROLLOUT_ID=r-…`), as JSON objects.
fn journal(manager: &UserManager, filter: &str) -> anyhow::Result<Vec<Value>> {
    let out = manager.journalctl(&["-o", "json", filter]);
    anyhow::ensure!(
        out.status.success(),
        "journalctl {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// The event id in an event's message ("event 12: host_done: …").
fn event_id(message: &str) -> Option<u64> {
    message
        .strip_prefix("event ")?
        .split(':')
        .next()?
        .parse()
        .ok()
}

#[test]
fn journalctl_finds_a_rollouts_events_by_rollout_host_and_service() -> anyhow::Result<()> {
    let mdir = tempfile::tempdir()?;
    let manager = UserManager::start_with_journald(mdir.path());
    let mut wrap = vec!["env".to_string()];
    wrap.extend(manager.env().iter().map(|(k, v)| format!("{k}={v}")));
    wrap.extend(
        [
            "systemd-run",
            "--user",
            "--wait",
            "--quiet",
            "--collect",
            "--unit=rollgate-{id}",
            "--",
        ]
        .map(String::from),
    );
    let fleet = Fleet::start(FleetOpts {
        agents: 2,
        supervise: false,
        coordinator_wrap: wrap,
        ..FleetOpts::default()
    })?;
    let rel = fleet.release("1.0.0", Mode::Healthy)?;
    let strategy = "max_unavailable = 1\nmin_healthy_time = \"200ms\"";
    let id = fleet.start_rollout(&fleet.spec(&rel, strategy)?)?;
    let s = fleet.wait_settled(&id, Duration::from_secs(60))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");

    // What the event stream says happened to this rollout.
    let text = fleet.cli_ok(&["-o", "json", "events", "--rollout", &id])?;
    let recorded: BTreeSet<u64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|e| e["id"].as_u64())
        .collect();
    anyhow::ensure!(recorded.len() >= 5, "too few events recorded: {text}");

    // Every one of them is in the journal under ROLLOUT_ID, once; the recorder may lag the
    // settled status by a moment.
    let mut entries = Vec::new();
    for _ in 0..50 {
        entries = journal(&manager, &format!("ROLLOUT_ID={id}"))?;
        if entries.len() >= recorded.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let journaled: Vec<u64> = entries
        .iter()
        .filter_map(|e| e["MESSAGE"].as_str().and_then(event_id))
        .collect();
    println!(
        "{} events recorded for {id}, {} journal entries with ROLLOUT_ID={id}",
        recorded.len(),
        entries.len()
    );
    assert_eq!(
        journaled.iter().copied().collect::<BTreeSet<_>>(),
        recorded,
        "the journal's events for {id} are not the recorded ones"
    );
    assert_eq!(journaled.len(), recorded.len(), "an event journaled twice");
    for e in &entries {
        assert_eq!(e["SYSLOG_IDENTIFIER"], "rollgate-coordinator", "{e}");
        assert_eq!(
            e["_TRANSPORT"], "journal",
            "not journald's native protocol: {e}"
        );
        let cgroup = e["_SYSTEMD_CGROUP"].as_str().unwrap_or_default();
        assert!(
            cgroup.ends_with("/rollgate-coord-1.service"),
            "not from the unit: {e}"
        );
        if e["MESSAGE"]
            .as_str()
            .is_some_and(|m| m.contains("rollout_created"))
        {
            assert!(e.get("HOST_ID").is_none(), "an empty HOST_ID field: {e}");
        }
    }
    let example = &entries[entries.len() - 1];
    println!("e.g. {}", example["MESSAGE"]);

    // Per host and per service, too.
    for host in ["host-1", "host-2"] {
        let of_host = journal(&manager, &format!("HOST_ID={host}"))?;
        let granted = of_host
            .iter()
            .filter(|e| e["ROLLOUT_ID"] == id.as_str() && e["SERVICE"] == "web")
            .filter(|e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.contains("host_granted"))
            })
            .count();
        println!(
            "journalctl HOST_ID={host}: {} entries, {granted} grant(s) of {id}",
            of_host.len()
        );
        assert_eq!(granted, 1, "{host}: {of_host:?}");
    }
    let of_service = journal(&manager, "SERVICE=web")?;
    assert!(
        of_service.len() >= recorded.len(),
        "journalctl SERVICE=web found {} entries",
        of_service.len()
    );
    Ok(())
}
