//! Text output for people: tables, rollout status blocks and relative times. Pure functions
//! of the wire messages (and of "now", passed in), so they are tested on tables.

use rollgate_proto::pb::{
    self, GroupBudget, HistoryEntry, HostInfo, HostProgress, RolloutPlan, RolloutStatus,
};

/// Columns in a table are separated by this many spaces.
const COLUMN_GAP: usize = 2;
/// Shown in a cell that has no value.
const EMPTY_CELL: &str = "-";
/// Host rows under a status header are indented by this.
const HOST_INDENT: &str = "  ";

const MS_PER_SEC: i64 = 1000;
const SECS_PER_MIN: i64 = 60;
const SECS_PER_HOUR: i64 = 60 * SECS_PER_MIN;
const SECS_PER_DAY: i64 = 24 * SECS_PER_HOUR;
/// Up to this age, relative times are shown in hours rather than days.
const SHOW_HOURS_UP_TO: i64 = 48 * SECS_PER_HOUR;

/// Hex digits of a sha256 shown in tables; the full digest is in `--output json`.
const SHORT_SHA_LEN: usize = 12;
/// Binary size units, each 1024 times the one before.
const SIZE_UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
const BYTES_PER_KIB: u64 = 1024;
/// Host state of a target the coordinator lost track of mid-update.
const LOST: &str = "lost";

/// The health word for a wire health value (unknown values read as "unknown").
pub fn health_word(health: i32) -> &'static str {
    pb::Health::try_from(health)
        .unwrap_or(pb::Health::Unknown)
        .word()
}

/// "yes" or "no".
pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// How long ago `then_ms` was at `now_ms` (both Unix milliseconds): "3s ago", "5m ago",
/// "2h ago", "3d ago"; "never" when `then_ms` is 0.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    // A clock a little ahead on the coordinator is not worth a negative age.
    let secs = (now_ms - then_ms).max(0) / MS_PER_SEC;
    if secs < SECS_PER_MIN {
        format!("{secs}s ago")
    } else if secs < SECS_PER_HOUR {
        format!("{}m ago", secs / SECS_PER_MIN)
    } else if secs < SHOW_HOURS_UP_TO {
        format!("{}h ago", secs / SECS_PER_HOUR)
    } else {
        format!("{}d ago", secs / SECS_PER_DAY)
    }
}

/// Lays out `rows` under `header` in left-aligned columns. Trailing spaces are trimmed.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(cur) => *cur = (*cur).max(w),
                None => widths.push(w),
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count() + COLUMN_GAP;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.trim_end().to_string()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines
}

/// `bytes` for people: "512 B", "1.5 KiB", "20.0 MiB".
pub fn human_size(bytes: u64) -> String {
    if bytes < BYTES_PER_KIB {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= BYTES_PER_KIB as f64 && unit + 1 < SIZE_UNITS.len() {
        value /= BYTES_PER_KIB as f64;
        unit += 1;
    }
    format!("{value:.1} {}", SIZE_UNITS[unit])
}

/// The first [`SHORT_SHA_LEN`] hex digits of a digest.
fn short_sha(sha256: &str) -> String {
    sha256.chars().take(SHORT_SHA_LEN).collect()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        EMPTY_CELL.to_string()
    } else {
        s.to_string()
    }
}

/// `k=v,k=v` with keys sorted.
fn labels(host: &HostInfo) -> String {
    let mut pairs: Vec<_> = host.labels.iter().collect();
    pairs.sort();
    let text = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    or_dash(&text)
}

/// `name version health, ...` with services sorted by name.
fn services(host: &HostInfo) -> String {
    let mut svcs: Vec<_> = host.services.iter().collect();
    svcs.sort_by(|a, b| a.service.cmp(&b.service));
    let text = svcs
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s.service,
                or_dash(&s.version),
                health_word(s.health)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    or_dash(&text)
}

/// The `rollgate hosts` table, hosts sorted by id.
pub fn hosts_table(hosts: &[HostInfo], now_ms: i64) -> Vec<String> {
    if hosts.is_empty() {
        return vec![
            "no hosts known yet: start rollgate-agent on a host and it will appear".into(),
        ];
    }
    let mut hosts: Vec<&HostInfo> = hosts.iter().collect();
    hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.host_id.clone(),
                yes_no(h.connected).to_string(),
                labels(h),
                services(h),
                if h.connected {
                    "now".to_string()
                } else {
                    ago(now_ms, h.last_seen_ms)
                },
            ]
        })
        .collect();
    table(
        &["HOST", "CONNECTED", "LABELS", "SERVICES", "LAST SEEN"],
        &rows,
    )
}

/// "W/N" for the wave a rollout is in, counting from 1 (the canary, when there is one, is
/// wave 1), or `None` when the rollout has a single wave.
fn wave_of(wave: u32, waves: u32) -> Option<String> {
    (waves > 1).then(|| format!("{}/{waves}", wave.saturating_add(1).min(waves)))
}

/// The header line of a status: id, service → version, phase, wave and counters.
pub fn status_header(s: &RolloutStatus) -> String {
    let mut line = format!(
        "rollout {}: {} -> {}  {}",
        s.id, s.service, s.version, s.phase
    );
    if let Some(wave) = wave_of(s.wave, s.waves) {
        line.push_str(&format!("  wave {wave}"));
    }
    line.push_str(&format!(
        "  done {}/{}  failed {} (max {})  unavailable {}/{}",
        s.done, s.total, s.failed, s.max_failures, s.unavailable, s.max_unavailable
    ));
    if s.staged > 0 {
        line.push_str(&format!("  staged {}/{}", s.staged, s.total));
    }
    line
}

/// "gate: ..." for a rollout waiting at a gate, with the command that opens a manual one.
fn gate_line(s: &RolloutStatus) -> Option<String> {
    if s.gate.is_empty() {
        return None;
    }
    if s.gate.starts_with("manual") {
        Some(format!(
            "gate: {} (`rollgate rollout promote {}` opens it)",
            s.gate, s.id
        ))
    } else {
        Some(format!("gate: {}", s.gate))
    }
}

/// "groups (by site): a 1/1, b 0/1": unavailable now / allowed, per group, sorted by name.
fn groups_line(group_by: &str, groups: &[GroupBudget]) -> String {
    let mut groups: Vec<&GroupBudget> = groups.iter().collect();
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    let text = groups
        .iter()
        .map(|g| {
            format!(
                "{} {}/{}",
                or_dash(&g.group),
                g.unavailable,
                g.max_unavailable
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("groups (by {group_by}): {}", or_dash(&text))
}

/// Widest progress cell in the host table; the full text is in `--output json`.
const PROGRESS_WIDTH: usize = 70;

/// "step: message" (or just the message when it already starts with the step), shortened to
/// [`PROGRESS_WIDTH`], or "-".
fn step_message(h: &HostProgress) -> String {
    let text = match (h.step.is_empty(), h.message.is_empty()) {
        (false, false) if h.message.starts_with(&h.step) => h.message.clone(),
        (false, false) => format!("{}: {}", h.step, h.message),
        (false, true) => h.step.clone(),
        (true, false) => h.message.clone(),
        (true, true) => return EMPTY_CELL.into(),
    };
    if text.chars().count() > PROGRESS_WIDTH {
        let cut: String = text.chars().take(PROGRESS_WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// A host's state cell: lost hosts in capitals, plus what it holds ([slot]) or has ready
/// ([staged], while still pending).
fn state_cell(h: &HostProgress) -> String {
    let mut cell = if h.state == LOST {
        LOST.to_uppercase()
    } else {
        or_dash(&h.state)
    };
    if h.holds_slot {
        cell.push_str(" [slot]");
    }
    if h.staged && h.state == "pending" {
        cell.push_str(" [staged]");
    }
    cell
}

/// The line under the host table for a host that needs a word: why it failed or rolled back,
/// or that it is lost and how to let the rollout go on without it.
fn host_note(h: &HostProgress) -> Option<String> {
    if h.state == LOST {
        let why = if h.reason.is_empty() {
            "no word from the host"
        } else {
            h.reason.as_str()
        };
        return Some(format!(
            "{}: LOST: {why}; it counts as unavailable until it reports healthy. If it is gone \
             for good: `rollgate host fence {}`",
            h.host_id, h.host_id
        ));
    }
    // A done host's "healthy for 2s" is no news.
    (!h.reason.is_empty() && h.state != "done").then(|| format!("{}: {}", h.host_id, h.reason))
}

/// A rollout's status for people: header, how it relates to other rollouts, its gate and
/// groups, what it waits for, why it ended, one row per host.
pub fn status_block(s: &RolloutStatus) -> String {
    let mut lines = vec![status_header(s)];
    if !s.rollback_of.is_empty() {
        lines.push(format!("rollback of rollout {}", s.rollback_of));
    }
    if !s.rolled_back_by.is_empty() {
        lines.push(format!("rolled back by rollout {}", s.rolled_back_by));
    }
    lines.extend(gate_line(s));
    if !s.group_by.is_empty() {
        lines.push(groups_line(&s.group_by, &s.groups));
    }
    if !s.blocked_by.is_empty() {
        lines.push(format!("waiting: {}", s.blocked_by));
    }
    if !s.reason.is_empty() {
        lines.push(format!("reason: {}", s.reason));
    }
    if s.hosts.is_empty() {
        lines.push(format!("{HOST_INDENT}(no target hosts)"));
        return lines.join("\n");
    }
    let by_group = !s.group_by.is_empty();
    let by_wave = s.waves > 1;
    let mut hosts: Vec<&HostProgress> = s.hosts.iter().collect();
    // In rollout order when there are waves, so the table reads top to bottom.
    if by_wave {
        hosts.sort_by(|a, b| (a.wave, &a.host_id).cmp(&(b.wave, &b.host_id)));
    } else {
        hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            let mut row = vec![h.host_id.clone()];
            if by_group {
                row.push(or_dash(&h.group));
            }
            if by_wave {
                row.push(h.wave.saturating_add(1).to_string());
            }
            row.extend([
                state_cell(h),
                or_dash(&h.running_version),
                health_word(h.health).to_string(),
                yes_no(h.connected).to_string(),
                step_message(h),
            ]);
            row
        })
        .collect();
    let mut header = vec!["HOST"];
    if by_group {
        header.push("GROUP");
    }
    if by_wave {
        header.push("WAVE");
    }
    header.extend(["STATE", "VERSION", "HEALTH", "CONNECTED", "PROGRESS"]);
    lines.extend(
        table(&header, &rows)
            .into_iter()
            .map(|l| format!("{HOST_INDENT}{l}")),
    );
    // Reasons are whole sentences; they go under the table, one per host, unshortened.
    lines.extend(
        hosts
            .iter()
            .filter_map(|h| host_note(h))
            .map(|note| format!("{HOST_INDENT}{note}")),
    );
    lines.join("\n")
}

/// The `rollgate rollout list` table, oldest first so the newest is next to the prompt.
pub fn rollouts_table(rollouts: &[RolloutStatus], now_ms: i64) -> Vec<String> {
    if rollouts.is_empty() {
        return vec!["no rollouts yet: start one with `rollgate rollout start SPEC.toml`".into()];
    }
    let mut rollouts: Vec<&RolloutStatus> = rollouts.iter().collect();
    rollouts.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    let rows: Vec<Vec<String>> = rollouts
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.service.clone(),
                r.version.clone(),
                r.phase.clone(),
                format!("{}/{}", r.done, r.total),
                r.failed.to_string(),
                ago(now_ms, r.created_at_ms),
            ]
        })
        .collect();
    table(
        &[
            "ID", "SERVICE", "VERSION", "PHASE", "DONE", "FAILED", "CREATED",
        ],
        &rows,
    )
}

/// What `rollout start` prints: the sentence, then the bare id for scripts.
pub fn started(s: &RolloutStatus) -> String {
    format!(
        "started rollout {}: {} -> {} on {} hosts (max unavailable {})\n{}",
        s.id, s.service, s.version, s.total, s.max_unavailable, s.id
    )
}

/// What `rollout pause|resume|abort|promote` prints: the new phase (and wave), why, and the
/// gate it now waits at, if any.
pub fn phase_changed(s: &RolloutStatus) -> String {
    let mut line = format!("rollout {} is now {}", s.id, s.phase);
    if let Some(wave) = wave_of(s.wave, s.waves) {
        line.push_str(&format!(", wave {wave}"));
    }
    if !s.reason.is_empty() {
        line.push_str(&format!(" ({})", s.reason));
    }
    if let Some(gate) = gate_line(s) {
        line.push('\n');
        line.push_str(&gate);
    }
    line
}

/// What `rollout rollback` prints, given the status of the new rollback rollout and the id
/// the operator named.
pub fn rollback_started(s: &RolloutStatus, original: &str) -> String {
    let original = if s.rollback_of.is_empty() {
        original
    } else {
        s.rollback_of.as_str()
    };
    format!(
        "rolling back {original}: started rollback rollout {} to {} on {} hosts",
        s.id, s.version, s.total
    )
}

/// What a watch prints when the followed rollout is handed over to its rollback.
pub fn following_rollback(id: &str, rollback_id: &str) -> String {
    format!("rollout {id} is being rolled back by {rollback_id}; following it")
}

/// A dry run for people: what, where, how fast, in which waves and groups, and whether it
/// would start now.
pub fn plan_block(p: &RolloutPlan) -> String {
    let mut lines = vec![format!("plan: {} -> {}", p.service, p.version)];
    lines.push(format!(
        "targets ({}): {}",
        p.targets.len(),
        if p.targets.is_empty() {
            "none".to_string()
        } else {
            p.targets.join(", ")
        }
    ));
    lines.push(format!(
        "max unavailable {}, max failures {}",
        p.max_unavailable, p.max_failures
    ));
    if !p.group_by.is_empty() {
        lines.push(format!("groups (by {}):", p.group_by));
        let mut groups: Vec<&GroupBudget> = p.groups.iter().collect();
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        let rows: Vec<Vec<String>> = groups
            .iter()
            .map(|g| {
                vec![
                    or_dash(&g.group),
                    g.hosts.to_string(),
                    g.max_unavailable.to_string(),
                    g.unavailable.to_string(),
                ]
            })
            .collect();
        lines.extend(
            table(
                &["GROUP", "HOSTS", "MAX UNAVAILABLE", "UNAVAILABLE NOW"],
                &rows,
            )
            .into_iter()
            .map(|l| format!("{HOST_INDENT}{l}")),
        );
    }
    if !p.waves.is_empty() {
        lines.push("waves:".to_string());
        // Numbered from 1 like `rollout status`'s "wave W/N"; the host list goes last so a
        // long one does not push the other columns apart.
        let rows: Vec<Vec<String>> = p
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| {
                vec![
                    (i + 1).to_string(),
                    or_dash(&w.name),
                    w.hosts.len().to_string(),
                    or_dash(&w.gate_after),
                    or_dash(&w.hosts.join(", ")),
                ]
            })
            .collect();
        lines.extend(
            table(&["#", "WAVE", "COUNT", "GATE AFTER", "HOSTS"], &rows)
                .into_iter()
                .map(|l| format!("{HOST_INDENT}{l}")),
        );
    }
    if !p.unavailable_now.is_empty() {
        lines.push(format!("unavailable now ({}):", p.unavailable_now.len()));
        lines.extend(
            p.unavailable_now
                .iter()
                .map(|u| format!("{HOST_INDENT}{u}")),
        );
    }
    if p.blocked_by.is_empty() {
        lines.push("would start now".to_string());
    } else {
        lines.push(format!("blocked: {}", p.blocked_by));
    }
    lines.join("\n")
}

/// The `rollgate history SERVICE` table, newest first.
pub fn history_table(service: &str, entries: &[HistoryEntry], now_ms: i64) -> Vec<String> {
    if entries.is_empty() {
        return vec![format!(
            "no releases recorded for service {service} yet: they are recorded as rollouts finish"
        )];
    }
    let mut entries: Vec<&HistoryEntry> = entries.iter().collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.at_ms));
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                or_dash(&e.version),
                or_dash(&short_sha(&e.sha256)),
                human_size(e.size),
                or_dash(&e.rollout_id),
                ago(now_ms, e.at_ms),
            ]
        })
        .collect();
    table(&["VERSION", "SHA256", "SIZE", "ROLLOUT", "WHEN"], &rows)
}

/// What `artifact push` prints.
pub fn pushed(sha256: &str, size: u64) -> String {
    format!("sha256:{sha256} {size} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollgate_proto::pb::WavePlan;
    use std::collections::HashMap;

    #[test]
    fn relative_times() {
        let now = 1_000_000_000_000;
        let table = [
            (now, "0s ago"),
            (now - 3_000, "3s ago"),
            (now - 59_999, "59s ago"),
            (now - 60_000, "1m ago"),
            (now - 3_599_000, "59m ago"),
            (now - 3_600_000, "1h ago"),
            (now - 47 * 3_600_000, "47h ago"),
            (now - 72 * 3_600_000, "3d ago"),
            (now + 5_000, "0s ago"),
            (0, "never"),
        ];
        for (then, want) in table {
            assert_eq!(ago(now, then), want, "{then}");
        }
    }

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["a".to_string(), "long value".to_string(), "".to_string()],
            vec!["bbbb".to_string(), "x".to_string(), "z".to_string()],
        ];
        assert_eq!(
            table(&["H1", "H2", "H3"], &rows),
            vec![
                "H1    H2          H3",
                "a     long value",
                "bbbb  x           z"
            ]
        );
    }

    fn host(id: &str, state: &str, step: &str, message: &str) -> HostProgress {
        HostProgress {
            host_id: id.into(),
            state: state.into(),
            step: step.into(),
            message: message.into(),
            connected: true,
            running_version: "1.0.0".into(),
            health: pb::Health::Healthy as i32,
            ..Default::default()
        }
    }

    fn status() -> RolloutStatus {
        RolloutStatus {
            id: "r-7".into(),
            service: "demo".into(),
            version: "2.0.0".into(),
            phase: "rolling".into(),
            max_unavailable: 1,
            unavailable: 1,
            total: 3,
            done: 1,
            ..Default::default()
        }
    }

    #[test]
    fn status_blocks() {
        let mut failed = host("h3", "failed", "", "");
        failed.reason = "health check failed: 500".into();
        failed.connected = false;
        failed.health = pb::Health::Unhealthy as i32;
        let mut updating = host("h2", "updating", "verifying", "2/5 probes");
        updating.holds_slot = true;
        let mut done = host("h1", "done", "", "");
        done.running_version = "2.0.0".into();

        let table: Vec<(RolloutStatus, &str)> = vec![
            (
                RolloutStatus {
                    blocked_by: "budget full: h2 holds the only slot".into(),
                    hosts: vec![failed, updating, done],
                    ..status()
                },
                "\
rollout r-7: demo -> 2.0.0  rolling  done 1/3  failed 0 (max 0)  unavailable 1/1
waiting: budget full: h2 holds the only slot
  HOST  STATE            VERSION  HEALTH     CONNECTED  PROGRESS
  h1    done             2.0.0    healthy    yes        -
  h2    updating [slot]  1.0.0    healthy    yes        verifying: 2/5 probes
  h3    failed           1.0.0    unhealthy  no         -
  h3: health check failed: 500",
            ),
            (
                RolloutStatus {
                    phase: "aborted".into(),
                    reason: "aborted by operator".into(),
                    ..status()
                },
                "\
rollout r-7: demo -> 2.0.0  aborted  done 1/3  failed 0 (max 0)  unavailable 1/1
reason: aborted by operator
  (no target hosts)",
            ),
            (
                RolloutStatus {
                    hosts: vec![host("h1", "pending", "", "queued")],
                    ..status()
                },
                "\
rollout r-7: demo -> 2.0.0  rolling  done 1/3  failed 0 (max 0)  unavailable 1/1
  HOST  STATE    VERSION  HEALTH   CONNECTED  PROGRESS
  h1    pending  1.0.0    healthy  yes        queued",
            ),
        ];
        for (s, want) in table {
            assert_eq!(status_block(&s), want);
        }
    }

    #[test]
    fn status_blocks_with_waves_groups_and_rollbacks() {
        let placed = |id: &str, state: &str, group: &str, wave: u32| HostProgress {
            group: group.into(),
            wave,
            ..host(id, state, "", "")
        };
        let mut lost = placed("h4", "lost", "b", 1);
        lost.holds_slot = true;
        lost.connected = false;
        lost.health = pb::Health::Unknown as i32;
        let mut staged = placed("h3", "pending", "b", 2);
        staged.staged = true;
        let mut failed = placed("h2", "failed", "a", 1);
        failed.reason = "exited with status 1".into();
        let fleet = vec![lost, staged, failed, placed("h1", "done", "a", 0)];

        let table: Vec<(RolloutStatus, &str)> = vec![
            (
                // Canary done, waiting at a manual gate, grouped by site, staged.
                RolloutStatus {
                    waves: 3,
                    wave: 0,
                    gate: "manual promote".into(),
                    group_by: "site".into(),
                    groups: vec![
                        GroupBudget {
                            group: "b".into(),
                            hosts: 2,
                            max_unavailable: 1,
                            unavailable: 1,
                        },
                        GroupBudget {
                            group: "a".into(),
                            hosts: 2,
                            max_unavailable: 1,
                            unavailable: 0,
                        },
                    ],
                    staged: 2,
                    total: 4,
                    hosts: fleet.clone(),
                    ..status()
                },
                "\
rollout r-7: demo -> 2.0.0  rolling  wave 1/3  done 1/4  failed 0 (max 0)  unavailable 1/1  staged 2/4
gate: manual promote (`rollgate rollout promote r-7` opens it)
groups (by site): a 0/1, b 1/1
  HOST  GROUP  WAVE  STATE             VERSION  HEALTH   CONNECTED  PROGRESS
  h1    a      1     done              1.0.0    healthy  yes        -
  h2    a      2     failed            1.0.0    healthy  yes        -
  h4    b      2     LOST [slot]       1.0.0    unknown  no         -
  h3    b      3     pending [staged]  1.0.0    healthy  yes        -
  h2: exited with status 1
  h4: LOST: no word from the host; it counts as unavailable until it reports healthy. If it is gone for good: `rollgate host fence h4`",
            ),
            (
                // Being rolled back; a bake gate needs no command. No group_by: no GROUP column.
                RolloutStatus {
                    phase: "rolling_back".into(),
                    waves: 2,
                    wave: 5,
                    gate: "bake until 12:00:00".into(),
                    rolled_back_by: "r-8".into(),
                    reason: "1 host failed (max 0)".into(),
                    hosts: vec![placed("h1", "done", "", 1)],
                    ..status()
                },
                "\
rollout r-7: demo -> 2.0.0  rolling_back  wave 2/2  done 1/3  failed 0 (max 0)  unavailable 1/1
rolled back by rollout r-8
gate: bake until 12:00:00
reason: 1 host failed (max 0)
  HOST  WAVE  STATE  VERSION  HEALTH   CONNECTED  PROGRESS
  h1    2     done   1.0.0    healthy  yes        -",
            ),
            (
                // The rollback rollout itself: one wave, no extra columns; a lost host with a
                // reason keeps it. Groups set but not reported yet.
                RolloutStatus {
                    id: "r-8".into(),
                    version: "1.0.0".into(),
                    phase: "rolled_back".into(),
                    rollback_of: "r-7".into(),
                    waves: 1,
                    group_by: "site".into(),
                    hosts: vec![HostProgress {
                        reason: "no heartbeat for 30s".into(),
                        ..placed("h9", "lost", "a", 0)
                    }],
                    ..status()
                },
                "\
rollout r-8: demo -> 1.0.0  rolled_back  done 1/3  failed 0 (max 0)  unavailable 1/1
rollback of rollout r-7
groups (by site): -
  HOST  GROUP  STATE  VERSION  HEALTH   CONNECTED  PROGRESS
  h9    a      LOST   1.0.0    healthy  yes        -
  h9: LOST: no heartbeat for 30s; it counts as unavailable until it reports healthy. If it is gone for good: `rollgate host fence h9`",
            ),
        ];
        for (s, want) in table {
            assert_eq!(status_block(&s), want);
        }
    }

    #[test]
    fn plans() {
        let plan = RolloutPlan {
            service: "demo".into(),
            version: "2.0.0".into(),
            targets: vec!["h1".into(), "h2".into(), "h3".into(), "h4".into()],
            max_unavailable: 2,
            max_failures: 1,
            waves: vec![
                WavePlan {
                    name: "canary".into(),
                    hosts: vec!["h1".into()],
                    gate_after: "manual promote".into(),
                },
                WavePlan {
                    name: "wave 1".into(),
                    hosts: vec!["h2".into(), "h3".into()],
                    gate_after: "pause 30s".into(),
                },
                WavePlan {
                    name: "wave 2".into(),
                    hosts: vec!["h4".into()],
                    gate_after: "".into(),
                },
            ],
            group_by: "site".into(),
            groups: vec![
                GroupBudget {
                    group: "b".into(),
                    hosts: 2,
                    max_unavailable: 1,
                    unavailable: 1,
                },
                GroupBudget {
                    group: "a".into(),
                    hosts: 2,
                    max_unavailable: 1,
                    unavailable: 0,
                },
            ],
            unavailable_now: vec!["h4: offline since 3m".into()],
            blocked_by: "".into(),
        };
        let table = [
            (
                plan.clone(),
                "\
plan: demo -> 2.0.0
targets (4): h1, h2, h3, h4
max unavailable 2, max failures 1
groups (by site):
  GROUP  HOSTS  MAX UNAVAILABLE  UNAVAILABLE NOW
  a      2      1                0
  b      2      1                1
waves:
  #  WAVE    COUNT  GATE AFTER      HOSTS
  1  canary  1      manual promote  h1
  2  wave 1  2      pause 30s       h2, h3
  3  wave 2  1      -               h4
unavailable now (1):
  h4: offline since 3m
would start now",
            ),
            (
                RolloutPlan {
                    targets: vec![],
                    waves: vec![],
                    group_by: "".into(),
                    groups: vec![],
                    unavailable_now: vec![],
                    blocked_by: "service demo already has an active rollout r-3".into(),
                    ..plan
                },
                "\
plan: demo -> 2.0.0
targets (0): none
max unavailable 2, max failures 1
blocked: service demo already has an active rollout r-3",
            ),
        ];
        for (p, want) in table {
            assert_eq!(plan_block(&p), want);
        }
    }

    #[test]
    fn history_listing() {
        let entry = |version: &str, size, rollout: &str, at_ms| HistoryEntry {
            version: version.into(),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
            size,
            source: "store:".into(),
            rollout_id: rollout.into(),
            at_ms,
        };
        let now = 10 * 3_600_000;
        assert_eq!(
            history_table(
                "demo",
                &[
                    entry("1.0.0", 512, "", now - 7_200_000),
                    entry("2.0.0", 3 * 1024 * 1024 / 2, "r-7", now - 60_000),
                    entry("1.5.0", 20 * 1024 * 1024, "r-5", now - 3_600_000),
                ],
                now,
            ),
            vec![
                "VERSION  SHA256        SIZE      ROLLOUT  WHEN",
                "2.0.0    ba7816bf8f01  1.5 MiB   r-7      1m ago",
                "1.5.0    ba7816bf8f01  20.0 MiB  r-5      1h ago",
                "1.0.0    ba7816bf8f01  512 B     -        2h ago",
            ]
        );
        assert_eq!(
            history_table("demo", &[], now),
            vec!["no releases recorded for service demo yet: they are recorded as rollouts finish"]
        );
    }

    #[test]
    fn sizes() {
        let table = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (5 * 1024 * 1024 * 1024, "5.0 GiB"),
            (u64::MAX, "16777216.0 TiB"),
        ];
        for (bytes, want) in table {
            assert_eq!(human_size(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn hosts_listing() {
        let hosts = vec![
            HostInfo {
                host_id: "web-2".into(),
                labels: HashMap::from([
                    ("site".to_string(), "b".to_string()),
                    ("arch".to_string(), "arm64".to_string()),
                ]),
                connected: false,
                services: vec![pb::ServiceStatus {
                    service: "demo".into(),
                    version: "".into(),
                    health: pb::Health::Stopped as i32,
                    ..Default::default()
                }],
                last_seen_ms: 10_000,
                ..Default::default()
            },
            HostInfo {
                host_id: "web-1".into(),
                connected: true,
                services: vec![
                    pb::ServiceStatus {
                        service: "zeta".into(),
                        version: "1".into(),
                        health: pb::Health::Healthy as i32,
                        ..Default::default()
                    },
                    pb::ServiceStatus {
                        service: "demo".into(),
                        version: "2.0.0".into(),
                        health: 99,
                        ..Default::default()
                    },
                ],
                last_seen_ms: 73_000,
                ..Default::default()
            },
        ];
        assert_eq!(
            hosts_table(&hosts, 76_000),
            vec![
                "HOST   CONNECTED  LABELS             SERVICES                            LAST SEEN",
                "web-1  yes        -                  demo 2.0.0 unknown, zeta 1 healthy  now",
                "web-2  no         arch=arm64,site=b  demo - stopped                      1m ago",
            ]
        );
    }

    #[test]
    fn one_liners() {
        let s = RolloutStatus {
            phase: "paused".into(),
            ..status()
        };
        assert_eq!(
            started(&s),
            "started rollout r-7: demo -> 2.0.0 on 3 hosts (max unavailable 1)\nr-7"
        );
        assert_eq!(phase_changed(&s), "rollout r-7 is now paused");
        let promoted = RolloutStatus {
            phase: "rolling".into(),
            waves: 3,
            wave: 1,
            ..status()
        };
        assert_eq!(
            phase_changed(&promoted),
            "rollout r-7 is now rolling, wave 2/3"
        );
        let gated = RolloutStatus {
            gate: "manual promote".into(),
            reason: "wave 2 done".into(),
            ..promoted
        };
        assert_eq!(
            phase_changed(&gated),
            "rollout r-7 is now rolling, wave 2/3 (wave 2 done)\n\
             gate: manual promote (`rollgate rollout promote r-7` opens it)"
        );
        let rollback = RolloutStatus {
            id: "r-8".into(),
            version: "1.0.0".into(),
            rollback_of: "r-7".into(),
            ..status()
        };
        assert_eq!(
            rollback_started(&rollback, ""),
            "rolling back r-7: started rollback rollout r-8 to 1.0.0 on 3 hosts"
        );
        assert_eq!(
            rollback_started(
                &RolloutStatus {
                    rollback_of: "".into(),
                    ..rollback
                },
                "r-6"
            ),
            "rolling back r-6: started rollback rollout r-8 to 1.0.0 on 3 hosts"
        );
        assert_eq!(
            following_rollback("r-7", "r-8"),
            "rollout r-7 is being rolled back by r-8; following it"
        );
        assert_eq!(pushed("ab", 12), "sha256:ab 12 bytes");
        let list = rollouts_table(
            &[
                RolloutStatus {
                    id: "r-8".into(),
                    created_at_ms: 2_000,
                    ..status()
                },
                RolloutStatus {
                    created_at_ms: 1_000,
                    ..s
                },
            ],
            62_000,
        );
        assert_eq!(
            list,
            vec![
                "ID   SERVICE  VERSION  PHASE    DONE  FAILED  CREATED",
                "r-7  demo     2.0.0    paused   1/3   0       1m ago",
                "r-8  demo     2.0.0    rolling  1/3   0       1m ago",
            ]
        );
    }
}
