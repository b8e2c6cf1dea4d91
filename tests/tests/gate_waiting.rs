//! "Gate waiting" (issue 13): a rollout that reaches a manual gate records one `gate_waiting`
//! event (the rollout, the wave that finished, the promote command) before the promote; a
//! webhook subscribed to it gets it signed; a leader killed -9 while the rollout waits does not
//! make the next leader record it again (the announcement comes from the leader's durable stamp
//! of the wave's end, which a new leader finds and keeps).

use std::time::Duration;

use anyhow::{bail, Context};
use rollgate_tests::pb::{GateKind, Phase};
use rollgate_tests::webhook::Receiver;
use rollgate_tests::{Fleet, FleetOpts, Mode, ETCD_PREFIX};
use serde_json::Value;

const SECRET: &str = "the gate webhook's secret";
/// How long the new leader has to (wrongly) announce the gate again after it re-planned it.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(3);

/// `rollgate -o json events --rollout ID`, parsed.
fn story(fleet: &Fleet, id: &str) -> anyhow::Result<Vec<Value>> {
    fleet
        .cli_ok(&["-o", "json", "events", "--rollout", id])?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or_default()
}

fn of_kind<'a>(events: &'a [Value], k: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| kind(e) == k).collect()
}

/// Whether `want` appears in `have` in this order (other kinds may come between).
fn in_order(have: &[&str], want: &[&str]) -> bool {
    let mut it = have.iter();
    want.iter().all(|w| it.any(|h| h == w))
}

/// The rollout record's `wave_done` stamp, as stored in etcd.
fn stamp(fleet: &Fleet, id: &str) -> anyhow::Result<Value> {
    let key = format!("{ETCD_PREFIX}rollouts/{id}");
    let (_, value) = fleet
        .etcd_get_prefix(&key)?
        .into_iter()
        .find(|(k, _)| *k == key)
        .with_context(|| format!("no record at {key}"))?;
    let record: Value = serde_json::from_str(&value)?;
    Ok(record["wave_done"].clone())
}

#[test]
fn a_manual_gate_is_announced_once_even_across_a_leader_kill() -> anyhow::Result<()> {
    let receiver = Receiver::start(SECRET)?;
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("gate.secret");
    std::fs::write(&secret, format!("{SECRET}\n"))?;
    let extra = format!(
        "[[notify]]\nname = \"gate\"\nurl = \"http://{}/hook\"\nevents = [\"gate_waiting\"]\n\
         secret_file = \"{}\"\ntimeout = \"2s\"\n",
        receiver.addr,
        secret.display()
    );
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        coordinators: 2,
        coordinator_extra: Some(extra),
        ..FleetOpts::default()
    })?;
    fleet.wait_connected(3)?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"200ms\"")?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\ncanary = 1\ncanary_gate = \"manual\"\nmin_healthy_time = \"200ms\"",
    )?;
    let id = fleet.start_rollout(&spec)?;

    // At the gate: one event, saying which rollout, which wave finished, and what to run.
    let waiting = fleet.wait("a gate_waiting event", Duration::from_secs(30), || {
        let events = story(&fleet, &id)?;
        Ok(of_kind(&events, "gate_waiting")
            .first()
            .map(|e| (*e).clone()))
    })?;
    println!("recorded: {waiting}");
    let status = fleet.status(&id)?;
    if status.gate_kind() != GateKind::ManualPromote || status.wave != 0 {
        bail!("gate_waiting recorded but the rollout is not at its manual gate: {status:?}");
    }
    let promote = format!("rollgate rollout promote {id}");
    let reason = waiting["reason"].as_str().unwrap_or_default();
    if waiting["rollout_id"] != id.as_str() || waiting["wave"] != 0 || !reason.contains(&promote) {
        bail!("gate_waiting should name {id}, wave 0 and `{promote}`: {waiting}");
    }
    let text = fleet.cli_ok(&["events", "--rollout", &id])?;
    let line = text.lines().find(|l| l.contains("gate_waiting"));
    println!("rollgate events: {line:?}");
    if !line.is_some_and(|l| l.contains("wave 0 done") && l.contains(&promote)) {
        bail!("`rollgate events` does not show the gate with the promote:\n{text}");
    }

    // The webhook gets it, signed.
    let delivered = fleet.wait("the webhook's delivery", Duration::from_secs(20), || {
        Ok(receiver
            .seen()
            .into_iter()
            .find(|d| d.kind == "gate_waiting" && d.taken))
    })?;
    println!("webhook got: {}", delivered.body);
    if !delivered.signature_ok
        || Some(delivered.event_id) != waiting["id"].as_u64()
        || delivered.body["rollout_id"] != id.as_str()
        || !delivered.body["text"]
            .as_str()
            .unwrap_or_default()
            .contains(&promote)
    {
        bail!("the webhook got a wrong or unsigned gate_waiting: {delivered:?}");
    }

    // kill -9 the leader while the rollout waits; the next leader plans it at the gate again
    // (a pause and a resume make it re-plan, and their events show its recorder caught up).
    let stamped = stamp(&fleet, &id)?;
    let leader = fleet.wait_leader(Duration::from_secs(10))?;
    fleet.coordinators[leader].kill9();
    let next = fleet.wait_leader_change(leader, Duration::from_secs(15))?;
    println!(
        "killed the leader coord-{}; coord-{} leads; stamp {stamped}",
        leader + 1,
        next + 1
    );
    // The release's artifact is stored on the replica it was pushed to: bring it back (as a
    // follower) so the next wave can fetch it.
    fleet.coordinators[leader].restart()?;
    fleet.wait_replica(leader)?;
    fleet.cli_ok(&["rollout", "pause", &id])?;
    fleet.cli_ok(&["rollout", "resume", &id])?;
    fleet.wait("the resume in the log", Duration::from_secs(20), || {
        let events = story(&fleet, &id)?;
        Ok((!of_kind(&events, "rollout_resumed").is_empty()).then_some(()))
    })?;
    fleet.hold_for(&id, DUPLICATE_WINDOW, |s| {
        if s.gate_kind() != GateKind::ManualPromote {
            bail!("left the manual gate without a promote");
        }
        Ok(())
    })?;
    let restamped = stamp(&fleet, &id)?;
    if restamped != stamped {
        bail!("the new leader stamped the gate again: {stamped} became {restamped}");
    }

    fleet.promote(&id)?;
    let end = fleet.wait_settled(&id, Duration::from_secs(60))?;
    if end.phase() != Phase::Succeeded {
        bail!("{id} ended {:?}: {}", end.phase(), end.reason);
    }

    let events = story(&fleet, &id)?;
    let kinds: Vec<&str> = events.iter().map(kind).collect();
    println!("{id}: {kinds:?}");
    let gates = of_kind(&events, "gate_waiting");
    if gates.len() != 1 || gates[0]["id"] != waiting["id"] {
        bail!(
            "want exactly one gate_waiting (#{}), got {}: {kinds:?}",
            waiting["id"],
            gates.len()
        );
    }
    let want = [
        "rollout_created",
        "host_granted",
        "host_done",
        "gate_waiting",
        "rollout_paused",
        "rollout_resumed",
        "wave_opened",
        "host_granted",
        "rollout_succeeded",
    ];
    if !in_order(&kinds, &want) {
        bail!("the story of {id} is {kinds:?}; expected {want:?} in that order");
    }
    let seen = receiver.seen();
    let taken: Vec<u64> = seen
        .iter()
        .filter(|d| d.taken)
        .map(|d| d.event_id)
        .collect();
    println!(
        "webhook: {} deliveries, taken event ids {taken:?}",
        seen.len()
    );
    if let Some(bad) = seen
        .iter()
        .find(|d| d.kind != "gate_waiting" || !d.signature_ok)
    {
        bail!("the webhook got an unasked kind or a bad signature: {bad:?}");
    }
    // At least once: a repeat of the same id is allowed, another gate_waiting is not.
    if taken.iter().any(|i| Some(*i) != waiting["id"].as_u64()) {
        bail!("the webhook got another gate_waiting event: {taken:?}");
    }
    Ok(())
}
