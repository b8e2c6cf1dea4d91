//! What systemd says about a unit, and what it means for the agent.

/// What systemd says about a unit: the properties the agent judges it by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    /// `LoadState`: loaded, not-found, bad-setting, error, masked.
    pub load: String,
    /// `ActiveState`: active, reloading, inactive, failed, activating, deactivating.
    pub active: String,
    /// `SubState`, e.g. running, start, auto-restart, dead, failed.
    pub sub: String,
    /// `Result` of a service: success, exit-code, signal, core-dump, timeout,
    /// start-limit-hit, ... (empty for other unit types).
    pub result: String,
    /// `NRestarts`: automatic restarts since the last deliberate start.
    pub n_restarts: u32,
    /// `ExecMainCode`: 0 none yet, 1 exited, 2 killed, 3 dumped core.
    pub exec_main_code: i32,
    /// `ExecMainStatus`: exit status, or signal number when killed.
    pub exec_main_status: i32,
}

impl UnitState {
    /// Whether the unit is up: active (or reloading, which an active unit does).
    pub fn is_up(&self) -> bool {
        matches!(self.active.as_str(), "active" | "reloading")
    }

    /// "active (running)", "failed (failed, Result=exit-code, main process exited with status 3)".
    pub fn describe(&self) -> String {
        let mut extra = Vec::new();
        if !self.result.is_empty() && self.result != "success" {
            extra.push(format!("Result={}", self.result));
        }
        if let Some(main) = self.main_exit() {
            if self.result != "success" || self.active != "active" {
                extra.push(main);
            }
        }
        if extra.is_empty() {
            format!("{} ({})", self.active, self.sub)
        } else {
            format!("{} ({}, {})", self.active, self.sub, extra.join(", "))
        }
    }

    /// How the main process last ended, if it did.
    fn main_exit(&self) -> Option<String> {
        let s = self.exec_main_status;
        match self.exec_main_code {
            1 => Some(format!("main process exited with status {s}")),
            2 => Some(format!("main process was killed by signal {s}")),
            3 => Some(format!("main process dumped core (signal {s})")),
            _ => None,
        }
    }

    /// Why this state means the unit went down, or `None` while it is up or starting
    /// normally. `baseline` is `NRestarts` when the agent (re)started it; `starting` says the
    /// agent's start job is still running, when being inactive or activating is expected.
    pub fn down(&self, baseline: u32, starting: bool) -> Option<String> {
        if self.active == "failed" {
            return Some(if self.result == "start-limit-hit" {
                format!(
                    "hit its start limit (start-limit-hit: systemd restarted it too often and \
                     gave up){}",
                    self.main_exit()
                        .map(|m| format!("; {m}"))
                        .unwrap_or_default()
                )
            } else {
                format!("failed: {}", self.describe())
            });
        }
        if self.sub == "auto-restart" {
            return Some(format!(
                "crashed and systemd is restarting it: {}",
                self.describe()
            ));
        }
        if self.n_restarts > baseline {
            return Some(format!(
                "was restarted by systemd {} time(s) since it was started (NRestarts={}): {}",
                self.n_restarts - baseline,
                self.n_restarts,
                self.describe()
            ));
        }
        if !starting && matches!(self.active.as_str(), "inactive" | "deactivating") {
            return Some(format!("stopped: {}", self.describe()));
        }
        None
    }
}

/// What a finished start job's result means, for the reason of a failed start.
pub(super) fn job_failure(result: &str, state: &UnitState) -> String {
    match result {
        "timeout" => format!(
            "did not finish starting within systemd's start timeout (TimeoutStartSec=): {}",
            state.describe()
        ),
        "canceled" => "start was canceled (another job for the unit replaced it)".into(),
        "dependency" => format!(
            "did not start: a unit it depends on failed: {}",
            state.describe()
        ),
        "failed" => state
            .down(0, false)
            .unwrap_or_else(|| format!("failed to start: {}", state.describe())),
        other => format!("start job ended with {other:?}: {}", state.describe()),
    }
}
