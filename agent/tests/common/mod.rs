//! Helpers shared by the agent's integration tests: releases written as shell scripts, a
//! config around them, and reading the executor's outbox.
#![allow(dead_code)]

// Real managers live in the e2e harness crate, shared with the tests through the coordinator.
// Each test binary uses one of them or neither.
#[allow(unused_imports)]
pub use rollgate_tests::managers as docker_engine;
#[allow(unused_imports)]
pub use rollgate_tests::managers as user_manager;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_agent::Config;
use rollgate_agent::Outbox;
use rollgate_proto::pb::{self, agent_message::Msg};
use sha2::{Digest, Sha256};

/// Longest any single test waits for a result.
pub const RESULT_WAIT: Duration = Duration::from_secs(20);

/// A healthy release: writes its pid to `healthy.pid` in its release dir (its cwd), which the
/// exec probe checks, then becomes `sleep`.
pub fn healthy(version: &str) -> String {
    format!("#!/bin/sh\n# {version}\necho \"$$\" > healthy.pid\nexec sleep 1000\n")
}

/// A release that crashes at start.
pub fn crashing(version: &str) -> String {
    format!("#!/bin/sh\n# {version}\necho 'crashing on purpose' >&2\nexit 3\n")
}

/// A release that runs but never passes its probe.
pub fn unhealthy(version: &str) -> String {
    format!("#!/bin/sh\n# {version}\nexec sleep 1000\n")
}

/// One test's world: a state dir and a place for artifacts.
pub struct World {
    pub root: tempfile::TempDir,
}

impl Drop for World {
    /// Service processes outlive the agent (`stop_with_agent = false`): kill those still
    /// running from this world's releases, so tests leave nothing behind.
    fn drop(&mut self) {
        let root = std::fs::canonicalize(self.root.path()).unwrap_or_default();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            if !root.as_os_str().is_empty() && cwd.starts_with(&root) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

impl World {
    pub fn new() -> World {
        World {
            root: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// Where [`World::release`] writes artifacts (an allowed `file://` dir in the config).
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.path().join("artifacts")
    }

    pub fn service_dir(&self) -> PathBuf {
        self.state_dir().join("services").join("demo")
    }

    /// The agent config: service `demo` whose exec probe checks the current release's pid
    /// file. `coordinator` is where the session dials.
    pub fn config_text(&self, coordinator: &str) -> String {
        self.config_text_with(coordinator, "", "")
    }

    /// [`World::config_text`] with more keys for the service (`service_keys`, e.g.
    /// `binary = "bin/x"`, which replaces the default binary) and more tables after its
    /// probe (`tables`, e.g. `[services.hooks]`).
    pub fn config_text_with(&self, coordinator: &str, service_keys: &str, tables: &str) -> String {
        let pidfile = self.service_dir().join("current").join("healthy.pid");
        let binary = if service_keys.contains("binary =") {
            ""
        } else {
            "binary = \"demo-svc\""
        };
        format!(
            r#"host_id = "web-1"
coordinator = "{coordinator}"
state_dir = "{state}"
heartbeat_interval = "200ms"
file_source_dirs = ["{artifacts}"]
[labels]
site = "a"
[[services]]
name = "demo"
backend = "process"
{binary}
stop_timeout = "2s"
restart_delay = "100ms"
{service_keys}
[[services.probes]]
kind = "exec"
command = ["/bin/sh", "-c", 'kill -0 "$(cat {pidfile})" 2>/dev/null']
interval = "50ms"
timeout = "1s"
{tables}
"#,
            state = self.state_dir().display(),
            artifacts = self.artifacts_dir().display(),
            pidfile = pidfile.display(),
        )
    }

    pub fn config(&self) -> Config {
        Config::parse(&self.config_text("http://127.0.0.1:1")).expect("config")
    }

    /// Writes an artifact and returns the release that names it (`file://` source).
    pub fn release(&self, version: &str, body: &str) -> pb::Release {
        self.release_bytes(version, body.as_bytes())
    }

    /// [`World::release`] for any bytes (a tarball, say).
    pub fn release_bytes(&self, version: &str, body: &[u8]) -> pb::Release {
        let dir = self.artifacts_dir();
        std::fs::create_dir_all(&dir).expect("artifacts dir");
        let digest = hex::encode(Sha256::digest(body));
        let path = dir.join(format!("{version}-{}.bin", &digest[..8]));
        std::fs::write(&path, body).expect("artifact");
        pb::Release {
            version: version.into(),
            source: format!("file://{}", path.display()),
            sha256: digest,
            size: body.len() as u64,
            signature: None,
        }
    }

    /// The release dir `current` points at (its file name), if any.
    pub fn current(&self) -> Option<String> {
        std::fs::read_link(self.service_dir().join("current"))
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// The pid the running release wrote.
    pub fn running_pid(&self) -> Option<i32> {
        let p = self.service_dir().join("current").join("healthy.pid");
        std::fs::read_to_string(p).ok()?.trim().parse().ok()
    }
}

pub fn sha(body: &str) -> String {
    hex::encode(Sha256::digest(body.as_bytes()))
}

pub fn order(
    token: u64,
    release: pb::Release,
    min_healthy_ms: u64,
    deadline_ms: u64,
) -> pb::UpdateOrder {
    pb::UpdateOrder {
        rollout_id: format!("r{token}"),
        token,
        service: "demo".into(),
        release: Some(release),
        min_healthy_time_ms: min_healthy_ms,
        healthy_deadline_ms: deadline_ms,
        rollback: false,
    }
}

/// What the outbox said about one order.
#[derive(Debug, Default)]
pub struct Seen {
    pub steps: Vec<pb::Step>,
    pub messages: Vec<String>,
    pub statuses: Vec<pb::ServiceStatus>,
}

/// Reads the outbox until the result for `token`, collecting progress and statuses on the way.
pub async fn result_for(outbox: &mut Outbox, token: u64) -> (pb::OrderResult, Seen) {
    let mut seen = Seen::default();
    let deadline = tokio::time::Instant::now() + RESULT_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, outbox.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("no result for token {token} within {RESULT_WAIT:?}; saw {seen:?}")
            })
            .expect("outbox open");
        match msg.msg {
            Some(Msg::Result(r)) if r.token == token => return (r, seen),
            Some(Msg::Progress(p)) if p.token == token => {
                seen.steps.push(p.step());
                seen.messages.push(p.message);
            }
            Some(Msg::Status(s)) => seen.statuses.push(s),
            _ => {}
        }
    }
}

/// Reads the outbox until a status with `health` arrives.
pub async fn status(outbox: &mut Outbox, health: pb::Health) -> pb::ServiceStatus {
    let deadline = tokio::time::Instant::now() + RESULT_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, outbox.recv())
            .await
            .unwrap_or_else(|_| panic!("no {health:?} status within {RESULT_WAIT:?}"))
            .expect("outbox open");
        if let Some(Msg::Status(s)) = msg.msg {
            if s.health() == health {
                return s;
            }
        }
    }
}

/// Whether process `pid` is alive (and not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Reads the outbox until the order with `token` reports `step`.
pub async fn wait_step(outbox: &mut Outbox, token: u64, step: pb::Step) {
    let deadline = tokio::time::Instant::now() + RESULT_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, outbox.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("token {token} did not reach {step:?} within {RESULT_WAIT:?}")
            })
            .expect("outbox open");
        if let Some(Msg::Progress(p)) = msg.msg {
            if p.token == token && p.step() == step {
                return;
            }
        }
    }
}

pub fn stage_order(rollout_id: &str, release: pb::Release) -> pb::StageOrder {
    pb::StageOrder {
        rollout_id: rollout_id.into(),
        service: "demo".into(),
        release: Some(release),
    }
}

/// Reads the outbox until the answer to a stage order of `rollout_id`.
pub async fn staged_result(outbox: &mut Outbox, rollout_id: &str) -> pb::StageResult {
    let deadline = tokio::time::Instant::now() + RESULT_WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, outbox.recv())
            .await
            .unwrap_or_else(|_| panic!("no stage result for {rollout_id} within {RESULT_WAIT:?}"))
            .expect("outbox open");
        if let Some(Msg::Staged(r)) = msg.msg {
            if r.rollout_id == rollout_id {
                return r;
            }
        }
    }
}

/// The source file a `file://` release names.
pub fn source_path(release: &pb::Release) -> PathBuf {
    PathBuf::from(
        release
            .source
            .strip_prefix("file://")
            .expect("a file:// release"),
    )
}

/// The release dir a release is installed as (`<version>-<sha12>`).
pub fn release_dir(world: &World, release: &pb::Release) -> PathBuf {
    world.service_dir().join("releases").join(format!(
        "{}-{}",
        release.version,
        &release.sha256[..12]
    ))
}
