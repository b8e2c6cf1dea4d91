//! Text output for people: tables, rollout status blocks and relative times. Pure functions
//! of the wire messages (and of "now", passed in), so they are tested on tables.

use rollgate_proto::pb::{self, HostInfo, HostProgress, RolloutStatus};

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

/// The header line of a status: id, service → version, phase and counters.
pub fn status_header(s: &RolloutStatus) -> String {
    format!(
        "rollout {}: {} -> {}  {}  done {}/{}  failed {} (max {})  unavailable {}/{}",
        s.id,
        s.service,
        s.version,
        s.phase,
        s.done,
        s.total,
        s.failed,
        s.max_failures,
        s.unavailable,
        s.max_unavailable
    )
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

/// A rollout's status for people: header, what it waits for, why it ended, one row per host.
pub fn status_block(s: &RolloutStatus) -> String {
    let mut lines = vec![status_header(s)];
    if !s.blocked_by.is_empty() {
        lines.push(format!("waiting: {}", s.blocked_by));
    }
    if !s.reason.is_empty() {
        lines.push(format!("reason: {}", s.reason));
    }
    if s.hosts.is_empty() {
        lines.push(format!("{HOST_INDENT}(no target hosts)"));
    } else {
        let mut hosts: Vec<&HostProgress> = s.hosts.iter().collect();
        hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        let rows: Vec<Vec<String>> = hosts
            .iter()
            .map(|h| {
                let state = if h.holds_slot {
                    format!("{} [slot]", h.state)
                } else {
                    h.state.clone()
                };
                vec![
                    h.host_id.clone(),
                    or_dash(&state),
                    or_dash(&h.running_version),
                    health_word(h.health).to_string(),
                    yes_no(h.connected).to_string(),
                    step_message(h),
                ]
            })
            .collect();
        let header = [
            "HOST",
            "STATE",
            "VERSION",
            "HEALTH",
            "CONNECTED",
            "PROGRESS",
        ];
        lines.extend(
            table(&header, &rows)
                .into_iter()
                .map(|l| format!("{HOST_INDENT}{l}")),
        );
        // Reasons (why a host failed or rolled back) are whole sentences; they go under the
        // table, one per host, unshortened. A done host's "healthy for 2s" is no news.
        for h in hosts
            .iter()
            .filter(|h| !h.reason.is_empty() && h.state != "done")
        {
            lines.push(format!("{HOST_INDENT}{}: {}", h.host_id, h.reason));
        }
    }
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

/// What `rollout pause|resume|abort` prints.
pub fn phase_changed(s: &RolloutStatus) -> String {
    let mut line = format!("rollout {} is now {}", s.id, s.phase);
    if !s.reason.is_empty() {
        line.push_str(&format!(" ({})", s.reason));
    }
    line
}

/// What `artifact push` prints.
pub fn pushed(sha256: &str, size: u64) -> String {
    format!("sha256:{sha256} {size} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
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
