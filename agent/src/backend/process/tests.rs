use super::*;
use crate::config::Config;
use crate::release::releases::ReleaseInfo;
use nix::sys::signal::kill;
use sha2::{Digest, Sha256};
use std::os::unix::process::CommandExt;

fn setup(script: &str, stop_timeout: &str) -> (tempfile::TempDir, ProcessBackend, ServiceDir) {
    setup_with(script, stop_timeout, "")
}

/// A process backend for one installed release running `script`; `extra` is added to the
/// service's table.
fn setup_with(
    script: &str,
    stop_timeout: &str,
    extra: &str,
) -> (tempfile::TempDir, ProcessBackend, ServiceDir) {
    let state = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "host_id = \"h\"\ncoordinator = \"http://127.0.0.1:1\"\nstate_dir = \"{}\"\n\
         [[services]]\nname = \"s\"\nbackend = \"process\"\nbinary = \"svc\"\n\
         stop_timeout = \"{stop_timeout}\"\nargs = [\"a1\"]\nenv = {{ GREETING = \"hi\" }}\n\
         {extra}",
        state.path().display()
    );
    let cfg = Config::parse(&text).expect("config");
    let dir = ServiceDir::new(&cfg.state_dir, "s", "svc");
    dir.create().expect("create");
    let body = format!("#!/bin/sh\n{script}\n");
    let sha = hex::encode(Sha256::digest(body.as_bytes()));
    let p = dir.partial_path(&sha);
    fs::write(&p, &body).expect("script");
    let name = dir
        .install(
            &p,
            &ReleaseInfo {
                version: "1.0.0".into(),
                sha256: sha,
                size: body.len() as u64,
            },
        )
        .expect("install");
    dir.point_current_at(&name).expect("point");
    let sup = ProcessBackend::new(dir.clone(), Arc::new(cfg.services[0].clone()));
    (state, sup, dir)
}

#[tokio::test]
async fn runs_in_the_release_dir_with_args_env_and_log() {
    let (_state, mut sup, dir) = setup("echo \"$GREETING $1 $(pwd)\"; exit 4", "1s");
    sup.start().await.expect("start");
    let exit = sup.exited().await;
    assert_eq!(exit.description, "process exited with status 4");
    let log = fs::read_to_string(dir.log_file()).expect("log");
    let release = dir.current_dir().expect("read").expect("installed");
    let cwd = fs::canonicalize(dir.release_path(&release)).expect("canon");
    assert!(log.contains(&format!("hi a1 {}", cwd.display())), "{log}");
    assert!(!dir.pid_file().exists(), "pidfile removed after exit");
}

/// The `Uid:`, `Gid:` and `Groups:` lines of /proc/PID/status.
fn ids_of(pid: i32) -> Vec<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .filter(|l| ["Uid:", "Gid:", "Groups:"].iter().any(|k| l.starts_with(k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test]
async fn runs_as_the_configured_user_with_its_files_readable() {
    // The tests run as root, as the agent does; the temp state dir is 0700.
    let script = "head -c 3 ./svc >/dev/null && echo release-readable; \
                  head -n 1 ../../service.log >/dev/null && echo log-readable; exec sleep 30";
    let (_state, mut sup, dir) =
        setup_with(script, "2s", "user = \"nobody\"\ngroup = \"nogroup\"\n");
    sup.start().await.expect("start");
    let pid = sup.pid().expect("pid");
    let log = || fs::read_to_string(dir.log_file()).expect("log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log().contains("log-readable") && Instant::now() < deadline {
        tokio::time::sleep(GROUP_POLL_INTERVAL).await;
    }
    let ids = ids_of(pid);
    println!("service as nobody: {ids:?}");
    assert_eq!(
        ids,
        [
            "Uid: 65534 65534 65534 65534",
            "Gid: 65534 65534 65534 65534",
            "Groups:"
        ],
        "{}",
        log()
    );
    let text = log();
    assert!(
        text.contains("release-readable") && text.contains("log-readable"),
        "{text}"
    );
    sup.stop().await.expect("was running");
    let release = dir.current_dir().expect("read").expect("installed");
    dir.check_tree(&release)
        .expect("sharing left the recorded tree as it was");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_and_kills_the_group() {
    // Ignores SIGTERM, and has a child in its group that would keep running otherwise.
    let (_state, mut sup, dir) = setup("trap '' TERM; sleep 30 & sleep 30; wait", "300ms");
    sup.start().await.expect("start");
    let pid = sup.pid().expect("pid");
    assert_eq!(
        fs::read_to_string(dir.pid_file()).expect("pidfile").trim(),
        pid.to_string()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let how = sup.stop().await.expect("was running");
    assert!(how.contains("killed"), "{how}");
    assert!(!group_alive(Pid::from_raw(pid)));
    assert!(sup.stop().await.is_none());
}

#[tokio::test]
async fn a_leftover_process_is_found_through_the_pidfile() {
    let (_state, mut sup, dir) = setup("exec sleep 30", "2s");
    sup.start().await.expect("start");
    let pid = sup.pid().expect("pid");
    // Forget the child as a crashed agent would; its pidfile stays behind.
    let run = sup.running.take().expect("running");
    drop(run);
    let fresh = ProcessBackend::new(dir.clone(), sup.cfg.clone());
    assert_eq!(fresh.stop_leftover().await, Some(pid));
    assert!(!group_alive(Pid::from_raw(pid)));
    assert!(!dir.pid_file().exists());

    // A pidfile naming someone else's process is ignored.
    fs::write(dir.pid_file(), format!("{}\n", std::process::id())).expect("pidfile");
    assert_eq!(fresh.stop_leftover().await, None);
}

#[tokio::test]
async fn start_without_a_release_is_a_clear_error() {
    let (_state, mut sup, dir) = setup("true", "1s");
    dir.remove_current().expect("remove");
    let err = sup.start().await.expect_err("nothing installed");
    assert!(err.to_string().contains("no release is installed"), "{err}");
}

/// Forgets the running process as a killed agent would: no stop, pidfile and record kept.
fn crash(sup: &mut ProcessBackend) -> i32 {
    let run = sup.running.take().expect("running");
    let pid = run.pgid.as_raw();
    drop(run);
    pid
}

#[tokio::test]
async fn a_process_left_by_a_killed_agent_is_adopted_and_supervised() {
    let (_state, mut sup, dir) = setup("exec sleep 30", "2s");
    sup.start().await.expect("start");
    let pid = crash(&mut sup);

    let mut fresh = ProcessBackend::new(dir.clone(), sup.cfg.clone());
    let (note, started) = fresh.take_over().await;
    started.expect("adopted");
    let note = note.expect("a note");
    assert!(
        note.starts_with(&format!("adopted process {pid} of s")),
        "{note}"
    );
    assert_eq!(fresh.pid(), Some(pid), "the same process, not restarted");
    assert!(dir.pid_file().exists() && fresh.instance_file().exists());

    // Its exit is noticed as for a child (no status: it is not ours to reap).
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
    let exit = tokio::time::timeout(Duration::from_secs(5), fresh.exited())
        .await
        .expect("the exit of an adopted process is noticed");
    assert_eq!(
        exit.description,
        "process exited (adopted from a previous agent, so its exit status is unknown)"
    );
    assert!(!fresh.is_running());
    assert!(!dir.pid_file().exists() && !fresh.instance_file().exists());
}

#[tokio::test]
async fn an_adopted_process_is_stopped_like_a_child() {
    let (_state, mut sup, dir) = setup("exec sleep 30", "2s");
    sup.start().await.expect("start");
    let pid = crash(&mut sup);
    let mut fresh = ProcessBackend::new(dir.clone(), sup.cfg.clone());
    fresh.take_over().await.1.expect("adopted");
    assert_eq!(fresh.pid(), Some(pid));
    let how = fresh.stop().await.expect("was running");
    assert!(how.starts_with("stopped (exited"), "{how}");
    assert!(!group_alive(Pid::from_raw(pid)));
}

#[tokio::test]
async fn a_reused_pid_is_not_adopted() {
    let (_state, mut sup, dir) = setup("exec sleep 30", "2s");
    sup.start().await.expect("start");
    let pid = crash(&mut sup);
    // The record says the process started at another time: not the instance that was started.
    let mut record = adopt::read_record(&sup.instance_file()).expect("record");
    record.start_time += 1;
    adopt::write_record(&sup.instance_file(), &record).expect("write");

    let mut fresh = ProcessBackend::new(dir.clone(), sup.cfg.clone());
    let (note, started) = fresh.take_over().await;
    started.expect("started fresh");
    let note = note.expect("a note");
    assert!(
        note.contains(&format!("did not adopt process {pid}"))
            && note.contains("not the recorded")
            && note.contains("stopped it and started s again"),
        "{note}"
    );
    assert_ne!(fresh.pid(), Some(pid));
    assert!(!group_alive(Pid::from_raw(pid)), "it ran from our releases");
    fresh.stop().await;
}

#[tokio::test]
async fn a_pidfile_naming_another_program_leaves_it_alone() {
    let (_state, mut sup, dir) = setup("exec sleep 30", "2s");
    sup.start().await.expect("start");
    crash(&mut sup);
    // Someone else's process, leading its own group, outside the service's releases.
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .current_dir("/")
        .process_group(0)
        .spawn()
        .expect("sleep");
    let other_pid = other.id() as i32;
    let old = sup.pid_file_pid(&dir);
    fs::write(dir.pid_file(), format!("{other_pid}\n")).expect("pidfile");

    let mut fresh = ProcessBackend::new(dir.clone(), sup.cfg.clone());
    let (note, started) = fresh.take_over().await;
    started.expect("started fresh");
    let note = note.expect("a note");
    assert!(
        note.contains(&format!("names process {other_pid}, which is not s's"))
            && note.contains("it runs in /, outside this service's releases"),
        "{note}"
    );
    assert!(group_alive(Pid::from_raw(other_pid)), "left alone");
    assert_ne!(fresh.pid(), Some(other_pid));
    let _ = other.kill();
    let _ = other.wait();
    fresh.stop().await;
    let _ = killpg(Pid::from_raw(old), Signal::SIGKILL);
}

#[tokio::test]
async fn shutdown_leaves_the_service_running_unless_stop_with_agent() {
    let (_state, mut sup, dir) = setup("exec sleep 30", "2s");
    sup.start().await.expect("start");
    let pid = sup.pid().expect("pid");
    sup.shutdown().await;
    assert!(group_alive(Pid::from_raw(pid)), "left running");
    let mut fresh = ProcessBackend::new(dir.clone(), sup.cfg.clone());
    fresh.take_over().await.1.expect("adopted");
    assert_eq!(fresh.pid(), Some(pid));
    fresh.stop().await;

    let (_state, mut sup, _dir) = setup_with("exec sleep 30", "2s", "stop_with_agent = true\n");
    sup.start().await.expect("start");
    let pid = sup.pid().expect("pid");
    sup.shutdown().await;
    assert!(!group_alive(Pid::from_raw(pid)), "stopped with the agent");
}

impl ProcessBackend {
    fn pid_file_pid(&self, dir: &ServiceDir) -> i32 {
        fs::read_to_string(dir.pid_file())
            .expect("pidfile")
            .trim()
            .parse()
            .expect("pid")
    }
}

#[test]
fn stop_with_agent_is_only_for_the_process_backend() {
    let text = "host_id = \"h\"\ncoordinator = \"http://127.0.0.1:1\"\nstate_dir = \"/s\"\n\
                [[services]]\nname = \"s\"\nbackend = \"systemd\"\nunit = \"s.service\"\n\
                binary = \"svc\"\nstop_with_agent = true\n";
    let err = Config::parse(text).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "agent config field `services[0].stop_with_agent`: does not apply to backend = \
         \"systemd\"; it is only for backend = \"process\" (systemd units and containers \
         always outlive the agent); remove it"
    );
}
