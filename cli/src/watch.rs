//! Following a rollout with `WatchRollout` until it ends: redraw in place on a terminal, print
//! a new block per change otherwise (readable in logs and CI), reconnect across a coordinator
//! restart or failover, and hand over to the rollback rollout when the followed one is rolled
//! back.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use anyhow::bail;
use rollgate_proto::pb::RolloutStatus;
use rollgate_proto::text::{printable_json, printable_lines};

use crate::args::OutputFormat;
use crate::client::{rollout_name, ControlError, Coordinator};
use crate::commands::{output_error, Finish};
use crate::{json, render};

/// Pause before re-opening a watch that broke.
pub const WATCH_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Re-opening attempts in a row (without any update in between) before giving up; with
/// [`WATCH_RECONNECT_DELAY`] this rides out a coordinator failover of half a minute or so.
pub const WATCH_MAX_RECONNECTS: u32 = 15;

/// What to do after a status arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Keep watching this rollout.
    Wait,
    /// The rollout is being (or was) rolled back by this rollout: follow that one instead.
    FollowRollback(String),
    /// Nothing will change any more.
    Settled,
}

/// The decision after status `s` of the rollout being followed. A rollout being rolled back
/// hands over to its rollback as soon as the coordinator names it (the rollback rollout now
/// drives the hosts); one that is rolling back without a named rollback yet is waited on.
pub fn next(s: &RolloutStatus) -> Next {
    if let Some(rollback) = s.rollback_to_follow() {
        return Next::FollowRollback(rollback.to_string());
    }
    if s.is_settled() {
        Next::Settled
    } else {
        Next::Wait
    }
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
            OutputFormat::Json => printable_json(&json::message(s).to_string()).into_owned(),
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
    /// The rollout is being rolled back by this one; follow it instead.
    Handover(String),
}

/// Follows rollout `id` (empty: the most recent) until it ends, printing in `format`. When the
/// rollout is rolled back, says so and follows the rollback rollout until it ends.
/// Succeeded → [`Finish::Success`]; failed, aborted or rolled back (including handed over to a
/// rollback) → the reason on stderr and [`Finish::RolloutNotSucceeded`].
pub async fn follow(coord: &Coordinator, id: &str, format: OutputFormat) -> anyhow::Result<Finish> {
    let redraw = io::stdout().is_terminal();
    let mut printer = Printer::new(format, redraw);
    // Pinned to the first status's id, so a reconnect keeps following the same rollout even
    // if a newer one starts meanwhile.
    let mut id = id.to_string();
    // The last status of each rollout handed over to its rollback, oldest first: the first
    // one's outcome decides the exit status.
    let mut handed_over: Vec<RolloutStatus> = Vec::new();
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
                        let step = match next(&status) {
                            // Never go round in circles between rollouts already followed.
                            Next::FollowRollback(r) if handed_over.iter().any(|h| h.id == r) => {
                                if status.is_settled() {
                                    Next::Settled
                                } else {
                                    Next::Wait
                                }
                            }
                            other => other,
                        };
                        match step {
                            Next::Wait => {}
                            Next::Settled => {
                                let (finish, lines) = verdict(&handed_over, &status);
                                for line in lines {
                                    say(&line);
                                }
                                return Ok(finish);
                            }
                            Next::FollowRollback(rollback) => {
                                handed_over.push(status);
                                break Break::Handover(rollback);
                            }
                        }
                    }
                    Ok(None) => break Break::Ended,
                    Err(status) => break Break::Failed(coord.watch_error(&id, &status)),
                }
            },
        };
        let why = match why {
            Break::Handover(rollback) => {
                let line = render::following_rollback(&id, &rollback);
                match format {
                    OutputFormat::Text => {
                        let mut out = io::stdout().lock();
                        writeln!(out, "{line}")
                            .and_then(|()| out.flush())
                            .map_err(output_error)?;
                    }
                    // Standard output stays one JSON object per line.
                    OutputFormat::Json => say(&line),
                }
                printer.interrupted();
                id = rollback;
                continue;
            }
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
        say(&format!(
            "watch of {} interrupted ({why}); reconnecting in {} s",
            rollout_name(&id),
            WATCH_RECONNECT_DELAY.as_secs()
        ));
        printer.interrupted();
        tokio::time::sleep(WATCH_RECONNECT_DELAY).await;
    }
}

/// Prints `line` on stderr after "rollgate: ", control characters escaped (reasons and errors
/// may quote what a host sent).
fn say(line: &str) {
    eprintln!("rollgate: {}", printable_lines(line));
}

fn reason_of(s: &RolloutStatus) -> &str {
    if s.reason.is_empty() {
        "no reason given"
    } else {
        s.reason.as_str()
    }
}

/// The exit outcome of a watch that ended at the settled status `last`, after handing over
/// from each rollout in `handed_over` (oldest first) to its rollback, and the lines to print
/// on stderr. A watch that had to follow a rollback never succeeds: the rollout it was asked
/// to follow did not; its reason comes first, then how the rollback ended.
pub fn verdict(handed_over: &[RolloutStatus], last: &RolloutStatus) -> (Finish, Vec<String>) {
    let Some(original) = handed_over.first() else {
        if last.did_its_job() {
            return (Finish::Success, Vec::new());
        }
        return (
            Finish::RolloutNotSucceeded,
            vec![format!(
                "rollout {} {}: {}",
                last.id,
                last.phase().word(),
                reason_of(last)
            )],
        );
    };
    let mut lines = vec![format!(
        "rollout {} did not succeed and was rolled back by {}: {}",
        original.id,
        original.rolled_back_by,
        reason_of(original)
    )];
    if last.did_its_job() {
        lines.push(format!("rollback rollout {} succeeded", last.id));
    } else {
        lines.push(format!(
            "rollback rollout {} {}: {}",
            last.id,
            last.phase().word(),
            reason_of(last)
        ));
    }
    (Finish::RolloutNotSucceeded, lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_proto::pb::{HostState, Phase};

    fn status(phase: Phase, done: u32) -> RolloutStatus {
        RolloutStatus {
            id: "r-1".into(),
            service: "demo".into(),
            version: "2".into(),
            phase: phase as i32,
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
                status(Phase::Rolling, 0),
                status(Phase::Rolling, 0),
                status(Phase::Succeeded, 2),
            ],
        );
        assert_eq!(
            out,
            format!(
                "{}\n\n{}\n",
                render::status_block(&status(Phase::Rolling, 0)),
                render::status_block(&status(Phase::Succeeded, 2))
            )
        );
        assert!(!out.contains('\x1b'));
    }

    #[test]
    fn terminal_mode_redraws_in_place() {
        let mut p = Printer::new(OutputFormat::Text, true);
        let first = render::status_block(&status(Phase::Rolling, 0));
        let lines = first.lines().count();
        let out = shown(
            &mut p,
            &[status(Phase::Rolling, 0), status(Phase::Rolling, 1)],
        );
        let second = render::status_block(&status(Phase::Rolling, 1));
        assert_eq!(out, format!("{first}\n\x1b[{lines}F\x1b[J{second}\n"));

        // After an interruption the next block starts below, without clearing.
        p.interrupted();
        let out = shown(&mut p, &[status(Phase::Rolling, 1)]);
        assert_eq!(out, format!("{second}\n"));
    }

    #[test]
    fn json_mode_prints_one_object_per_line() {
        let mut p = Printer::new(OutputFormat::Json, true);
        let out = shown(
            &mut p,
            &[status(Phase::Rolling, 0), status(Phase::Failed, 1)],
        );
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
            (Phase::Unspecified, false),
            (Phase::Rolling, false),
            (Phase::Paused, false),
            (Phase::Succeeded, true),
            (Phase::Failed, true),
            (Phase::Aborted, true),
            (Phase::RolledBack, true),
        ];
        for (phase, terminal) in table {
            assert_eq!(phase.is_final(), terminal, "{phase:?}");
        }
        assert_eq!(
            verdict(&[], &status(Phase::Succeeded, 2)).0,
            Finish::Success
        );
        assert_eq!(
            verdict(&[], &status(Phase::Aborted, 1)).0,
            Finish::RolloutNotSucceeded
        );
    }

    fn updating(id: &str) -> rollgate_proto::pb::HostProgress {
        rollgate_proto::pb::HostProgress {
            host_id: id.into(),
            state: HostState::Updating as i32,
            ..Default::default()
        }
    }

    #[test]
    fn what_follows_a_status() {
        let with = |phase: Phase, rolled_back_by: &str, hosts| RolloutStatus {
            rolled_back_by: rolled_back_by.into(),
            hosts,
            ..status(phase, 0)
        };
        let table = [
            (with(Phase::Rolling, "", vec![]), Next::Wait),
            (with(Phase::Paused, "", vec![]), Next::Wait),
            (with(Phase::Failed, "", vec![updating("h1")]), Next::Wait),
            (with(Phase::Failed, "", vec![]), Next::Settled),
            (with(Phase::Succeeded, "", vec![]), Next::Settled),
            // Rolling back, rollback not named yet: keep watching until it is.
            (with(Phase::RollingBack, "", vec![]), Next::Wait),
            (
                with(Phase::RollingBack, "r-2", vec![updating("h1")]),
                Next::FollowRollback("r-2".into()),
            ),
            // Ended with the rollback already done or under way: follow it (it settles at
            // once when it is over).
            (
                with(Phase::RolledBack, "r-2", vec![]),
                Next::FollowRollback("r-2".into()),
            ),
            (
                with(Phase::Failed, "r-2", vec![]),
                Next::FollowRollback("r-2".into()),
            ),
            // A rollout cannot roll itself back; don't loop on a bad status.
            (with(Phase::RolledBack, "r-1", vec![]), Next::Settled),
        ];
        for (s, want) in table {
            assert_eq!(
                next(&s),
                want,
                "{:?} rolled_back_by={:?}",
                s.phase(),
                s.rolled_back_by
            );
        }
    }

    #[test]
    fn verdicts() {
        let with = |id: &str, phase: Phase, reason: &str, rolled_back_by: &str| RolloutStatus {
            id: id.into(),
            phase: phase as i32,
            reason: reason.into(),
            rolled_back_by: rolled_back_by.into(),
            ..Default::default()
        };
        let original = with("r-1", Phase::RollingBack, "2 hosts failed (max 1)", "r-2");
        let table = [
            (vec![], with("r-1", Phase::Succeeded, "", ""), Finish::Success, vec![]),
            (
                vec![],
                with("r-1", Phase::Failed, "h2 failed health checks", ""),
                Finish::RolloutNotSucceeded,
                vec!["rollout r-1 failed: h2 failed health checks"],
            ),
            (
                vec![],
                with("r-1", Phase::Aborted, "", ""),
                Finish::RolloutNotSucceeded,
                vec!["rollout r-1 aborted: no reason given"],
            ),
            (
                vec![original.clone()],
                with("r-2", Phase::Succeeded, "", ""),
                Finish::RolloutNotSucceeded,
                vec![
                    "rollout r-1 did not succeed and was rolled back by r-2: 2 hosts failed (max 1)",
                    "rollback rollout r-2 succeeded",
                ],
            ),
            (
                // `rollout rollback r-1 --watch` follows r-2 directly; its end is a success
                // however it is worded.
                vec![],
                RolloutStatus {
                    rollback_of: "r-1".into(),
                    ..with("r-2", Phase::RolledBack, "", "")
                },
                Finish::Success,
                vec![],
            ),
            (
                vec![original.clone()],
                RolloutStatus {
                    rollback_of: "r-1".into(),
                    ..with("r-2", Phase::RolledBack, "", "")
                },
                Finish::RolloutNotSucceeded,
                vec![
                    "rollout r-1 did not succeed and was rolled back by r-2: 2 hosts failed (max 1)",
                    "rollback rollout r-2 succeeded",
                ],
            ),
            (
                // An ordinary rollout rolled back in place (no separate rollback rollout).
                vec![],
                with("r-1", Phase::RolledBack, "2 hosts failed (max 1)", ""),
                Finish::RolloutNotSucceeded,
                vec!["rollout r-1 rolled_back: 2 hosts failed (max 1)"],
            ),
            (
                vec![original],
                with("r-2", Phase::Failed, "h3 lost", ""),
                Finish::RolloutNotSucceeded,
                vec![
                    "rollout r-1 did not succeed and was rolled back by r-2: 2 hosts failed (max 1)",
                    "rollback rollout r-2 failed: h3 lost",
                ],
            ),
        ];
        for (handed_over, last, finish, lines) in table {
            let (got_finish, got_lines) = verdict(&handed_over, &last);
            assert_eq!(got_finish, finish, "{last:?}");
            assert_eq!(got_lines, lines, "{last:?}");
        }
    }

    #[test]
    fn settled_waits_for_hosts_still_updating() {
        let mut s = status(Phase::Failed, 0);
        s.hosts = vec![rollgate_proto::pb::HostProgress {
            host_id: "h1".into(),
            state: HostState::Updating as i32,
            ..Default::default()
        }];
        assert!(!s.is_settled(), "a host is still rolling back");
        s.hosts[0].set_state(HostState::RolledBack);
        assert!(s.is_settled());
        s.set_phase(Phase::Rolling);
        assert!(!s.is_settled());
    }
}
