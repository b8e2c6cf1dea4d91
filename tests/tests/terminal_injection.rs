//! Issue 10, item 7 (S9): text a host chooses must not reach an operator's terminal as control
//! characters. A compromised host (a real fleet certificate, a hand-written session; the real
//! agent refuses such labels in its config) says hello with ANSI escapes, a carriage return and
//! a bidi override in its labels and its service's version; `rollgate hosts` must show them
//! escaped (`\u{1b}`), and `--output json` must carry them JSON-escaped with the same value.

use std::collections::HashMap;
use std::time::Duration;

use rollgate_proto::pb;
use rollgate_proto::pb::agent_message::Msg;
use rollgate_proto::pb::agent_service_client::AgentServiceClient;
use rollgate_proto::pb::coordinator_message::Msg as CMsg;
use rollgate_tests::{Fleet, FleetOpts};
use tonic::transport::Endpoint;

/// Clears the screen and paints a fake healthy row in green.
const EVIL_LABEL: &str = "\x1b[2J\x1b[H\x1b[32mhost-1  yes  site=a  web 9.9.9 healthy";
/// Moves to the start of the line and overwrites it.
const EVIL_VERSION: &str = "6.6.6\r\x1b[2Kweb 1.0.0 healthy";
/// A right-to-left override, then a backspace.
const EVIL_KEY: &str = "zone\u{202e}\x08";
/// What a terminal would act on; none may appear raw in the output.
const RAW: [char; 5] = ['\x1b', '\r', '\x08', '\u{202e}', '\u{9b}'];
/// How long to wait for the coordinator's answer to the hello.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Opens a session as `host-evil` (its own certificate) and says hello with hostile text.
/// Returns what the coordinator answered (welcome or refusal reason) and the open sender, so
/// the session stays up while the test looks.
fn hostile_hello(
    fleet: &Fleet,
) -> anyhow::Result<(String, tokio::sync::mpsc::Sender<pb::AgentMessage>)> {
    let files = fleet.pki.host("host-evil")?;
    let ep = Endpoint::from_shared(fleet.coordinator().url())?
        .tls_config(files.client_config()?)?
        .connect_timeout(Duration::from_secs(3));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.try_send(pb::AgentMessage {
        msg: Some(Msg::Hello(pb::Hello {
            host_id: "host-evil".into(),
            agent_version: "\x1b]0;pwned\x07".into(),
            labels: HashMap::from([
                ("site".to_string(), EVIL_LABEL.to_string()),
                (EVIL_KEY.to_string(), "\u{9b}31m".to_string()),
            ]),
            services: vec![pb::ServiceStatus {
                service: "web".into(),
                version: EVIL_VERSION.into(),
                health: pb::Health::Healthy as i32,
                detail: "\x1b[31mdetail".into(),
                ..Default::default()
            }],
            ..Default::default()
        })),
    })?;
    let answer = fleet.block_on(async {
        let mut client = AgentServiceClient::new(ep.connect().await?);
        let mut inbound = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let first = tokio::time::timeout(ANSWER_WITHIN, inbound.message()).await??;
        anyhow::Ok(match first.and_then(|m| m.msg) {
            Some(CMsg::Welcome(_)) => "welcome".to_string(),
            Some(CMsg::Refusal(r)) => format!("refused: {}", r.reason),
            other => format!("unexpected {other:?}"),
        })
    })?;
    Ok((answer, tx))
}

#[test]
fn host_text_reaches_the_operator_escaped() -> anyhow::Result<()> {
    let fleet = Fleet::start(FleetOpts {
        agents: 1,
        sites: 1,
        ..Default::default()
    })?;
    let (answer, _session) = hostile_hello(&fleet)?;
    println!("the coordinator answered the hostile hello with: {answer}");
    assert_eq!(answer, "welcome", "the hello was not taken: {answer}");

    let text = fleet.cli_ok(&["hosts"])?;
    println!("rollgate hosts:\n{text}");
    let raw: Vec<char> = RAW.into_iter().filter(|c| text.contains(*c)).collect();
    assert!(raw.is_empty(), "raw {raw:?} on the operator's terminal");
    for shown in [
        "site=\\u{1b}[2J\\u{1b}[H\\u{1b}[32mhost-1",
        "web 6.6.6\\u{d}\\u{1b}[2Kweb 1.0.0 healthy",
        "zone\\u{202e}\\u{8}=\\u{9b}31m",
    ] {
        assert!(text.contains(shown), "{shown:?} not in\n{text}");
    }
    // Each host stays on its own line: the escapes faked no row.
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{text}");

    let json = fleet.cli_ok(&["--output", "json", "hosts"])?;
    let raw: Vec<char> = RAW.into_iter().filter(|c| json.contains(*c)).collect();
    assert!(raw.is_empty(), "raw {raw:?} in the JSON output");
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let evil = v["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["host_id"] == "host-evil"))
        .ok_or_else(|| anyhow::anyhow!("host-evil not in {json}"))?;
    // JSON keeps the value itself, escaped as JSON.
    assert_eq!(evil["labels"]["site"], EVIL_LABEL, "{json}");
    assert_eq!(evil["labels"][EVIL_KEY], "\u{9b}31m", "{json}");
    Ok(())
}
