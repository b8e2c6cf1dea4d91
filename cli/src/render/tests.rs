//! Table tests of the text output.

use super::*;
use rollgate_proto::pb::{self, HostState, Phase, Step, WavePlan};
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

fn host(id: &str, state: HostState, step: Step, message: &str) -> HostProgress {
    HostProgress {
        host_id: id.into(),
        state: state as i32,
        step: step as i32,
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
        phase: Phase::Rolling as i32,
        max_unavailable: 1,
        unavailable: 1,
        total: 3,
        done: 1,
        ..Default::default()
    }
}

#[test]
fn status_blocks() {
    let mut failed = host("h3", HostState::Failed, Step::Unspecified, "");
    failed.reason = "health check failed: 500".into();
    failed.connected = false;
    failed.health = pb::Health::Unhealthy as i32;
    let mut updating = host("h2", HostState::Updating, Step::Verifying, "2/5 probes");
    updating.holds_slot = true;
    let mut done = host("h1", HostState::Done, Step::Unspecified, "");
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
                phase: Phase::Aborted as i32,
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
                hosts: vec![host("h1", HostState::Pending, Step::Unspecified, "queued")],
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
    let placed = |id: &str, state: HostState, group: &str, wave: u32| HostProgress {
        group: group.into(),
        wave,
        ..host(id, state, Step::Unspecified, "")
    };
    let mut lost = placed("h4", HostState::Lost, "b", 1);
    lost.holds_slot = true;
    lost.connected = false;
    lost.health = pb::Health::Unknown as i32;
    let mut staged = placed("h3", HostState::Pending, "b", 2);
    staged.staged = true;
    let mut failed = placed("h2", HostState::Failed, "a", 1);
    failed.reason = "exited with status 1".into();
    let fleet = vec![lost, staged, failed, placed("h1", HostState::Done, "a", 0)];

    let table: Vec<(RolloutStatus, &str)> = vec![
        (
            // Canary done, waiting at a manual gate, grouped by site, staged.
            RolloutStatus {
                waves: 3,
                wave: 0,
                gate: "manual promote".into(),
                gate_kind: rollgate_proto::pb::GateKind::ManualPromote as i32,
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
                phase: Phase::RollingBack as i32,
                waves: 2,
                wave: 5,
                gate: "bake until 12:00:00".into(),
                gate_kind: rollgate_proto::pb::GateKind::Bake as i32,
                rolled_back_by: "r-8".into(),
                reason: "1 host failed (max 0)".into(),
                hosts: vec![placed("h1", HostState::Done, "", 1)],
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
                phase: Phase::RolledBack as i32,
                rollback_of: "r-7".into(),
                waves: 1,
                group_by: "site".into(),
                hosts: vec![HostProgress {
                    reason: "no heartbeat for 30s".into(),
                    ..placed("h9", HostState::Lost, "a", 0)
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
        phase: Phase::Paused as i32,
        ..status()
    };
    assert_eq!(
        started(&s),
        "started rollout r-7: demo -> 2.0.0 on 3 hosts (max unavailable 1)\nr-7"
    );
    assert_eq!(phase_changed(&s), "rollout r-7 is now paused");
    let promoted = RolloutStatus {
        phase: Phase::Rolling as i32,
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
        gate_kind: rollgate_proto::pb::GateKind::ManualPromote as i32,
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

/// Host-chosen text (labels, versions, progress, reasons) never reaches the terminal as
/// control characters: each is shown escaped, and a newline cannot fake a row.
#[test]
fn peer_text_is_shown_escaped() {
    let esc = "\x1b[2J\x1b[31mhacked";
    let info = HostInfo {
        host_id: "web-1".into(),
        labels: HashMap::from([("site".to_string(), esc.to_string())]),
        connected: true,
        services: vec![pb::ServiceStatus {
            service: "demo".into(),
            version: "1.0\rFAKE".into(),
            health: pb::Health::Healthy as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let table = hosts_table(&[info], 0).join("\n");
    assert!(
        table.contains("site=\\u{1b}[2J\\u{1b}[31mhacked"),
        "{table}"
    );
    assert!(table.contains("demo 1.0\\u{d}FAKE healthy"), "{table}");

    let mut h = host(
        "web-1",
        HostState::Failed,
        Step::Verifying,
        "probe \u{202e}ko",
    );
    h.reason = "bad\n  web-9  done  2.0.0  healthy  yes".into();
    let mut s = status();
    s.hosts = vec![h];
    s.reason = "\x08\x08\x08succeeded".into();
    s.version = "2.0\x1b]0;title\x07".into();
    let shown = [
        status_block(&s),
        phase_changed(&s),
        started(&s),
        rollback_started(&s, "r-1"),
    ]
    .join("\n");
    for raw in ['\x1b', '\r', '\x08', '\x07', '\u{202e}'] {
        assert!(!shown.contains(raw), "{raw:?} in\n{shown}");
    }
    assert!(shown.contains("probe \\u{202e}ko"), "{shown}");
    assert!(shown.contains("bad\\u{a}  web-9"), "{shown}");
    assert!(
        shown.contains("reason: \\u{8}\\u{8}\\u{8}succeeded"),
        "{shown}"
    );
    assert!(!shown.lines().any(|l| l.trim_start().starts_with("web-9")));
}

#[test]
fn an_interrupted_host_is_said_to_be_no_failure() {
    let mut h = host("h2", HostState::Interrupted, Step::Unspecified, "");
    h.reason = "agent restarted during the update to 2.0.0; back on 1.0.0, healthy".into();
    assert_eq!(state_cell(&h), "interrupted");
    let note = host_note(&h).expect("a note");
    assert!(
        note.starts_with("h2: interrupted by an agent restart, not a failure of the release"),
        "{note}"
    );
    assert!(note.contains("back on 1.0.0"), "{note}");
    assert!(note.contains("after 3 interrupted attempts"), "{note}");
}
