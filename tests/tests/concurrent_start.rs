//! Two operators start a rollout of the same service at the same instant (issue 14, item 4 A).
//! Only one rollout per service may be active: the create transaction compares on the
//! service's `active` key. Each round, two operators talking to two different replicas call
//! `CreateRollout` from two threads released by one barrier (each on its own, already open
//! connection), each with its own release; exactly one must win and the other must be refused
//! with FAILED_PRECONDITION naming the winner's rollout id. Then the winner is aborted and the
//! next round starts once the service is free. Last, two `rollgate rollout start` processes
//! race the same way, and the loser's CLI message names the winner too.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rollgate_tests::{bin, pb, ControlClient, Fleet, FleetOpts, Mode, Release};
use sha2::{Digest, Sha256};

/// Races through the control API.
const RPC_ROUNDS: usize = 20;
/// Races between two CLI processes.
const CLI_ROUNDS: usize = 3;
/// The racers' strategy: slow enough that the winner is still active when the loser asks.
const STRATEGY: &str = "max_unavailable = 1\nmin_healthy_time = \"300ms\"";

/// One racer's call: what it got, and when it started and ended.
struct Attempt {
    outcome: Result<String, tonic::Status>,
    began: Instant,
    ended: Instant,
}

#[test]
fn two_operators_start_the_same_service_at_once_exactly_one_wins() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 3,
        coordinators: 2,
        ..FleetOpts::default()
    })?;
    fleet.install("1.0.0", "max_unavailable = 3\nmin_healthy_time = \"100ms\"")?;

    let (mut overlapped, mut worst_skew) = (0, Duration::ZERO);
    let mut wins = [0usize; 2];
    for round in 1..=RPC_ROUNDS {
        let attempts = race_rpc(&fleet, &round_specs(&fleet, round)?)?;
        let skew = abs_diff(attempts[0].began, attempts[1].began);
        worst_skew = worst_skew.max(skew);
        // Both calls were in flight at once: neither could have seen the other's result first.
        if attempts[0].began < attempts[1].ended && attempts[1].began < attempts[0].ended {
            overlapped += 1;
        }
        let (winner, loser) = match (&attempts[0].outcome, &attempts[1].outcome) {
            (Ok(w), Err(l)) => {
                wins[0] += 1;
                (w.clone(), l.clone())
            }
            (Err(l), Ok(w)) => {
                wins[1] += 1;
                (w.clone(), l.clone())
            }
            (Ok(a), Ok(b)) => bail!("round {round}: both operators started a rollout: {a} and {b}"),
            (Err(a), Err(b)) => bail!("round {round}: neither operator won: {a:?} / {b:?}"),
        };
        check_refusal(round, &winner, loser.code(), loser.message())?;
        finish_round(&fleet, &winner)?;
    }
    println!(
        "{RPC_ROUNDS} rounds: wins per operator {wins:?}; calls overlapped in {overlapped}; \
         worst start skew {worst_skew:?}"
    );
    // A race in name only proves nothing: most rounds must really have overlapped.
    assert!(
        overlapped * 2 >= RPC_ROUNDS,
        "the two calls overlapped in only {overlapped} of {RPC_ROUNDS} rounds"
    );

    for round in 1..=CLI_ROUNDS {
        race_cli(&fleet, round, &round_specs(&fleet, RPC_ROUNDS + round)?)?;
    }
    Ok(())
}

/// The two racers' specs for `round`: releases `2.<round>.0` and `2.<round>.1`, newer than
/// any earlier round's (hosts refuse to go to an older release they never ran, S10, and the
/// aborted rounds leave some hosts on the winner's release).
fn round_specs(fleet: &Fleet, round: usize) -> anyhow::Result<[String; 2]> {
    let release = |i: usize| fleet.release(&format!("2.{round}.{i}"), Mode::Healthy);
    Ok([
        store_spec(fleet, &release(0)?)?,
        store_spec(fleet, &release(1)?)?,
    ])
}

/// A spec for `release`, pushed once to the artifact store, that names it by digest (so a
/// racer's create does nothing but the create).
fn store_spec(fleet: &Fleet, release: &Release) -> anyhow::Result<String> {
    let path = release.path.display().to_string();
    fleet.cli_ok(&["artifact", "push", &path])?;
    let bytes = std::fs::read(&release.path)?;
    let sha = hex::encode(Sha256::digest(&bytes));
    Ok(format!(
        "service = \"web\"\n[release]\nversion = \"{}\"\nsource = \"store:\"\nsha256 = \"{sha}\"\nsize = {}\n[strategy]\n{STRATEGY}\n",
        release.version,
        bytes.len()
    ))
}

/// Operator i (on replica i) creates `specs[i]`; both calls start when the barrier opens.
fn race_rpc(fleet: &Fleet, specs: &[String; 2]) -> anyhow::Result<Vec<Attempt>> {
    let tls = fleet.operator.client_config()?;
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = (0..2)
        .map(|i| {
            let (url, tls, barrier) = (fleet.coordinators[i].url(), tls.clone(), barrier.clone());
            let spec_toml = specs[i].clone();
            std::thread::spawn(move || -> anyhow::Result<Attempt> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let channel = tonic::transport::Endpoint::from_shared(url)?
                        .tls_config(tls)?
                        .timeout(Duration::from_secs(10))
                        .connect()
                        .await?;
                    let mut client = ControlClient::new(channel);
                    // The connection is warm: the first call is not the handshake.
                    client.list_hosts(pb::ListHostsRequest {}).await?;
                    barrier.wait();
                    let began = Instant::now();
                    let r = client
                        .create_rollout(pb::CreateRolloutRequest { spec_toml })
                        .await;
                    Ok(Attempt {
                        outcome: r.map(|s| s.into_inner().id),
                        began,
                        ended: Instant::now(),
                    })
                })
            })
        })
        .collect();
    racers
        .into_iter()
        .map(|t| t.join().map_err(|_| anyhow::anyhow!("a racer panicked"))?)
        .collect()
}

/// The loser's refusal: FAILED_PRECONDITION, naming the winner's rollout and what to do.
fn check_refusal(
    round: usize,
    winner: &str,
    code: tonic::Code,
    message: &str,
) -> anyhow::Result<()> {
    if code != tonic::Code::FailedPrecondition
        || !message.contains(&format!("already has an active rollout {winner}"))
        || !message.contains(&format!("rollgate rollout abort {winner}"))
    {
        bail!(
            "round {round}: the loser was refused with {code:?} \"{message}\", which does not \
             name the winner {winner} and how to proceed"
        );
    }
    Ok(())
}

/// Aborts the winner (unless it already succeeded on its own) and waits until the service is
/// free for the next round.
fn finish_round(fleet: &Fleet, winner: &str) -> anyhow::Result<()> {
    let id = winner.to_string();
    let aborted = fleet.rpc("AbortRollout", |mut c| {
        let id = id.clone();
        async move { c.abort_rollout(pb::RolloutRef { id }).await }
    });
    if let Err(e) = aborted {
        let s = fleet.status(winner)?;
        if s.phase() != pb::Phase::Succeeded {
            return Err(e.context(format!("{winner} is {}: {}", s.phase().word(), s.reason)));
        }
    }
    fleet.wait_service_free("web")
}

/// Two `rollgate rollout start` processes, one per replica, started back to back.
fn race_cli(fleet: &Fleet, round: usize, specs: &[String; 2]) -> anyhow::Result<()> {
    let mut children = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let path = fleet.dir.join(format!("race-{i}.toml"));
        std::fs::write(&path, spec)?;
        children.push(start_cli(fleet, i, &path)?);
    }
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().context("cannot wait for the CLI"))
        .collect::<anyhow::Result<_>>()?;
    let ok: Vec<&Output> = outs.iter().filter(|o| o.status.success()).collect();
    let failed: Vec<&Output> = outs.iter().filter(|o| !o.status.success()).collect();
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let ([won], [lost]) = (ok.as_slice(), failed.as_slice()) else {
        bail!(
            "CLI round {round}: {} succeeded, {} failed: {:?}",
            ok.len(),
            failed.len(),
            outs.iter().map(text).collect::<Vec<_>>()
        );
    };
    let v: serde_json::Value = serde_json::from_slice(&won.stdout)
        .with_context(|| format!("the winner printed no JSON: {}", text(won)))?;
    let winner = v["id"].as_str().context("no id in the winner's JSON")?;
    let message = String::from_utf8_lossy(&lost.stderr);
    println!(
        "CLI round {round}: {winner} won; the other operator saw: {}",
        message.trim()
    );
    if !message.contains(&format!("already has an active rollout {winner}"))
        || !message.contains(&format!("rollgate rollout abort {winner}"))
    {
        bail!("CLI round {round}: the loser's message does not name {winner}: {message}");
    }
    finish_round(fleet, winner)
}

fn start_cli(fleet: &Fleet, replica: usize, spec: &Path) -> anyhow::Result<std::process::Child> {
    Command::new(bin("rollgate"))
        .arg("--coordinator")
        .arg(fleet.coordinators[replica].url())
        .args(fleet.operator.cli_args())
        .args(["--output", "json", "rollout", "start"])
        .arg(spec)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the rollgate CLI")
}

fn abs_diff(a: Instant, b: Instant) -> Duration {
    if a > b {
        a - b
    } else {
        b - a
    }
}
