//! Text output for people: tables, rollout status blocks and relative times. Pure functions
//! of the wire messages (and of "now", passed in), so they are tested on tables.
//!
//! Hosts choose much of the text shown here (labels, versions, progress messages, reasons), so
//! every table cell and every line goes through [`printable`] before it is returned: no
//! function here returns a control character except the line breaks it puts in itself (S9).

use rollgate_proto::pb::{
    GateKind, GroupBudget, HistoryEntry, HostInfo, HostProgress, HostState, RolloutPlan,
    RolloutStatus,
};
use rollgate_proto::text::printable;

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

/// `line` as shown: control characters in it escaped.
fn shown(line: &str) -> String {
    printable(line).into_owned()
}

/// `lines` as shown, one per line.
fn shown_lines(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| shown(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lays out `rows` under `header` in left-aligned columns, control characters in cells
/// escaped. Trailing spaces are trimmed.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| shown(c)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
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
    let mut text = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    if host.pinned {
        text.push_str(" (pinned)");
    }
    if !host.overridden.is_empty() {
        text.push_str(&format!("; agent claims {}", host.overridden));
    }
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
                s.health().word()
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
        s.id,
        s.service,
        s.version,
        s.phase().word()
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
    shown(&line)
}

/// "gate: ..." for a rollout waiting at a gate, with the command that opens a manual one.
pub(crate) fn gate_line(s: &RolloutStatus) -> Option<String> {
    if s.gate.is_empty() {
        return None;
    }
    if s.gate_kind() == GateKind::ManualPromote {
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
pub(crate) fn step_message(h: &HostProgress) -> String {
    let step = h.step().word();
    let text = match (step.is_empty(), h.message.is_empty()) {
        (false, false) if h.message.starts_with(step) => h.message.clone(),
        (false, false) => format!("{step}: {}", h.message),
        (false, true) => step.to_string(),
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
    let state = h.state();
    let mut cell = if state == HostState::Lost {
        state.word().to_uppercase()
    } else {
        or_dash(state.word())
    };
    if h.holds_slot {
        cell.push_str(" [slot]");
    }
    if h.staged && state == HostState::Pending {
        cell.push_str(" [staged]");
    }
    cell
}

/// The line under the host table for a host that needs a word: why it failed or rolled back,
/// or that it is lost and how to let the rollout go on without it.
pub(crate) fn host_note(h: &HostProgress) -> Option<String> {
    if h.state() == HostState::Lost {
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
    if h.state() == HostState::Interrupted {
        return Some(format!(
            "{}: interrupted by an agent restart, not a failure of the release: {}; it will be \
             granted again (it fails after {} interrupted attempts)",
            h.host_id,
            h.reason,
            rollgate_proto::status::MAX_INTERRUPTIONS
        ));
    }
    // A done host's "healthy for 2s" is no news.
    (!h.reason.is_empty() && h.state() != HostState::Done)
        .then(|| format!("{}: {}", h.host_id, h.reason))
}

/// A rollout's status for people: header, how it relates to other rollouts, its gate and
/// groups, what it waits for, why it ended, one row per host.
pub fn status_block(s: &RolloutStatus) -> String {
    let mut lines = vec![status_header(s)];
    if !s.image.is_empty() {
        lines.push(format!("image {}", s.image));
    }
    if !s.created_by.is_empty() {
        lines.push(format!("started by {}", s.created_by));
    }
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
        return shown_lines(&lines);
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
                h.health().word().to_string(),
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
    shown_lines(&lines)
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
                r.phase().word().to_string(),
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
    shown_lines(&[
        format!(
            "started rollout {}: {} -> {} on {} hosts (max unavailable {})",
            s.id, s.service, s.version, s.total, s.max_unavailable
        ),
        s.id.clone(),
    ])
}

/// What `rollout pause|resume|abort|promote` prints: the new phase (and wave), why, and the
/// gate it now waits at, if any.
pub fn phase_changed(s: &RolloutStatus) -> String {
    let mut line = format!("rollout {} is now {}", s.id, s.phase().word());
    if let Some(wave) = wave_of(s.wave, s.waves) {
        line.push_str(&format!(", wave {wave}"));
    }
    if !s.reason.is_empty() {
        line.push_str(&format!(" ({})", s.reason));
    }
    let lines: Vec<String> = std::iter::once(line).chain(gate_line(s)).collect();
    shown_lines(&lines)
}

/// What `rollout rollback` prints, given the status of the new rollback rollout and the id
/// the operator named.
pub fn rollback_started(s: &RolloutStatus, original: &str) -> String {
    let original = if s.rollback_of.is_empty() {
        original
    } else {
        s.rollback_of.as_str()
    };
    shown(&format!(
        "rolling back {original}: started rollback rollout {} to {} on {} hosts",
        s.id, s.version, s.total
    ))
}

/// What a watch prints when the followed rollout is handed over to its rollback.
pub fn following_rollback(id: &str, rollback_id: &str) -> String {
    shown(&format!(
        "rollout {id} is being rolled back by {rollback_id}; following it"
    ))
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
    shown_lines(&lines)
}

/// The `rollgate history SERVICE` table, newest first.
pub fn history_table(service: &str, entries: &[HistoryEntry], now_ms: i64) -> Vec<String> {
    if entries.is_empty() {
        return vec![shown(&format!(
            "no releases recorded for service {service} yet: they are recorded as rollouts finish"
        ))];
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
    shown(&format!("sha256:{sha256} {size} bytes"))
}

#[cfg(test)]
mod tests;
