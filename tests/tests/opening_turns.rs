//! A reconnect storm is admitted in turns (`coordinator/src/sessions/opening.rs`): a session
//! that gets no turn at opening within the wait is refused with the busy reason, and the agent
//! retries until it gets one. Driven through real sessions: a coordinator with one turn
//! (`[agents.opening] turns = 1`) and the test-only pause point `session-opening` (cargo
//! feature `fault-injection`) holding host-1's session in its turn, so host-2's session finds
//! none; then the pause is let go and both hosts end up in session.
//!
//! Without the turns, host-2's session would open at once beside the paused one: no refusal,
//! and the test fails on its first wait.

use std::time::Duration;

use rollgate_tests::{wait_for, Fleet, FleetOpts};

const POINT: &str = "session-opening";
/// What the agent logs for a refusal for want of a turn (the coordinator's `Busy` text).
const BUSY: &str = "busy opening other agents' sessions";

#[test]
fn a_session_without_a_turn_is_refused_as_busy_and_the_agent_retries() -> anyhow::Result<()> {
    let pause = tempfile::tempdir()?;
    let wrap = format!(
        "ROLLGATE_TEST_PAUSE_DIR={} ROLLGATE_TEST_PAUSE_POINTS={POINT}",
        pause.path().display()
    );
    let mut opts = FleetOpts {
        agents: 0,
        coordinator_extra: Some("[agents.opening]\nturns = 1\nwait = \"300ms\"".into()),
        ..FleetOpts::default()
    };
    opts.coordinator_wrap = std::iter::once("env".to_string())
        .chain(wrap.split(' ').map(str::to_string))
        .collect();
    let mut fleet = Fleet::start(opts)?;

    fleet.add_agent(0)?;
    let paused = wait_for(
        "host-1's session to pause in its opening turn",
        Duration::from_secs(30),
        || Ok(std::fs::read_to_string(pause.path().join(format!("{POINT}.paused"))).ok()),
    )?;
    println!("paused: {paused}");
    assert!(
        paused.contains("host-1"),
        "paused another session: {paused}"
    );

    fleet.add_agent(1)?;
    let log = fleet.agents[1].proc.log.clone();
    // Refused, and refused again: the refusal did not end the agent, it came back for a turn.
    // (Counted by the coordinator: the agent logs a repeated failure once.)
    let metrics = fleet
        .coordinator()
        .metrics
        .expect("the coordinator serves metrics");
    let refused = wait_for(
        "host-2 to be refused as busy twice",
        Duration::from_secs(30),
        || {
            let (_, body) = rollgate_tests::http_get(&metrics.to_string(), "/metrics")?;
            let busy = body
                .lines()
                .find(|l| l.starts_with("rollgate_agent_sessions_busy_total"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(0.0);
            Ok((busy >= 2.0).then_some(busy))
        },
    )?;
    println!("host-2 refused {refused} times while host-1 held the only turn");
    assert!(
        std::fs::read_to_string(&log)?.contains(BUSY),
        "host-2's log does not say why it was refused"
    );
    let coordinator = std::fs::read_to_string(fleet.coordinator().log())?;
    assert!(
        coordinator.contains("refused an agent session: this coordinator is busy"),
        "the coordinator did not say it refused host-2 for want of a turn"
    );

    std::fs::write(pause.path().join(format!("{POINT}.go")), "")?;
    fleet.wait_connected(2)?;
    let text = std::fs::read_to_string(&log)?;
    let last_refusal = text.rfind(BUSY).expect("seen above");
    let connected = text
        .rfind("connected to coordinator")
        .expect("host-2 is connected");
    assert!(
        connected > last_refusal,
        "host-2's session after its last refusal is not in its log:\n{text}"
    );
    Ok(())
}
