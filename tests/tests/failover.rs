//! Failover that is quick and quiet, with three replicas on one etcd.
//!
//! - kill -9 of the leader mid-rollout: the next grant (the fencing-token counter in etcd
//!   moving on) comes within the lease TTL + 1 s of the kill, measured over several kills.
//! - Followers wait in line without a sound: for longer than the old 5 s request timeout that
//!   cancelled their Campaign call, they log no WARN/ERROR and keep their election key (same
//!   create revision, so the same place in line); after the leader is killed and restarted,
//!   the follower that waited longest leads, not the restarted replica.
//!
//! The two tests measure time, so they take turns (one fleet at a time on a loaded machine).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rollgate_tests::pb::{HostState, Phase};
use rollgate_tests::{
    wait_for, Fleet, FleetOpts, Mode, COORDINATOR_RESTART_DELAY, ETCD_PREFIX, LEASE_TTL_SECS,
};

/// One timing test at a time.
static ONE_FLEET: Mutex<()> = Mutex::new(());
/// Leader kills in the failover measurement.
const KILLS: usize = 3;
/// How long followers are watched waiting in line: well past the old 5 s request timeout
/// (a campaign was cancelled and re-queued every ~5.5 s).
const QUIET_FOR: Duration = Duration::from_secs(15);

/// One replica's place in the election line: its key under `<prefix>leader/`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    /// `<prefix>leader/<lease>`.
    key: String,
    /// The replica id (the key's value).
    replica: String,
    /// When it joined the line: the oldest key leads.
    create_rev: i64,
}

/// The election line as etcd holds it, oldest first.
fn election_line(fleet: &Fleet) -> anyhow::Result<Vec<Candidate>> {
    fleet.block_on(async {
        let mut c = fleet.etcd.client().await?;
        let opts = etcd_client::GetOptions::new().with_prefix().with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Ascend,
        );
        let r = c.get(format!("{ETCD_PREFIX}leader/"), Some(opts)).await?;
        Ok(r.kvs()
            .iter()
            .map(|kv| Candidate {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                replica: String::from_utf8_lossy(kv.value()).into_owned(),
                create_rev: kv.create_revision(),
            })
            .collect())
    })
}

/// The last fencing token handed out (it grows with every grant).
fn last_token(fleet: &Fleet) -> anyhow::Result<u64> {
    let key = format!("{ETCD_PREFIX}token");
    let kvs = fleet.etcd_get_prefix(&key)?;
    match kvs.iter().find(|(k, _)| *k == key) {
        Some((_, v)) => Ok(serde_json::from_str(v)?),
        None => Ok(0),
    }
}

/// Which replica granted the slot carrying `token` (from the slot records in etcd).
fn granted_by(fleet: &Fleet, token: u64) -> anyhow::Result<String> {
    for (_, v) in fleet.etcd_get_prefix(&format!("{ETCD_PREFIX}slots/"))? {
        let slot: serde_json::Value = serde_json::from_str(&v)?;
        if slot["token"].as_u64() == Some(token) {
            return Ok(slot["granted_by"].as_str().unwrap_or("?").to_string());
        }
    }
    Ok("? (slot already released)".into())
}

/// Log lines at WARN or ERROR level written after byte `from`.
fn warnings_since(log: &Path, from: usize) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect())
}

#[test]
fn leader_kill9_next_grant_comes_within_lease_ttl_plus_1s() -> anyhow::Result<()> {
    let _one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(FleetOpts {
        agents: 6,
        coordinators: 3,
        ..FleetOpts::default()
    })?;
    fleet.install(
        "1.0.0",
        "max_unavailable = 100\nmin_healthy_time = \"200ms\"",
    )?;
    let v2 = fleet.release("2.0.0", Mode::Healthy)?;
    let spec = fleet.spec(
        &v2,
        "max_unavailable = 1\nmin_healthy_time = \"500ms\"\nhealthy_deadline = \"30s\"",
    )?;
    let id = fleet.start_rollout(&spec)?;
    let bound = Duration::from_secs(LEASE_TTL_SECS) + Duration::from_secs(1);
    let mut measured = Vec::new();
    for round in 1..=KILLS {
        // Hold the rollout between grants, so that at the kill a grant is due and only a
        // leader can make it: pause, let the host in flight finish, kill, resume.
        fleet.cli_ok(&["rollout", "pause", &id])?;
        fleet.wait_status(
            &id,
            "paused, no host updating",
            Duration::from_secs(30),
            |s| {
                s.phase() == Phase::Paused
                    && !s.hosts.iter().any(|h| h.state() == HostState::Updating)
            },
        )?;
        let old = fleet.wait_leader(Duration::from_secs(10))?;
        let before = last_token(&fleet)?;
        fleet.coordinators[old].kill9();
        let killed = Instant::now();
        fleet.cli_ok(&["rollout", "resume", &id])?;
        let (took, token) = wait_for("the next grant", Duration::from_secs(20), || {
            let t = last_token(&fleet)?;
            Ok((t > before).then(|| (killed.elapsed(), t)))
        })
        .inspect_err(|_| {
            println!("rollout: {:?}", fleet.status(&id));
            fleet.dump_logs();
        })?;
        let by = granted_by(&fleet, token)?;
        println!(
            "kill {round}: leader {} killed; token {token} granted by {by} {took:?} after the kill",
            fleet.coordinators[old].id
        );
        assert_ne!(by, fleet.coordinators[old].id, "the killed replica granted");
        measured.push(took);
        // Its supervisor brings it back; it joins the end of the line.
        fleet.coordinators[old].restart()?;
        fleet.wait_replica(old)?;
    }
    let worst = measured.iter().max().copied().unwrap_or_default();
    println!(
        "kill -9 of the leader -> next grant: {measured:?}; worst {worst:?} (bound {bound:?})"
    );
    let s = fleet.wait_settled(&id, Duration::from_secs(90))?;
    assert_eq!(s.phase(), Phase::Succeeded, "{s:?}");
    assert!(
        worst <= bound,
        "failover too slow: {worst:?} from kill -9 to the next grant (bound: lease TTL \
         {LEASE_TTL_SECS} s + 1 s); all: {measured:?}"
    );
    Ok(())
}

/// Over plain http, etcd deleted the key of a Campaign call cut by its timeout (the follower
/// lost its place); over TLS (gRPC through Go's HTTP handler) the key stayed but every cut
/// logged a warning. Both are checked.
#[test]
fn followers_wait_in_line_quietly_and_the_longest_waiting_leads_next() -> anyhow::Result<()> {
    for etcd_secure in [false, true] {
        println!(
            "---- etcd over {}",
            if etcd_secure { "mTLS" } else { "plain http" }
        );
        wait_in_line(etcd_secure)?;
    }
    Ok(())
}

fn wait_in_line(etcd_secure: bool) -> anyhow::Result<()> {
    let _one = ONE_FLEET.lock().unwrap_or_else(|e| e.into_inner());
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        coordinators: 3,
        etcd_secure,
        ..FleetOpts::default()
    })?;
    let leader = fleet.wait_leader(Duration::from_secs(10))?;
    let line = wait_for(
        "all three replicas in line",
        Duration::from_secs(10),
        || {
            let line = election_line(&fleet)?;
            Ok((line.len() == 3).then_some(line))
        },
    )?;
    println!("in line: {line:?}");
    assert_eq!(line[0].replica, fleet.coordinators[leader].id, "{line:?}");
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let marks: Vec<usize> = followers
        .iter()
        .map(|&i| std::fs::metadata(fleet.coordinators[i].log()).map(|m| m.len() as usize))
        .collect::<Result<_, _>>()?;

    std::thread::sleep(QUIET_FOR);
    let after = election_line(&fleet)?;
    println!("in line {QUIET_FOR:?} later: {after:?}");
    let mut noise = Vec::new();
    for (&i, &mark) in followers.iter().zip(&marks) {
        let lines = warnings_since(&fleet.coordinators[i].log(), mark)?;
        println!(
            "{} (follower) logged {} WARN/ERROR lines while waiting",
            fleet.coordinators[i].id,
            lines.len()
        );
        for l in lines.iter().take(3) {
            println!("  {l}");
        }
        noise.extend(lines);
    }
    assert_eq!(
        after, line,
        "the followers lost their place in line while waiting (their election keys were \
         re-created with newer create revisions)"
    );
    assert!(noise.is_empty(), "followers are not quiet: {noise:#?}");

    // The leader dies and its supervisor restarts it at once.
    let old = &fleet.coordinators[leader];
    old.kill9();
    std::thread::sleep(COORDINATOR_RESTART_DELAY);
    old.restart()?;
    let next = fleet.wait_leader_change(leader, Duration::from_secs(15))?;
    let now = wait_for(
        "the restarted replica in line",
        Duration::from_secs(20),
        || {
            let now = election_line(&fleet)?;
            Ok((now.len() == 3).then_some(now))
        },
    )?;
    println!(
        "after {} was killed and restarted: {} leads; line {now:?}",
        old.id, fleet.coordinators[next].id
    );
    assert_eq!(
        fleet.coordinators[next].id, line[1].replica,
        "the follower that waited longest must lead next"
    );
    assert_eq!(
        now.last().map(|c| c.replica.as_str()),
        Some(old.id.as_str()),
        "the restarted replica joins the end of the line: {now:?}"
    );
    Ok(())
}
