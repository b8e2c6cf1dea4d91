//! Stage orders at the executor level: real release files (`file://` sources), real service
//! processes; orders go straight to the executor.

mod common;

use common::*;
use rollgate_agent::Fetcher;
use rollgate_agent::{Executor, Outbox};
use rollgate_proto::pb::{self, Health, Outcome, Step};
use tokio::sync::watch;

fn start(world: &World) -> (Executor, Outbox) {
    let (_tx, rx) = watch::channel(None);
    let fetcher = Fetcher::new(rx, None).expect("fetcher");
    Executor::start(&world.config(), fetcher).expect("executor")
}

/// Installs `version` with order `token`, and waits until it has succeeded.
async fn install(world: &World, exec: &Executor, outbox: &mut Outbox, token: u64, version: &str) {
    exec.handle_order(order(
        token,
        world.release(version, &healthy(version)),
        100,
        5000,
    ));
    let (r, _) = result_for(outbox, token).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
}

fn staged_shas(hello: &pb::Hello) -> Vec<String> {
    hello
        .staged
        .iter()
        .map(|s| {
            assert_eq!(s.service, "demo");
            s.sha256.clone()
        })
        .collect()
}

#[tokio::test]
async fn staged_release_is_verified_idempotent_and_swapped_without_a_download() {
    let world = World::new();
    let (exec, mut outbox) = start(&world);
    install(&world, &exec, &mut outbox, 1, "1.0.0").await;
    let v1_dir = world.current().expect("current");
    let pid = world.running_pid().expect("1.0.0 running");

    // Staging touches nothing running.
    let v2 = world.release("2.0.0", &healthy("2.0.0"));
    exec.handle_stage(stage_order("r2", v2.clone()));
    let r = staged_result(&mut outbox, "r2").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.service.as_str(), r.sha256.as_str()),
        ("demo", v2.sha256.as_str())
    );
    assert_eq!(r.reason, "");
    assert!(release_dir(&world, &v2).join("demo-svc").is_file());
    assert_eq!(world.current().as_deref(), Some(v1_dir.as_str()));
    assert_eq!(world.running_pid(), Some(pid));
    assert!(alive(pid));

    // The hello lists what is on disk and verified: the running release and the staged one.
    let hello = exec.hello();
    let v1_sha = hello.services[0].sha256.clone();
    assert_eq!(staged_shas(&hello), [v1_sha.clone(), v2.sha256.clone()]);
    assert_eq!(hello.highest_token, 1, "staging needs and takes no token");

    // Idempotent: staged already, so no download (the source is gone) and ok at once.
    std::fs::remove_file(source_path(&v2)).expect("remove the source");
    exec.handle_stage(stage_order("r2", v2.clone()));
    let r = staged_result(&mut outbox, "r2").await;
    assert!(r.ok, "{r:?}");

    // A restarted agent still knows what is staged.
    exec.shutdown().await;
    drop(outbox);
    let (exec, mut outbox) = start(&world);
    assert_eq!(staged_shas(&exec.hello()), [v1_sha, v2.sha256.clone()]);
    status(&mut outbox, Health::Healthy).await;

    // The update to the staged release needs no download: its source is gone, and it works.
    exec.handle_order(order(2, v2.clone(), 100, 5000));
    let (r, seen) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    assert_eq!(r.running_version, "2.0.0");
    assert!(!seen.steps.contains(&Step::Fetching), "{seen:?}");
    assert!(
        seen.messages
            .contains(&"2.0.0 is already on disk; its sha256 checked again".to_string()),
        "{seen:?}"
    );
    assert_eq!(
        world.current(),
        release_dir(&world, &v2)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    );
    exec.shutdown().await;
}

#[tokio::test]
async fn staging_failures_are_explained_and_change_nothing() {
    let world = World::new();
    // A cap far above any disk, so that the free-space check is what refuses 2^60 bytes.
    let config = rollgate_agent::Config::parse(&format!(
        "max_artifact_bytes = {}\n{}",
        i64::MAX,
        world.config_text("http://127.0.0.1:1")
    ))
    .expect("config");
    let (_tx, rx) = watch::channel(None);
    let (exec, mut outbox) =
        Executor::start(&config, Fetcher::new(rx, None).expect("fetcher")).expect("executor");
    install(&world, &exec, &mut outbox, 1, "1.0.0").await;
    let v1_dir = world.current().expect("current");
    let pid = world.running_pid().expect("running");
    let before = staged_shas(&exec.hello());

    let good = world.release("2.0.0", &healthy("2.0.0"));
    let with = |f: &dyn Fn(&mut pb::Release)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    let missing = world.root.path().join("artifacts").join("nope");
    let cases: Vec<(&str, pb::StageOrder, String)> = vec![
        (
            "digest mismatch",
            stage_order("r-digest", with(&|r| r.sha256 = sha("other bytes"))),
            format!(
                "staging 2.0.0 failed: sha256 mismatch: expected {}, got {}; nothing was changed",
                sha("other bytes"),
                good.sha256
            ),
        ),
        (
            "size mismatch",
            stage_order("r-size", with(&|r| r.size -= 1)),
            "refusing to write past it".into(),
        ),
        (
            "no disk space",
            stage_order("r-space", with(&|r| r.size = 1 << 60)),
            "not enough disk space".into(),
        ),
        (
            "download error",
            stage_order(
                "r-missing",
                with(&|r| r.source = format!("file://{}", missing.display())),
            ),
            format!("cannot read source file {}", missing.display()),
        ),
        (
            "unknown service",
            pb::StageOrder {
                service: "nope".into(),
                ..stage_order("r-service", good.clone())
            },
            "service \"nope\" is not configured on host web-1".into(),
        ),
        (
            "bad release",
            stage_order("r-bad", with(&|r| r.sha256 = "xyz".into())),
            "sha256 \"xyz\" is not valid".into(),
        ),
        (
            "no release",
            pb::StageOrder {
                release: None,
                ..stage_order("r-none", good.clone())
            },
            "carries no release".into(),
        ),
    ];
    for (name, order, want) in cases {
        let rollout = order.rollout_id.clone();
        exec.handle_stage(order);
        let r = staged_result(&mut outbox, &rollout).await;
        assert!(!r.ok, "{name}: {r:?}");
        assert!(
            r.reason.contains(&want),
            "{name}: {:?} should say {want:?}",
            r.reason
        );
    }
    assert!(!release_dir(&world, &good).exists());
    let leftovers: Vec<_> = std::fs::read_dir(world.service_dir().join("staging"))
        .expect("staging dir")
        .collect();
    assert!(leftovers.is_empty(), "no bad bytes left: {leftovers:?}");
    assert_eq!(world.current().as_deref(), Some(v1_dir.as_str()));
    assert_eq!(world.running_pid(), Some(pid));
    assert!(alive(pid));
    assert_eq!(staged_shas(&exec.hello()), before);
    exec.shutdown().await;
}

#[tokio::test]
async fn staging_beside_an_update_in_flight_survives_its_commit_until_the_next_order() {
    let world = World::new();
    let (exec, mut outbox) = start(&world);
    install(&world, &exec, &mut outbox, 1, "1.0.0").await;

    // 2.0.0 is being verified (it must stay healthy for 1.5s) when 3.0.0 is staged.
    exec.handle_order(order(
        2,
        world.release("2.0.0", &healthy("2.0.0")),
        1500,
        10_000,
    ));
    wait_step(&mut outbox, 2, Step::Verifying).await;
    let v3 = world.release("3.0.0", &healthy("3.0.0"));
    exec.handle_stage(stage_order("r3", v3.clone()));
    let r = staged_result(&mut outbox, "r3").await;
    assert!(r.ok, "{r:?}");
    let in_flight = exec.hello().in_flight.expect("2.0.0 still in flight");
    assert_eq!(in_flight.token, 2, "staging did not wait for the update");

    // 2.0.0 commits (and prunes): the release staged for the order to come stays.
    let (r, _) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    assert!(release_dir(&world, &v3).join("demo-svc").is_file());
    assert!(staged_shas(&exec.hello()).contains(&v3.sha256));

    // The next order for the service supersedes it: its commit removes 3.0.0.
    install(&world, &exec, &mut outbox, 3, "4.0.0").await;
    assert!(!release_dir(&world, &v3).exists(), "3.0.0 was pruned");
    assert!(!staged_shas(&exec.hello()).contains(&v3.sha256));
    exec.shutdown().await;
}

#[tokio::test]
async fn the_same_release_staged_twice_at_once_is_fetched_once() {
    let world = World::new();
    let (exec, mut outbox) = start(&world);
    // Large enough that the two orders overlap (the file source is read in chunks).
    let body = format!("{}\n# {}\n", healthy("2.0.0"), "x".repeat(8 << 20));
    let v2 = world.release("2.0.0", &body);
    exec.handle_stage(stage_order("ra", v2.clone()));
    exec.handle_stage(stage_order("rb", v2.clone()));
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let msg = tokio::time::timeout(RESULT_WAIT, outbox.recv())
            .await
            .expect("both stage orders answer")
            .expect("outbox open");
        if let Some(pb::agent_message::Msg::Staged(r)) = msg.msg {
            answers.push(r);
        }
    }
    answers.sort_by(|a, b| a.rollout_id.cmp(&b.rollout_id));
    assert_eq!(
        answers
            .iter()
            .map(|r| (r.rollout_id.as_str(), r.ok))
            .collect::<Vec<_>>(),
        [("ra", true), ("rb", true)],
        "{answers:?}"
    );
    let dirs: Vec<_> = std::fs::read_dir(world.service_dir().join("releases"))
        .expect("releases")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(staged_shas(&exec.hello()), vec![v2.sha256.clone()]);

    // And the result is sound: the staged release installs without its source.
    std::fs::remove_file(source_path(&v2)).expect("remove the source");
    exec.handle_order(order(1, v2, 100, 5000));
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    exec.shutdown().await;
}
