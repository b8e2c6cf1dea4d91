//! Signed releases on one host (S8): with signing required, an unsigned, wrongly signed,
//! tampered, expired or oversized release is refused with nothing swapped, and a downgrade
//! happens only as an explicit rollback to a release this host ran before. Real release files,
//! real service processes, real probes; orders go straight to the executor.

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::*;
use rollgate_agent::Config;
use rollgate_agent::Fetcher;
use rollgate_agent::{Executor, Outbox};
use rollgate_proto::pb::{self, Outcome};
use rollgate_proto::signing::{self, Scope, Signed, SigningKey};
use tokio::sync::watch;

/// The size cap these tests configure (bytes).
const MAX_BYTES: u64 = 4096;

/// A world whose agent requires releases signed by `key` (pinned through a PEM file).
fn signed_world(key: &SigningKey) -> (World, Config) {
    let world = World::new();
    let pub_path = world.root.path().join("release.pub");
    std::fs::write(&pub_path, key.public().to_pem()).expect("public key");
    let text = format!(
        "max_artifact_bytes = {MAX_BYTES}\n{}",
        world.config_text_with(
            "http://127.0.0.1:1",
            "",
            &format!(
                "[signing]\nrequired = true\nfleet = \"prod\"\nkeys = [\"{}\"]\n",
                pub_path.display()
            ),
        )
    );
    let config = Config::parse(&text).expect("config");
    (world, config)
}

fn start(config: &Config) -> (Executor, Outbox) {
    let (_tx, rx) = watch::channel(None);
    let fetcher = Fetcher::new(rx, None).expect("fetcher");
    Executor::start(config, fetcher).expect("executor")
}

fn in_an_hour() -> i64 {
    signing::unix(SystemTime::now() + Duration::from_secs(3600))
}

/// `release` signed by `key` for service `demo`, valid until `expires_unix`.
fn sign(key: &SigningKey, mut release: pb::Release, expires_unix: i64) -> pb::Release {
    release.signature = Some(key.sign(&Signed {
        expires_unix,
        ..Signed::of(&Scope::new("prod", ""), "demo", &release)
    }));
    release
}

/// What must hold after every refusal: `current` still names the old release, its process
/// still runs, and the refused release was never installed.
struct Before {
    current: Option<String>,
    pid: i32,
}

impl Before {
    fn of(world: &World) -> Before {
        Before {
            current: world.current(),
            pid: world.running_pid().expect("a release runs"),
        }
    }

    fn unchanged(&self, world: &World, refused: &pb::Release, case: &str) {
        self.still_running(world, case);
        assert!(
            !exists(&release_dir(world, refused)),
            "{case}: the refused release was installed"
        );
    }

    /// [`Before::unchanged`] for a release that is on disk from before (a downgrade).
    fn still_running(&self, world: &World, case: &str) {
        assert_eq!(world.current(), self.current, "{case}: current was swapped");
        assert_eq!(
            world.running_pid(),
            Some(self.pid),
            "{case}: the service was restarted"
        );
        assert!(alive(self.pid), "{case}: the old process was stopped");
    }
}

async fn expect_refused(
    exec: &Executor,
    outbox: &mut Outbox,
    mut o: pb::UpdateOrder,
    token: u64,
    want: &str,
) -> pb::OrderResult {
    o.token = token;
    o.rollout_id = format!("r{token}");
    exec.handle_order(o);
    let (r, _) = result_for(outbox, token).await;
    assert_eq!(r.outcome(), Outcome::Refused, "{want}: {r:?}");
    assert!(r.reason.contains(want), "{want:?} not in {:?}", r.reason);
    r
}

async fn install(exec: &Executor, outbox: &mut Outbox, o: pb::UpdateOrder) -> pb::OrderResult {
    let token = o.token;
    exec.handle_order(o);
    let (r, _) = result_for(outbox, token).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    r
}

/// A release of `version` that serves healthy, signed by `key`, valid for an hour.
fn signed(key: &SigningKey, world: &World, version: &str) -> pb::Release {
    sign(key, world.release(version, &healthy(version)), in_an_hour())
}

/// Overwrites the bytes a `file://` release names (the source was tampered with).
fn overwrite(release: &pb::Release, bytes: &[u8]) -> PathBuf {
    let p = source_path(release);
    std::fs::write(&p, bytes).expect("tamper");
    p
}

#[tokio::test]
async fn signature_negatives_are_refused_with_nothing_swapped() {
    let key = SigningKey::generate().expect("key");
    let stranger = SigningKey::generate().expect("key");
    let (world, config) = signed_world(&key);
    let (exec, mut outbox) = start(&config);

    let v1 = signed(&key, &world, "1.0.0");
    install(&exec, &mut outbox, order(1, v1, 100, 5000)).await;
    let before = Before::of(&world);

    // Unsigned.
    let unsigned = world.release("2.0.0", &healthy("2.0.0"));
    expect_refused(
        &exec,
        &mut outbox,
        order(0, unsigned.clone(), 100, 5000),
        2,
        "not signed",
    )
    .await;
    before.unchanged(&world, &unsigned, "unsigned");

    // Signed by a key this host does not pin.
    let theirs = sign(&stranger, unsigned.clone(), in_an_hour());
    let r = expect_refused(
        &exec,
        &mut outbox,
        order(0, theirs, 100, 5000),
        3,
        "does not trust",
    )
    .await;
    assert!(
        r.reason.contains(key.public().key_id()),
        "names the pinned key: {}",
        r.reason
    );
    assert!(
        r.reason.starts_with("host web-1 refuses demo 2.0.0"),
        "{}",
        r.reason
    );
    before.unchanged(&world, &unsigned, "unknown key");

    // Signed by the pinned key, then a signed field changed: the digest (pointing the
    // release at other bytes), the version, the size, the expiry.
    let good = sign(&key, unsigned.clone(), in_an_hour());
    let other_bytes = world.release("2.0.0", &healthy("2.0.0-evil"));
    let mut swapped_digest = good.clone();
    swapped_digest.sha256 = other_bytes.sha256.clone();
    swapped_digest.source = other_bytes.source.clone();
    swapped_digest.size = other_bytes.size;
    let mut renamed = good.clone();
    renamed.version = "2.0.1".into();
    let mut extended = good.clone();
    if let Some(s) = extended.signature.as_mut() {
        s.expires_unix += 86_400 * 365;
    }
    for (i, (case, rel)) in [
        ("digest", &swapped_digest),
        ("version", &renamed),
        ("expiry", &extended),
    ]
    .into_iter()
    .enumerate()
    {
        expect_refused(
            &exec,
            &mut outbox,
            order(0, rel.clone(), 100, 5000),
            4 + i as u64,
            "does not match",
        )
        .await;
        before.unchanged(&world, rel, case);
    }

    // Expired (a valid signature whose time is up).
    let expired = sign(
        &key,
        unsigned.clone(),
        signing::unix(SystemTime::now()) - 60,
    );
    expect_refused(
        &exec,
        &mut outbox,
        order(0, expired, 100, 5000),
        10,
        "expired at",
    )
    .await;
    before.unchanged(&world, &unsigned, "expired");

    // Tampered bytes: the order is validly signed, but the source now holds other bytes of
    // the same size; the digest check of the download refuses them.
    let tampered = signed(&key, &world, "2.1.0");
    let evil = healthy("2.1.0").replace("sleep 1000", "sleep 1001");
    assert_eq!(evil.len() as u64, tampered.size);
    overwrite(&tampered, evil.as_bytes());
    expect_refused(
        &exec,
        &mut outbox,
        order(0, tampered.clone(), 100, 5000),
        11,
        "sha256 mismatch",
    )
    .await;
    before.unchanged(&world, &tampered, "tampered bytes");

    // A stage order is held to the same rules before any download.
    let stage = stage_order("s1", unsigned.clone());
    exec.handle_stage(stage);
    let s = staged_result(&mut outbox, "s1").await;
    assert!(!s.ok && s.reason.contains("not signed"), "{s:?}");
    before.unchanged(&world, &unsigned, "stage unsigned");

    // And a good signature still goes through.
    install(&exec, &mut outbox, order(12, good.clone(), 100, 5000)).await;
    assert_eq!(
        world.current().as_deref(),
        release_dir(&world, &good)
            .file_name()
            .and_then(|n| n.to_str())
    );
    exec.shutdown().await;
}

#[tokio::test]
async fn oversized_releases_are_refused_with_nothing_swapped() {
    let key = SigningKey::generate().expect("key");
    let (world, config) = signed_world(&key);
    let (exec, mut outbox) = start(&config);
    let v1 = signed(&key, &world, "1.0.0");
    install(&exec, &mut outbox, order(1, v1, 100, 5000)).await;
    let before = Before::of(&world);

    // Declares more than max_artifact_bytes (validly signed): refused unread.
    let padding = "#".repeat(MAX_BYTES as usize);
    let big = sign(
        &key,
        world.release("2.0.0", &format!("{}{padding}\n", healthy("2.0.0"))),
        in_an_hour(),
    );
    assert!(big.size > MAX_BYTES);
    expect_refused(
        &exec,
        &mut outbox,
        order(0, big.clone(), 100, 5000),
        2,
        "max_artifact_bytes",
    )
    .await;
    before.unchanged(&world, &big, "declared size over the cap");
    let partial = world
        .service_dir()
        .join("staging")
        .join(format!("{}.partial", big.sha256));
    assert!(!exists(&partial), "nothing was downloaded");

    // The source holds more bytes than the signed size: at most the declared size is read,
    // and the release is refused.
    let long = signed(&key, &world, "2.1.0");
    let mut more = healthy("2.1.0").into_bytes();
    more.extend_from_slice(b"\necho extra\n");
    overwrite(&long, &more);
    expect_refused(
        &exec,
        &mut outbox,
        order(0, long.clone(), 100, 5000),
        3,
        "declared size",
    )
    .await;
    before.unchanged(&world, &long, "bytes longer than declared");
    exec.shutdown().await;
}

/// The rollback window (default 1): a host that ran 0.9.0, 1.0.0 and 2.0.0 rolls back to
/// 1.0.0 only, never straight to 0.9.0, although it ran it and it is validly signed.
#[tokio::test]
async fn rollback_reaches_only_the_release_run_just_before() {
    let key = SigningKey::generate().expect("key");
    let (world, config) = signed_world(&key);
    let (exec, mut outbox) = start(&config);
    let v09 = signed(&key, &world, "0.9.0");
    let v1 = signed(&key, &world, "1.0.0");
    install(&exec, &mut outbox, order(1, v09.clone(), 100, 5000)).await;
    install(&exec, &mut outbox, order(2, v1.clone(), 100, 5000)).await;
    install(
        &exec,
        &mut outbox,
        order(3, signed(&key, &world, "2.0.0"), 100, 5000),
    )
    .await;
    let before = Before::of(&world);
    let mut o = order(4, v09.clone(), 100, 5000);
    o.rollback = true;
    let r = expect_refused(&exec, &mut outbox, o, 4, "rollback_window").await;
    assert!(r.reason.contains("rollback_window = 1"), "{}", r.reason);
    before.still_running(&world, "rollback two releases back");
    let mut o = order(5, v1, 100, 5000);
    o.rollback = true;
    assert_eq!(
        install(&exec, &mut outbox, o).await.running_version,
        "1.0.0"
    );
    exec.shutdown().await;
}

/// A signature made for another environment of the fleet (`--env staging`) does not install
/// on a host of `env = "production"`; one made for the whole fleet does.
#[tokio::test]
async fn a_staging_signature_does_not_install_in_production() {
    let key = SigningKey::generate().expect("key");
    let world = World::new();
    let pub_path = world.root.path().join("release.pub");
    std::fs::write(&pub_path, key.public().to_pem()).expect("public key");
    let text = world.config_text_with(
        "http://127.0.0.1:1",
        "",
        &format!(
            "[signing]\nrequired = true\nfleet = \"prod\"\nenv = \"production\"\nkeys = [\"{}\"]\n",
            pub_path.display()
        ),
    );
    let config = Config::parse(&text).expect("config");
    let (exec, mut outbox) = start(&config);
    let v1 = world.release("1.0.0", &healthy("1.0.0"));
    let for_scope = |scope: &Scope| {
        let mut r = v1.clone();
        r.signature = Some(key.sign(&Signed {
            expires_unix: in_an_hour(),
            ..Signed::of(scope, "demo", &v1)
        }));
        r
    };
    let staging = for_scope(&Scope::new("prod", "staging"));
    exec.handle_order(order(1, staging, 100, 5000));
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
    assert!(
        r.reason.contains("for fleet prod, environment production"),
        "{}",
        r.reason
    );
    assert_eq!(world.current(), None);
    let other_fleet = for_scope(&Scope::new("lab", ""));
    exec.handle_order(order(2, other_fleet, 100, 5000));
    let (r, _) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
    install(
        &exec,
        &mut outbox,
        order(3, for_scope(&Scope::new("prod", "")), 100, 5000),
    )
    .await;
    exec.shutdown().await;
}

#[tokio::test]
async fn downgrade_only_as_explicit_rollback_to_a_release_run_here() {
    let key = SigningKey::generate().expect("key");
    let (world, config) = signed_world(&key);
    let (exec, mut outbox) = start(&config);
    let v1 = signed(&key, &world, "1.0.0");
    let v2 = signed(&key, &world, "2.0.0");
    install(&exec, &mut outbox, order(1, v1.clone(), 100, 5000)).await;
    let v1_dir = world.current();
    install(&exec, &mut outbox, order(2, v2.clone(), 100, 5000)).await;
    let before = Before::of(&world);

    // Back to 1.0.0, validly signed and run here before, but not as a rollback.
    let r = expect_refused(
        &exec,
        &mut outbox,
        order(0, v1.clone(), 100, 5000),
        3,
        "not a rollback",
    )
    .await;
    assert!(r.reason.contains("not newer than 2.0.0"), "{}", r.reason);
    assert!(
        r.reason.starts_with("host web-1 refuses demo 1.0.0"),
        "{}",
        r.reason
    );
    before.still_running(&world, "downgrade without rollback");

    // A rollback to a release this host never ran.
    let v0 = signed(&key, &world, "0.9.0");
    let mut o = order(0, v0.clone(), 100, 5000);
    o.rollback = true;
    expect_refused(&exec, &mut outbox, o, 4, "never ran it").await;
    before.unchanged(&world, &v0, "rollback to a release never run here");

    // An old pre-release, signed but never run here: semver puts it below 2.0.0.
    let rc = signed(&key, &world, "1.5.0-rc1");
    let r = expect_refused(
        &exec,
        &mut outbox,
        order(0, rc.clone(), 100, 5000),
        5,
        "not newer than",
    )
    .await;
    assert!(r.reason.contains("not newer than 2.0.0"), "{}", r.reason);
    before.unchanged(&world, &rc, "an old pre-release");
    // A version that cannot be ordered (a git hash) is refused whatever it is.
    let hash = signed(&key, &world, "3f2a9c1");
    let r = expect_refused(
        &exec,
        &mut outbox,
        order(0, hash.clone(), 100, 5000),
        6,
        "cannot be ordered",
    )
    .await;
    assert!(r.reason.contains("cannot be ordered"), "{}", r.reason);
    before.unchanged(&world, &hash, "a git hash version");

    // The explicit rollback to 1.0.0, which ran here: accepted.
    let mut o = order(7, v1.clone(), 100, 5000);
    o.rollback = true;
    let r = install(&exec, &mut outbox, o).await;
    assert_eq!(r.running_version, "1.0.0");
    assert_eq!(world.current(), v1_dir);
    exec.shutdown().await;

    // The record of releases run survives a restart: forward to 2.0.0 again, then the
    // rollback to 1.0.0 is still accepted by a new executor on the same state dir.
    let (exec, mut outbox) = start(&config);
    install(&exec, &mut outbox, order(8, v2, 100, 5000)).await;
    let mut o = order(9, v1, 100, 5000);
    o.rollback = true;
    install(&exec, &mut outbox, o).await;
    assert_eq!(world.current(), v1_dir);
    exec.shutdown().await;
}

/// A service with its own `signing_keys` trusts only those, even when the fleet keys would
/// accept the release and `[signing]` does not require signatures.
#[tokio::test]
async fn service_keys_override_the_fleet_keys() {
    let fleet = SigningKey::generate().expect("key");
    let own = SigningKey::generate().expect("key");
    let world = World::new();
    let write = |name: &str, k: &SigningKey| -> PathBuf {
        let p = world.root.path().join(name);
        std::fs::write(&p, k.public().to_pem()).expect("key");
        p
    };
    let (fleet_pub, own_pub) = (write("fleet.pub", &fleet), write("own.pub", &own));
    let text = world.config_text_with(
        "http://127.0.0.1:1",
        &format!("signing_keys = [\"{}\"]", own_pub.display()),
        &format!(
            "[signing]\nfleet = \"prod\"\nkeys = [\"{}\"]\n",
            fleet_pub.display()
        ),
    );
    let config = Config::parse(&text).expect("config");
    let (exec, mut outbox) = start(&config);
    let v1 = world.release("1.0.0", &healthy("1.0.0"));
    for (token, rel, want) in [
        (1, v1.clone(), "not signed"),
        (2, sign(&fleet, v1.clone(), in_an_hour()), "does not trust"),
    ] {
        let o = order(token, rel, 100, 5000);
        exec.handle_order(o);
        let (r, _) = result_for(&mut outbox, token).await;
        assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
        assert!(r.reason.contains(want), "{want}: {}", r.reason);
        assert_eq!(world.current(), None);
    }
    install(
        &exec,
        &mut outbox,
        order(3, sign(&own, v1, in_an_hour()), 100, 5000),
    )
    .await;
    exec.shutdown().await;
}
