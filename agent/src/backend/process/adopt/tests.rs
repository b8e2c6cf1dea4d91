use super::*;

const RELEASES: &str = "/s/svc/releases";
const CURRENT: &str = "/s/svc/releases/2.0.0-abc";

fn record() -> Instance {
    Instance {
        pid: 100,
        start_time: 5000,
        boot_id: "boot-a".into(),
        release: "2.0.0-abc".into(),
    }
}

fn seen() -> Seen {
    Seen {
        zombie: false,
        pgid: 100,
        start_time: 5000,
        cwd: Some(PathBuf::from(CURRENT)),
        exe: Some(PathBuf::from("/usr/bin/python3")),
    }
}

fn want() -> Expected<'static> {
    Expected {
        boot_id: "boot-a",
        releases: Path::new(RELEASES),
        current: Some(("2.0.0-abc", Path::new(CURRENT))),
    }
}

#[test]
fn judge_adopts_only_the_recorded_instance_running_current() {
    let other_release = "/s/svc/releases/1.0.0-def";
    type Case = (&'static str, Option<Instance>, Option<Seen>, Verdict);
    let cases: Vec<Case> = vec![
        (
            "same instance",
            Some(record()),
            Some(seen()),
            Verdict::Adopt,
        ),
        (
            "exe in the release dir, cwd elsewhere",
            Some(record()),
            Some(Seen {
                cwd: Some("/".into()),
                exe: Some(format!("{CURRENT}/bin/svc").into()),
                ..seen()
            }),
            Verdict::Adopt,
        ),
        ("no such process", Some(record()), None, Verdict::Gone),
        (
            "zombie",
            Some(record()),
            Some(Seen {
                zombie: true,
                ..seen()
            }),
            Verdict::Gone,
        ),
        (
            "pid reused by a process elsewhere",
            Some(record()),
            Some(Seen {
                start_time: 9000,
                cwd: Some("/home/x".into()),
                exe: Some("/usr/bin/vim".into()),
                ..seen()
            }),
            Verdict::LeaveAlone(NotAdopted::OutsideReleases {
                cwd: Some("/home/x".into()),
            }),
        ),
        (
            "not a group leader",
            Some(record()),
            Some(Seen { pgid: 7, ..seen() }),
            Verdict::LeaveAlone(NotAdopted::NotGroupLeader { pgid: 7 }),
        ),
        (
            "pid reused, same release dir",
            Some(record()),
            Some(Seen {
                start_time: 9000,
                ..seen()
            }),
            Verdict::Stop(NotAdopted::StartTimeDiffers {
                recorded: 5000,
                seen: 9000,
            }),
        ),
        (
            "no record (an older agent)",
            None,
            Some(seen()),
            Verdict::Stop(NotAdopted::NoRecord),
        ),
        (
            "record of another pid",
            Some(Instance {
                pid: 101,
                ..record()
            }),
            Some(seen()),
            Verdict::Stop(NotAdopted::RecordForOtherPid { recorded: 101 }),
        ),
        (
            "recorded before a reboot",
            Some(Instance {
                boot_id: "boot-0".into(),
                ..record()
            }),
            Some(seen()),
            Verdict::Stop(NotAdopted::OtherBoot),
        ),
        (
            "runs another release",
            Some(Instance {
                release: "1.0.0-def".into(),
                ..record()
            }),
            Some(Seen {
                cwd: Some(other_release.into()),
                ..seen()
            }),
            Verdict::Stop(NotAdopted::OtherRelease {
                runs: "1.0.0-def".into(),
                current: "2.0.0-abc".into(),
            }),
        ),
        (
            "record says current, process runs elsewhere in releases",
            Some(record()),
            Some(Seen {
                cwd: Some(other_release.into()),
                ..seen()
            }),
            Verdict::Stop(NotAdopted::OtherRelease {
                runs: "2.0.0-abc".into(),
                current: "2.0.0-abc".into(),
            }),
        ),
    ];
    for (name, rec, s, expected) in cases {
        assert_eq!(
            judge(100, rec.as_ref(), s.as_ref(), &want()),
            expected,
            "{name}"
        );
    }
    let nothing = Expected {
        current: None,
        ..want()
    };
    assert_eq!(
        judge(100, Some(&record()), Some(&seen()), &nothing),
        Verdict::Stop(NotAdopted::NothingInstalled)
    );
}

#[test]
fn reasons_read_well_in_a_log_line() {
    let why = NotAdopted::StartTimeDiffers {
        recorded: 5000,
        seen: 9000,
    };
    assert_eq!(
        why.to_string(),
        "its start time is 9000, not the recorded 5000 (the pid was reused)"
    );
}

#[test]
fn stat_fields_are_counted_after_the_command_name() {
    // Field 2 holds spaces and a ')'; state R, pgrp 4242, starttime 987654.
    let line = "4242 (my (odd) svc) R 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                987654 1000 100 18446744073709551615";
    assert_eq!(parse_stat(line), Some((false, 4242, 987654)));
    assert_eq!(parse_stat("1 (z) Z 0 1"), None, "too short");
    let own = fs::read_to_string("/proc/self/stat").expect("stat");
    assert!(parse_stat(&own).is_some(), "{own}");
}

#[tokio::test]
async fn a_watch_completes_when_a_process_that_is_not_our_child_exits() {
    // `sh` starts `sleep` in the background and exits: the sleep is reparented away from us.
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh");
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("pid");
    let watch = Watch::open(pid).expect("pidfd");
    let pending = tokio::time::timeout(std::time::Duration::from_millis(100), watch.exited());
    assert!(pending.await.is_err(), "still running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    tokio::time::timeout(std::time::Duration::from_secs(5), watch.exited())
        .await
        .expect("the exit was noticed");
}
