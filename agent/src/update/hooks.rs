//! Hooks: the operator's commands around an update (drain before the stop, undrain after the
//! start, alerting on a rollback), each with a timeout and an environment naming the update.
//!
//! Every command runs as `/bin/sh -c COMMAND` in the service's dir, in its own process group
//! (a timeout kills everything it started), with the agent's environment plus:
//!
//! | variable | value |
//! |---|---|
//! | `ROLLGATE_HOOK` | `pre_stop`, `pre_start`, `post_start` or `on_rollback` |
//! | `ROLLGATE_SERVICE` | the service's name |
//! | `ROLLGATE_OLD_VERSION` | the version before the update ("" on a first install) |
//! | `ROLLGATE_NEW_VERSION` | the version the update installs |
//! | `ROLLGATE_ROLLOUT` | the rollout's id |
//! | `ROLLGATE_HOST` | this host's id |
//!
//! Each output line goes to the agent's log; a summary (with the last line) goes into the
//! order's progress messages and, on failure, into its result.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::time::Instant;

use crate::config::Hooks;
use crate::probe::describe_exit;

/// Output lines of one command kept for its summary (all of them go to the log).
const KEPT_LINES: usize = 5;
/// Longest summary of a command's output put into a progress message or a result.
pub const SUMMARY_CHARS: usize = 300;
/// After a hook's shell exits, how long to keep reading output that children it left in the
/// background may still hold open.
const OUTPUT_DRAIN_GRACE: Duration = Duration::from_millis(200);

/// When a hook list runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before anything stops (drain).
    PreStop,
    /// After the swap, before the new release starts.
    PreStart,
    /// After the new release is healthy, before the commit (undrain).
    PostStart,
    /// After going back to the previous release.
    OnRollback,
}

impl Phase {
    /// The config key and `ROLLGATE_HOOK` value.
    pub fn name(self) -> &'static str {
        match self {
            Phase::PreStop => "pre_stop",
            Phase::PreStart => "pre_start",
            Phase::PostStart => "post_start",
            Phase::OnRollback => "on_rollback",
        }
    }
}

/// The commands configured for `phase`.
pub fn commands(hooks: &Hooks, phase: Phase) -> &[String] {
    match phase {
        Phase::PreStop => &hooks.pre_stop,
        Phase::PreStart => &hooks.pre_start,
        Phase::PostStart => &hooks.post_start,
        Phase::OnRollback => &hooks.on_rollback,
    }
}

/// What the hooks are told about the update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookEnv {
    /// Service name.
    pub service: String,
    /// Version before the update ("" if none).
    pub old_version: String,
    /// Version the update installs.
    pub new_version: String,
    /// Rollout id.
    pub rollout: String,
    /// Host id.
    pub host: String,
}

impl HookEnv {
    fn vars(&self, phase: Phase) -> [(&'static str, &str); 6] {
        [
            ("ROLLGATE_HOOK", phase.name()),
            ("ROLLGATE_SERVICE", &self.service),
            ("ROLLGATE_OLD_VERSION", &self.old_version),
            ("ROLLGATE_NEW_VERSION", &self.new_version),
            ("ROLLGATE_ROLLOUT", &self.rollout),
            ("ROLLGATE_HOST", &self.host),
        ]
    }
}

/// Runs `commands` in order, stopping at the first failure. `Ok` carries a one-line summary
/// for the progress message (`None` when there were no commands); `Err` says which command
/// failed, how, and its last output.
pub async fn run(
    phase: Phase,
    commands: &[String],
    env: &HookEnv,
    timeout: Duration,
    cwd: &Path,
) -> Result<Option<String>, String> {
    if commands.is_empty() {
        return Ok(None);
    }
    let mut done = Vec::with_capacity(commands.len());
    for cmd in commands {
        let t0 = Instant::now();
        let ran = run_one(phase, cmd, env, timeout, cwd).await;
        let took = rollgate_proto::spec::human(round_ms(t0.elapsed()));
        match ran {
            Ok(tail) => {
                tracing::info!(hook = phase.name(), "hook `{cmd}` succeeded in {took}");
                done.push(format!(
                    "`{}` ok in {took}{}",
                    shorten(cmd, 60),
                    said(&tail)
                ));
            }
            Err((how, tail)) => {
                let msg = format!(
                    "{} hook `{}` {how}{}",
                    phase.name(),
                    shorten(cmd, 80),
                    said(&tail)
                );
                tracing::warn!(hook = phase.name(), "{msg}");
                return Err(msg);
            }
        }
    }
    Ok(Some(format!("{} hooks: {}", phase.name(), done.join("; "))))
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// ": <last output>" or "".
fn said(tail: &[String]) -> String {
    match tail.last() {
        Some(last) => format!(": {}", shorten(last, SUMMARY_CHARS)),
        None => String::new(),
    }
}

/// `text` cut to at most `max` characters (with "…" when cut).
pub fn shorten(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// Runs one command; `Ok` with its last output lines, or `Err` with how it failed and them.
async fn run_one(
    phase: Phase,
    cmd: &str,
    env: &HookEnv,
    timeout: Duration,
    cwd: &Path,
) -> Result<Vec<String>, (String, Vec<String>)> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.vars(phase))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| (format!("cannot start: {e}"), Vec::new()))?;
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(Pid::from_raw);
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(forward_lines(out, lines_tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(forward_lines(err, lines_tx.clone()));
    }
    drop(lines_tx);
    let mut tail: Vec<String> = Vec::new();
    let mut keep = |line: String| {
        tracing::info!(hook = phase.name(), "{}: {line}", shorten(cmd, 60));
        tail.push(line);
        if tail.len() > KEPT_LINES {
            tail.remove(0);
        }
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        tokio::select! {
            st = child.wait() => break Some(st),
            Some(line) = lines_rx.recv() => keep(line),
            _ = tokio::time::sleep_until(deadline) => break None,
        }
    };
    let Some(status) = status else {
        if let Some(pg) = pgid {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        let _ = child.wait().await;
        readers.abort_all();
        while let Ok(line) = lines_rx.try_recv() {
            keep(line);
        }
        return Err((
            format!(
                "did not finish within {} and was killed",
                rollgate_proto::spec::human(timeout)
            ),
            tail,
        ));
    };
    // Output still in the pipes, or held open by children left in the background.
    let grace = Instant::now() + OUTPUT_DRAIN_GRACE;
    loop {
        tokio::select! {
            line = lines_rx.recv() => match line {
                Some(line) => keep(line),
                None => break,
            },
            _ = tokio::time::sleep_until(grace) => break,
        }
    }
    readers.abort_all();
    match status {
        Ok(st) if st.success() => Ok(tail),
        Ok(st) => Err((describe_exit(st), tail)),
        Err(e) => Err((format!("status unknown: {e}"), tail)),
    }
}

async fn forward_lines(
    from: impl AsyncRead + Unpin,
    to: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut lines = BufReader::new(from).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = line.trim_end().to_string();
        if !line.is_empty() && to.send(line).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HookEnv {
        HookEnv {
            service: "demo".into(),
            old_version: "1.0.0".into(),
            new_version: "2.0.0".into(),
            rollout: "r7".into(),
            host: "web-1".into(),
        }
    }

    #[tokio::test]
    async fn hooks_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ms = Duration::from_millis;
        // (name, commands, timeout, Ok(summary contains) / Err(reason contains))
        type Case = (
            &'static str,
            Vec<&'static str>,
            Duration,
            Result<&'static str, &'static str>,
        );
        let cases: Vec<Case> = vec![
            ("none", vec![], ms(1000), Ok("")),
            (
                "environment names the update",
                vec![r#"echo "$ROLLGATE_HOOK $ROLLGATE_SERVICE $ROLLGATE_OLD_VERSION->$ROLLGATE_NEW_VERSION $ROLLGATE_ROLLOUT $ROLLGATE_HOST""#],
                ms(5000),
                Ok("pre_stop hooks: `echo"),
            ),
            (
                "the last output line is the summary",
                // stdout and stderr are two pipes; which line arrives last across them is up to
                // the scheduler, so the stderr line comes well before the last stdout line.
                vec!["echo draining >&2; echo first; sleep 0.2; echo 'drained 3 connections'"],
                ms(5000),
                Ok(": drained 3 connections"),
            ),
            (
                "a failing command stops the list and says how",
                vec!["echo one", "echo 'backend busy' >&2; exit 3", "touch never"],
                ms(5000),
                Err("pre_stop hook `echo 'backend busy' >&2; exit 3` exited with status 3: backend busy"),
            ),
            (
                "a command that hangs is killed at the timeout, with what it started",
                vec!["echo waiting; sleep 30 & sleep 30"],
                ms(300),
                Err("did not finish within 300ms and was killed: waiting"),
            ),
            ("a missing program", vec!["/nonexistent/drain"], ms(5000), Err("exited with status 127")),
        ];
        for (name, cmds, timeout, want) in cases {
            let cmds: Vec<String> = cmds.into_iter().map(String::from).collect();
            let t0 = std::time::Instant::now();
            let got = run(Phase::PreStop, &cmds, &env(), timeout, dir.path()).await;
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{name}: took {:?}",
                t0.elapsed()
            );
            match (&got, want) {
                (Ok(None), Ok("")) => {}
                (Ok(Some(s)), Ok(w)) if !w.is_empty() && s.contains(w) => {}
                (Err(e), Err(w)) if e.contains(w) => {}
                _ => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        assert!(
            !dir.path().join("never").exists(),
            "the list stops at the first failure"
        );
    }

    #[tokio::test]
    async fn environment_and_working_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cmds = vec![
            r#"echo "$ROLLGATE_HOOK $ROLLGATE_SERVICE $ROLLGATE_OLD_VERSION $ROLLGATE_NEW_VERSION $ROLLGATE_ROLLOUT $ROLLGATE_HOST" > env.txt"#
                .to_string(),
        ];
        run(
            Phase::PostStart,
            &cmds,
            &env(),
            Duration::from_secs(5),
            dir.path(),
        )
        .await
        .expect("hook runs");
        let got = std::fs::read_to_string(dir.path().join("env.txt")).expect("written in cwd");
        assert_eq!(got.trim(), "post_start demo 1.0.0 2.0.0 r7 web-1");
    }

    #[test]
    fn shorten_cuts_long_text() {
        assert_eq!(shorten("  short  ", 10), "short");
        assert_eq!(shorten("abcdefghij", 5), "abcd…");
    }
}
