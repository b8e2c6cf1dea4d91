//! The registry harness itself, with each engine: an image pushed with the engine's own CLI
//! is pulled back by digest through the engine's API with credentials, and refused without
//! them or with a wrong password. Prints the engine's verbatim error for each way a pull
//! fails (missing or wrong credentials, unknown digest, unknown repository, registry down),
//! the texts the agent's pull-error classification is built on.

use std::path::Path;
use std::time::Instant;

use rollgate_tests::managers::{DockerEngine, Kind};
use rollgate_tests::registry::{pull, Registry};

const USER: &str = "deployer";
const PASS: &str = "s3cret-pass";
/// Words an engine's refusal for missing or wrong credentials contains.
const AUTH_WORDS: [&str; 4] = [
    "no basic auth credentials",
    "unauthorized",
    "authentication required",
    "invalid username/password",
];
/// A well-formed digest no manifest has.
const UNKNOWN_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn docker_pushes_and_pulls_by_digest_only_with_credentials() -> anyhow::Result<()> {
    pushes_and_pulls_only_with_credentials(Kind::Docker)
}

#[test]
fn podman_pushes_and_pulls_by_digest_only_with_credentials() -> anyhow::Result<()> {
    pushes_and_pulls_only_with_credentials(Kind::Podman)
}

fn pushes_and_pulls_only_with_credentials(kind: Kind) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // Dropped last: every directory.
    let base = tempfile::Builder::new()
        .prefix("rollgate-registry-")
        .tempdir()?;
    let engine = DockerEngine::start_kind(kind, &base.path().join("engine"));
    let mut reg = Registry::start(&base.path().join("registry"), &engine, &[(USER, PASS)]);
    println!(
        "[{kind:?}] engine and registry {} up in {:.1?}",
        reg.addr(),
        t0.elapsed()
    );

    assert_eq!(reg.v2_status(Some((USER, "wrong")))?, 401, "wrong password");
    assert_eq!(reg.v2_status(Some((USER, PASS)))?, 200, "right password");

    let digest = reg.push_image(&engine, "team/app:1", "echo hello\n", USER, PASS);
    assert!(digest.starts_with("sha256:"), "{digest}");
    let image = format!("{}/team/app@{digest}", reg.addr());
    let local = engine.docker(&["images", "-q", &format!("{}/team/app", reg.addr())], None);
    assert!(
        local.trim().is_empty(),
        "still in the engine after the push: {local}"
    );
    println!("[{kind:?}] pushed {image} in {:.1?}", t0.elapsed());

    let none = base.path().join("no-creds");
    std::fs::create_dir_all(&none)?;
    assert_auth_error(&refused(
        kind,
        "missing credentials",
        &engine,
        &none,
        &image,
    ));
    let wrong = base.path().join("wrong-creds");
    reg.auth_file(&wrong.join("config.json"), USER, "wrong");
    assert_auth_error(&refused(kind, "wrong password", &engine, &wrong, &image));

    let good = base.path().join("creds");
    reg.auth_file(&good.join("config.json"), USER, PASS);
    let pulled = pull(&engine, &good, &image)
        .unwrap_or_else(|e| panic!("pull with credentials failed: {e}\n{}", reg.log()));
    println!("[{kind:?}] pulled with credentials: {}", pulled.trim());

    let unknown = format!("{}/team/app@{UNKNOWN_DIGEST}", reg.addr());
    refused(kind, "unknown digest", &engine, &good, &unknown);
    let no_repo = format!("{}/team/nothing@{digest}", reg.addr());
    refused(kind, "unknown repository", &engine, &good, &no_repo);
    reg.stop();
    let again = format!("{}/team/app@{UNKNOWN_DIGEST}", reg.addr());
    refused(kind, "registry down", &engine, &good, &again);
    println!("[{kind:?}] done in {:.1?}", t0.elapsed());
    Ok(())
}

/// Pulls `image` with the credentials in `config` (if any), expecting a refusal; prints and
/// returns the engine's message.
fn refused(kind: Kind, case: &str, engine: &DockerEngine, config: &Path, image: &str) -> String {
    match pull(engine, config, image) {
        Ok(out) => panic!("[{kind:?}] {case}: the pull of {image} succeeded: {out}"),
        Err(text) => {
            println!("[{kind:?}] {case}: {}", text.trim());
            text
        }
    }
}

fn assert_auth_error(text: &str) {
    assert!(
        AUTH_WORDS.iter().any(|w| text.contains(w)),
        "not an authentication error (none of {AUTH_WORDS:?}): {text}"
    );
}
