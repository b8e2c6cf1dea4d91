//! Tarball releases end to end: fetched, digest-checked, unpacked safely into the release dir,
//! run through `current/<binary>`; hostile or broken tarballs are refused before anything is
//! touched. (The unpacking rules themselves are table-tested in `src/unpack.rs`.)

mod common;

use std::io::Write;

use common::*;
use rollgate_agent::Config;
use rollgate_agent::Fetcher;
use rollgate_agent::{Executor, Outbox};
use rollgate_proto::pb::{Health, Outcome};
use tokio::sync::watch;

fn start(config: &Config) -> (Executor, Outbox) {
    let (_tx, rx) = watch::channel(None);
    let fetcher = Fetcher::new(rx, None).expect("fetcher");
    Executor::start(config, fetcher).expect("executor")
}

/// A .tar.gz holding `files` (path, body, mode) and `links` (path, target).
fn targz(files: &[(&str, &str, u32)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, body.as_bytes())
            .expect("append");
    }
    for (path, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, path, target).expect("link");
    }
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// A tarball whose only entry is named `name` byte for byte (the builder refuses `..`).
fn targz_named(name: &str) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(4);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(b"evil");
    tar.resize(512 * 2, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

#[tokio::test]
async fn tarball_releases_unpack_run_and_hostile_ones_are_refused() {
    let world = World::new();
    let text = world.config_text_with(
        "http://127.0.0.1:1",
        "binary = \"bin/demo-svc\"\nunpack_max_bytes = 1000000\nunpack_max_entries = 100",
        "",
    );
    let (exec, mut outbox) = start(&Config::parse(&text).expect("config"));

    let v1 = world.release_bytes(
        "1.0.0",
        &targz(
            &[
                ("bin/demo-svc", &healthy("1.0.0"), 0o755),
                ("share/greeting.txt", "hello\n", 0o644),
            ],
            &[("greeting", "share/greeting.txt")],
        ),
    );
    exec.handle_order(order(1, v1.clone(), 100, 5000));
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let current = world.service_dir().join("current");
    assert_eq!(
        std::fs::read_to_string(current.join("greeting")).expect("unpacked"),
        "hello\n"
    );
    assert!(
        current.join(".release.tar.gz").exists(),
        "the archive is kept to hash again"
    );
    let pid = world.running_pid().expect("runs from current/bin/demo-svc");
    assert!(alive(pid));
    let v1_dir = world.current().expect("current");
    let staged = exec.hello().staged;
    assert!(staged.iter().any(|s| s.sha256 == v1.sha256), "{staged:?}");

    // Hostile or unusable tarballs: refused, nothing swapped, nothing left behind.
    let escape = world.root.path().join("escape");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            targz_named("../../../../escape"),
            "has a '..' component",
        ),
        (
            "absolute",
            targz_named(&format!("{}", escape.display())),
            "is an absolute path",
        ),
        (
            "symlink escape",
            targz(
                &[("bin/demo-svc", &healthy("x"), 0o755)],
                &[("etc", "../../../../../etc")],
            ),
            "leads outside the release",
        ),
        (
            "oversize",
            targz(&[("bin/demo-svc", &"#".repeat(1_100_000), 0o755)], &[]),
            "unpacks to more than 1000000 bytes",
        ),
        (
            "no binary",
            targz(&[("demo-svc", &healthy("x"), 0o755)], &[]),
            "has no file \"bin/demo-svc\" to run",
        ),
        (
            "binary not executable",
            targz(&[("bin/demo-svc", &healthy("x"), 0o644)], &[]),
            "is not executable",
        ),
        (
            "binary escapes through a link",
            targz(&[], &[("bin", "/usr/bin")]),
            "is absolute",
        ),
    ];
    for (token, (name, bytes, want)) in (2u64..).zip(cases) {
        exec.handle_order(order(
            token,
            world.release_bytes(&format!("6.6.{token}"), &bytes),
            100,
            5000,
        ));
        let (r, _) = result_for(&mut outbox, token).await;
        assert_eq!(r.outcome(), Outcome::Refused, "{name}: {r:?}");
        assert!(
            r.reason.contains(want),
            "{name}: {:?} should say {want:?}",
            r.reason
        );
        assert_eq!(
            (r.running_version.as_str(), r.health()),
            ("1.0.0", Health::Healthy),
            "{name}"
        );
        assert_eq!(world.current().as_deref(), Some(v1_dir.as_str()), "{name}");
        assert!(!escape.exists(), "{name}: wrote outside the release");
        let left: Vec<String> = std::fs::read_dir(world.service_dir().join("releases"))
            .expect("releases")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            std::slice::from_ref(&v1_dir),
            "{name}: nothing of it is kept"
        );
    }
    assert!(alive(pid), "the running release was never touched");

    // The next good tarball goes in; going back to 1.0.0 (an explicit rollback: it ran here)
    // reuses its dir (archive re-hashed).
    let v2 = world.release_bytes(
        "2.0.0",
        &targz(&[("bin/demo-svc", &healthy("2.0.0"), 0o755)], &[]),
    );
    exec.handle_order(order(20, v2, 100, 5000));
    let (r, _) = result_for(&mut outbox, 20).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let mut back = order(21, v1, 100, 5000);
    back.rollback = true;
    exec.handle_order(back);
    let (r, seen) = result_for(&mut outbox, 21).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    assert!(
        seen.messages
            .iter()
            .any(|m| m.contains("already on disk; its sha256 checked again")),
        "{:?}",
        seen.messages
    );
    assert_eq!(world.current().as_deref(), Some(v1_dir.as_str()));
    exec.shutdown().await;
}
