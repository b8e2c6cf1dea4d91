//! Writes the seeds of the message and config targets (`fuzz/seeds/TARGET/`) from real
//! messages built with the protocol's own types, and the fuzz-only release key pair the
//! `coordinator_message` target pins (`fuzz/keys/`, made once). Run from anywhere:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds

use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;
use rollgate_fuzz::agent_fixture::{self, key_dir, FLEET, HOST, OPEN_SERVICE, SIGNED_SERVICE};
use rollgate_fuzz::wire::encode_all;
use rollgate_proto::pb::{self, agent_message::Msg as Out, coordinator_message::Msg as In};
use rollgate_proto::signing::{Scope, Signed, SigningKey};
use rollgate_proto::version::PROTOCOL_VERSION;

const ROLLOUT: &str = "r-0123456789abcdef";
const EXPIRES_UNIX: i64 = 4_102_444_800;
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let key = signing_key();
    coordinator_messages(&fuzz.join("seeds/coordinator_message"), &key);
    agent_messages(&fuzz.join("seeds/agent_message"));
    control(&fuzz.join("seeds/control"), &fuzz.join("seeds/spec"));
    configs(&fuzz.join("seeds/agent_config"), &fuzz.join("../deploy"));
}

/// The fuzz-only key pair: made once, then kept (the committed public half is pinned).
fn signing_key() -> SigningKey {
    let dir = key_dir();
    let private = dir.join("release.key");
    if !private.exists() {
        fs::create_dir_all(&dir).expect("fuzz/keys");
        let key = SigningKey::generate().expect("a key");
        fs::write(&private, key.to_pem()).expect("release.key");
        fs::write(dir.join("release.pub"), key.public().to_pem()).expect("release.pub");
    }
    SigningKey::load(&private).expect("fuzz/keys/release.key")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("seed dir");
    fs::write(dir.join(name), bytes).expect("seed");
    println!("{}", dir.join(name).display());
}

fn release(version: &str) -> pb::Release {
    pb::Release {
        version: version.into(),
        source: "store:".into(),
        sha256: SHA.into(),
        size: 1234,
        signature: None,
    }
}

fn order(service: &str, token: u64, release: Option<pb::Release>) -> pb::CoordinatorMessage {
    msg_in(In::Update(pb::UpdateOrder {
        rollout_id: ROLLOUT.into(),
        token,
        service: service.into(),
        release,
        min_healthy_time_ms: 1000,
        healthy_deadline_ms: 60_000,
        rollback: false,
    }))
}

fn msg_in(m: In) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage { msg: Some(m) }
}

fn coordinator_messages(dir: &Path, key: &SigningKey) {
    let welcome = msg_in(In::Welcome(pb::Welcome {
        coordinator_id: "c1".into(),
        heartbeat_interval_ms: 1000,
        protocol_version: PROTOCOL_VERSION,
    }));
    let mut signed = release("2.0.0");
    // A fixed expiry (2100-01-01): the same seed every run (ed25519 is deterministic).
    let expires = EXPIRES_UNIX;
    signed.signature = Some(pb::ReleaseSignature {
        expires_unix: expires,
        ..Default::default()
    });
    let scope = Scope::new(FLEET, "");
    signed.signature = Some(key.sign(&Signed::of(&scope, SIGNED_SERVICE, &signed)));
    let stage = msg_in(In::Stage(pb::StageOrder {
        rollout_id: ROLLOUT.into(),
        service: OPEN_SERVICE.into(),
        release: Some(release("2.0.0")),
    }));
    let seeds: [(&str, Vec<pb::CoordinatorMessage>); 7] = [
        (
            "welcome-order",
            vec![
                welcome.clone(),
                order(OPEN_SERVICE, 5, Some(release("2.0.0"))),
            ],
        ),
        (
            "stale-and-repeat",
            vec![
                order(OPEN_SERVICE, 5, Some(release("2.0.0"))),
                order(OPEN_SERVICE, 5, Some(release("2.0.0"))),
                order(OPEN_SERVICE, 3, Some(release("1.0.0"))),
            ],
        ),
        (
            "signed",
            vec![welcome.clone(), order(SIGNED_SERVICE, 9, Some(signed))],
        ),
        (
            "unsigned",
            vec![order(SIGNED_SERVICE, 9, Some(release("2.0.0")))],
        ),
        (
            "no-token-no-release",
            vec![
                order(OPEN_SERVICE, 0, Some(release("2.0.0"))),
                order(OPEN_SERVICE, 4, None),
            ],
        ),
        ("stage", vec![welcome, stage]),
        (
            "refusal",
            vec![msg_in(In::Refusal(pb::Refusal {
                reason: "hello malformed".into(),
            }))],
        ),
    ];
    for (name, msgs) in seeds {
        write(dir, name, &encode_all(&msgs));
    }
}

fn msg_out(m: Out) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(m) }
}

fn status(service: &str, version: &str, at: i64) -> pb::ServiceStatus {
    pb::ServiceStatus {
        service: service.into(),
        version: version.into(),
        sha256: SHA.into(),
        health: pb::Health::Healthy as i32,
        detail: "probes pass".into(),
        observed_at_ms: at,
        ..Default::default()
    }
}

fn agent_messages(dir: &Path) {
    let hello = |host: &str, protocol: u32| {
        msg_out(Out::Hello(pb::Hello {
            host_id: host.into(),
            labels: [("site".to_string(), "fra1".to_string())].into(),
            agent_version: "0.1.0".into(),
            services: vec![status(OPEN_SERVICE, "1.0.0", 100)],
            highest_token: 5,
            recent_results: vec![],
            in_flight: Some(pb::OrderProgress {
                rollout_id: ROLLOUT.into(),
                token: 7,
                service: OPEN_SERVICE.into(),
                step: pb::Step::Fetching as i32,
                message: "fetching".into(),
            }),
            staged: vec![pb::StagedRelease {
                service: OPEN_SERVICE.into(),
                sha256: SHA.into(),
            }],
            protocol_version: protocol,
        }))
    };
    let progress = msg_out(Out::Progress(pb::OrderProgress {
        rollout_id: ROLLOUT.into(),
        token: 7,
        service: OPEN_SERVICE.into(),
        step: pb::Step::Verifying as i32,
        message: "verifying".into(),
    }));
    let result = |outcome: pb::Outcome| {
        msg_out(Out::Result(pb::OrderResult {
            rollout_id: ROLLOUT.into(),
            token: 7,
            service: OPEN_SERVICE.into(),
            outcome: outcome as i32,
            running_version: "2.0.0".into(),
            reason: "healthy for 5s".into(),
            health: pb::Health::Healthy as i32,
            finished_at_ms: 300,
            highest_token: 0,
        }))
    };
    let staged = msg_out(Out::Staged(pb::StageResult {
        rollout_id: ROLLOUT.into(),
        service: OPEN_SERVICE.into(),
        sha256: SHA.into(),
        ok: true,
        reason: String::new(),
    }));
    let seeds: [(&str, Vec<pb::AgentMessage>); 5] = [
        (
            "update",
            vec![
                hello(HOST, PROTOCOL_VERSION),
                msg_out(Out::Heartbeat(pb::Heartbeat { seq: 1 })),
                msg_out(Out::Status(status(OPEN_SERVICE, "2.0.0", 200))),
                progress,
                result(pb::Outcome::Succeeded),
                result(pb::Outcome::Succeeded),
                msg_out(Out::Status(status(OPEN_SERVICE, "0.9.0", 50))),
            ],
        ),
        (
            "interrupted",
            vec![
                hello(HOST, PROTOCOL_VERSION),
                result(pb::Outcome::Interrupted),
                staged,
            ],
        ),
        ("other-host", vec![hello("h2", PROTOCOL_VERSION)]),
        ("old-protocol", vec![hello(HOST, 0)]),
        ("bad-host-id", vec![hello("../etc", PROTOCOL_VERSION)]),
    ];
    for (name, msgs) in seeds {
        write(dir, name, &encode_all(&msgs));
    }
}

/// `kind` (the target's first byte) and the request.
fn request(kind: u8, m: &impl Message) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(m.encode_to_vec());
    out
}

fn control(dir: &Path, spec_seeds: &Path) {
    let mut specs: Vec<PathBuf> = fs::read_dir(spec_seeds)
        .expect("fuzz/seeds/spec")
        .map(|e| e.expect("entry").path())
        .collect();
    specs.sort();
    for p in specs {
        let spec_toml = fs::read_to_string(&p).expect("spec seed");
        let name = format!("create-{}", p.file_stem().expect("name").to_string_lossy());
        write(
            dir,
            &name,
            &request(0, &pb::CreateRolloutRequest { spec_toml }),
        );
    }
    write(
        dir,
        "rollout",
        &request(1, &pb::RolloutRef { id: ROLLOUT.into() }),
    );
    write(
        dir,
        "latest",
        &request(1, &pb::RolloutRef { id: String::new() }),
    );
    write(
        dir,
        "fence",
        &request(
            2,
            &pb::HostRef {
                host_id: HOST.into(),
            },
        ),
    );
    let pin = pb::PinHostRequest {
        host_id: HOST.into(),
        labels: [("site".to_string(), "fra1".to_string())].into(),
        services: vec![OPEN_SERVICE.into()],
        clear: false,
    };
    write(dir, "pin", &request(3, &pin));
    write(
        dir,
        "history",
        &request(
            4,
            &pb::HistoryRequest {
                service: OPEN_SERVICE.into(),
            },
        ),
    );
    let events = pb::EventsRequest {
        rollout_id: ROLLOUT.into(),
        service: OPEN_SERVICE.into(),
        host_id: HOST.into(),
        after_id: 2,
        since_ms: 1,
        follow: true,
    };
    write(dir, "events", &request(5, &events));
    let fetch = pb::FetchArtifactRequest {
        sha256: SHA.into(),
        offset: 10,
    };
    write(dir, "fetch", &request(6, &fetch));
}

fn configs(dir: &Path, deploy: &Path) {
    write(
        dir,
        "fixture.toml",
        agent_fixture::config_text(Path::new("/var/lib/rollgate-agent")).as_bytes(),
    );
    // Regression: a heartbeat no clock can add panicked the agent at its first connect.
    let huge = agent_fixture::config_text(Path::new("/var/lib/rollgate-agent"))
        .replace("[tls]", "heartbeat_interval = \"400000000000years\"\n[tls]");
    write(dir, "regression-huge-heartbeat.toml", huge.as_bytes());
    for name in ["agent.toml", "agent-systemd.toml", "agent-container.toml"] {
        let text = fs::read(deploy.join(name)).expect("deploy example");
        write(dir, name, &text);
    }
}
