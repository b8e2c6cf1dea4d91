//! Following a rollout with `WatchRollout` until it ends: redraw in place on a terminal, print
//! a new block per change otherwise (readable in logs and CI), reconnect across a coordinator
//! restart or failover.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use anyhow::bail;
use rollgate_proto::pb::RolloutStatus;

use crate::args::OutputFormat;
use crate::client::{rollout_name, ControlError, Coordinator};
use crate::commands::{output_error, Finish};
use crate::{json, render};

/// Pause before re-opening a watch that broke.
pub const WATCH_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Re-opening attempts in a row (without any update in between) before giving up; with
/// [`WATCH_RECONNECT_DELAY`] this rides out a coordinator failover of half a minute or so.
pub const WATCH_MAX_RECONNECTS: u32 = 15;

/// Phases after which nothing changes any more.
pub fn is_terminal(phase: &str) -> bool {
    matches!(phase, "succeeded" | "failed" | "aborted" | "rolled_back")
}

/// A rollout has ended and no host is still in the middle of its update (a halted rollout's
/// in-flight hosts finish or roll back after the phase changes): nothing will change any more.
pub fn is_settled(s: &RolloutStatus) -> bool {
    is_terminal(&s.phase) && s.hosts.iter().all(|h| h.state != "updating")
}

/// Prints successive statuses of one rollout, skipping those that look the same as the last.
#[derive(Debug)]
pub struct Printer {
    format: OutputFormat,
    /// Redraw the last block in place (a terminal) rather than print a new one (a log).
    redraw: bool,
    /// The last block printed, to skip repeats.
    last: Option<String>,
    /// Lines of the last block still on screen (redraw mode), to clear before the next one.
    drawn_lines: usize,
}

impl Printer {
    /// A printer for `format`; `redraw` only applies to text.
    pub fn new(format: OutputFormat, redraw: bool) -> Self {
        Printer {
            format,
            redraw: redraw && format == OutputFormat::Text,
            last: None,
            drawn_lines: 0,
        }
    }

    fn render(&self, s: &RolloutStatus) -> String {
        match self.format {
            OutputFormat::Text => render::status_block(s),
            // One compact object per line, for `jq` and line-oriented tools.
            OutputFormat::Json => json::rollout_status(s).to_string(),
        }
    }

    /// Prints `s` unless it renders the same as the last one. Returns whether it printed.
    pub fn show(&mut self, s: &RolloutStatus, out: &mut impl Write) -> io::Result<bool> {
        let block = self.render(s);
        if self.last.as_deref() == Some(block.as_str()) {
            return Ok(false);
        }
        if self.redraw && self.drawn_lines > 0 {
            // Cursor up to the first line of the last block, then clear to the end of screen.
            // (A line wider than the terminal wraps and is cleared only in part; cosmetic.)
            write!(out, "\x1b[{}F\x1b[J", self.drawn_lines)?;
        } else if !self.redraw && self.format == OutputFormat::Text && self.last.is_some() {
            writeln!(out)?;
        }
        writeln!(out, "{block}")?;
        out.flush()?;
        self.drawn_lines = block.lines().count();
        self.last = Some(block);
        Ok(true)
    }

    /// Something else was printed below the last block: start the next one fresh.
    pub fn interrupted(&mut self) {
        self.drawn_lines = 0;
        self.last = None;
    }
}

/// Why a watch stream stopped before the rollout ended.
enum Break {
    /// The stream ended cleanly (e.g. the replica serving it shut down).
    Ended,
    /// The stream or its opening failed.
    Failed(ControlError),
}

/// Follows rollout `id` (empty: the most recent) until it ends, printing in `format`.
/// Succeeded → [`Finish::Success`]; failed, aborted or rolled back → the reason on stderr and
/// [`Finish::RolloutNotSucceeded`].
pub async fn follow(coord: &Coordinator, id: &str, format: OutputFormat) -> anyhow::Result<Finish> {
    let redraw = io::stdout().is_terminal();
    let mut printer = Printer::new(format, redraw);
    // Pinned to the first status's id, so a reconnect keeps following the same rollout even
    // if a newer one starts meanwhile.
    let mut id = id.to_string();
    let mut attempts = 0u32;
    loop {
        let why = match coord.watch_rollout(&id).await {
            Err(e) => Break::Failed(e),
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(status)) => {
                        attempts = 0;
                        if id.is_empty() {
                            id = status.id.clone();
                        }
                        printer
                            .show(&status, &mut io::stdout().lock())
                            .map_err(output_error)?;
                        if is_settled(&status) {
                            return Ok(conclude(&status));
                        }
                    }
                    Ok(None) => break Break::Ended,
                    Err(status) => break Break::Failed(coord.watch_error(&id, &status)),
                }
            },
        };
        let why = match why {
            Break::Failed(e) if !e.is_transient() => return Err(e.into()),
            Break::Failed(e) => e.to_string(),
            Break::Ended => "the coordinator closed the stream".to_string(),
        };
        attempts += 1;
        if attempts > WATCH_MAX_RECONNECTS {
            bail!(
                "lost the watch of {} after {WATCH_MAX_RECONNECTS} attempts to reconnect: {why}",
                rollout_name(&id)
            );
        }
        eprintln!(
            "rollgate: watch of {} interrupted ({why}); reconnecting in {} s",
            rollout_name(&id),
            WATCH_RECONNECT_DELAY.as_secs()
        );
        printer.interrupted();
        tokio::time::sleep(WATCH_RECONNECT_DELAY).await;
    }
}

/// The exit outcome for a rollout in a terminal phase (says why on stderr if it failed).
fn conclude(s: &RolloutStatus) -> Finish {
    if s.phase == "succeeded" {
        return Finish::Success;
    }
    let reason = if s.reason.is_empty() {
        "no reason given"
    } else {
        s.reason.as_str()
    };
    eprintln!("rollgate: rollout {} {}: {reason}", s.id, s.phase);
    Finish::RolloutNotSucceeded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(phase: &str, done: u32) -> RolloutStatus {
        RolloutStatus {
            id: "r-1".into(),
            service: "demo".into(),
            version: "2".into(),
            phase: phase.into(),
            total: 2,
            done,
            ..Default::default()
        }
    }

    fn shown(printer: &mut Printer, statuses: &[RolloutStatus]) -> String {
        let mut out = Vec::new();
        for s in statuses {
            printer.show(s, &mut out).expect("write to memory");
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn log_mode_prints_changes_only() {
        let mut p = Printer::new(OutputFormat::Text, false);
        let out = shown(
            &mut p,
            &[
                status("rolling", 0),
                status("rolling", 0),
                status("succeeded", 2),
            ],
        );
        assert_eq!(
            out,
            format!(
                "{}\n\n{}\n",
                render::status_block(&status("rolling", 0)),
                render::status_block(&status("succeeded", 2))
            )
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn terminal_mode_redraws_in_place() {
        let mut p = Printer::new(OutputFormat::Text, true);
        let first = render::status_block(&status("rolling", 0));
        let lines = first.lines().count();
        let out = shown(&mut p, &[status("rolling", 0), status("rolling", 1)]);
        let second = render::status_block(&status("rolling", 1));
        assert_eq!(out, format!("{first}\n\x1b[{lines}F\x1b[J{second}\n"));

        // After an interruption the next block starts below, without clearing.
        p.interrupted();
        let out = shown(&mut p, &[status("rolling", 1)]);
        assert_eq!(out, format!("{second}\n"));
    }

    #[test]
    fn json_mode_prints_one_object_per_line() {
        let mut p = Printer::new(OutputFormat::Json, true);
        let out = shown(&mut p, &[status("rolling", 0), status("failed", 1)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        for line in lines {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(v["id"], "r-1");
        }
    }

    #[test]
    fn terminal_phases_and_outcomes() {
        let table = [
            ("pending", false),
            ("rolling", false),
            ("paused", false),
            ("succeeded", true),
            ("failed", true),
            ("aborted", true),
            ("rolled_back", true),
        ];
        for (phase, terminal) in table {
            assert_eq!(is_terminal(phase), terminal, "{phase}");
        }
        assert_eq!(conclude(&status("succeeded", 2)), Finish::Success);
        assert_eq!(conclude(&status("aborted", 1)), Finish::RolloutNotSucceeded);
    }

    #[test]
    fn settled_waits_for_hosts_still_updating() {
        let mut s = status("failed", 0);
        s.hosts = vec![rollgate_proto::pb::HostProgress {
            host_id: "h1".into(),
            state: "updating".into(),
            ..Default::default()
        }];
        assert!(!is_settled(&s), "a host is still rolling back");
        s.hosts[0].state = "rolled_back".into();
        assert!(is_settled(&s));
        s.phase = "rolling".into();
        assert!(!is_settled(&s));
    }
}
