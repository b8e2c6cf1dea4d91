//! Test-only pause points (cargo feature `fault-injection`, off in every shipped build).
//!
//! With `ROLLGATE_TEST_PAUSE_DIR=DIR` set, the first time this process reaches an armed
//! [`PausePoint`] it writes `DIR/<point>.paused` (what it was about to do) and waits until a
//! test creates `DIR/<point>.go`. `ROLLGATE_TEST_PAUSE_POINTS` lists the armed points by their
//! words, comma-separated (default: `before-grant-commit`). A test uses it to stop a leader exactly between planning a
//! grant and committing it (the window the fence in the grant transaction guards), which no
//! signal sent from outside can hit reliably. A [`FailPoint`] instead fails once, as etcd
//! refusing the request there would, when the test created `DIR/<point>.fail`. Without the
//! feature the points compile to nothing, and a coordinator that finds the variable set
//! refuses to start ([`refuse_test_settings`]) rather than ignore it.

/// The places a test can hold the coordinator at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PausePoint {
    /// The leader planned a grant and built its transaction; it has not sent it to etcd.
    BeforeGrantCommit,
    /// A session read a host's step and its grant's slot to record the host's result; it has
    /// not sent the transaction to etcd.
    BeforeResultCommit,
    /// A session took its turn at opening; it has not begun its opening etcd work.
    SessionOpening,
}

impl PausePoint {
    /// The file name stem of this point.
    pub fn word(self) -> &'static str {
        match self {
            PausePoint::BeforeGrantCommit => "before-grant-commit",
            PausePoint::BeforeResultCommit => "before-result-commit",
            PausePoint::SessionOpening => "session-opening",
        }
    }
}

/// The environment variable listing the armed points.
pub const PAUSE_POINTS_VAR: &str = "ROLLGATE_TEST_PAUSE_POINTS";

/// The environment variable naming the pause directory.
pub const PAUSE_DIR_VAR: &str = "ROLLGATE_TEST_PAUSE_DIR";

/// Holds the caller at `point` the first time it is reached, if a test asked for it.
#[cfg(feature = "fault-injection")]
pub async fn pause(point: PausePoint, what: &str) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    /// The points this process has paused at already (each pauses once).
    static PAUSED: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let Some(dir) = std::env::var_os(PAUSE_DIR_VAR) else {
        return;
    };
    let armed = std::env::var(PAUSE_POINTS_VAR)
        .unwrap_or_else(|_| PausePoint::BeforeGrantCommit.word().to_string());
    if !armed.split(',').any(|w| w.trim() == point.word()) {
        return;
    }
    let first = PAUSED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(point.word());
    if !first {
        return;
    }
    let dir = std::path::PathBuf::from(dir);
    let paused = dir.join(format!("{}.paused", point.word()));
    let go = dir.join(format!("{}.go", point.word()));
    if let Err(e) = std::fs::write(&paused, what) {
        tracing::error!("{PAUSE_DIR_VAR}: cannot write {}: {e}", paused.display());
        return;
    }
    tracing::warn!(
        point = point.word(),
        "{PAUSE_DIR_VAR}: paused (fault injection): {what}"
    );
    // Test-only: a short poll keeps this free of a file-watch dependency.
    while !go.exists() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tracing::warn!(
        point = point.word(),
        "{PAUSE_DIR_VAR}: resumed (fault injection)"
    );
}

/// Holds the caller at `point` the first time it is reached, if a test asked for it.
#[cfg(not(feature = "fault-injection"))]
pub async fn pause(_point: PausePoint, _what: &str) {}

/// The places a test can make fail once (as etcd refusing the request there would).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// The order dispatcher's catch-up of every held host after its watch (re)opened.
    OrderCatchUp,
}

impl FailPoint {
    /// The file name stem of this point.
    pub fn word(self) -> &'static str {
        match self {
            FailPoint::OrderCatchUp => "order-catch-up",
        }
    }
}

/// True once each time a test created `DIR/<point>.fail` (with `ROLLGATE_TEST_PAUSE_DIR=DIR`):
/// the caller then fails there as if etcd had refused it. The file is removed, so the test
/// sees the failure was reached.
#[cfg(feature = "fault-injection")]
pub fn fail_once(point: FailPoint) -> bool {
    let Some(dir) = std::env::var_os(PAUSE_DIR_VAR) else {
        return false;
    };
    let file = std::path::PathBuf::from(dir).join(format!("{}.fail", point.word()));
    let hit = std::fs::remove_file(&file).is_ok();
    if hit {
        tracing::warn!(
            point = point.word(),
            "{PAUSE_DIR_VAR}: failing here once (fault injection)"
        );
    }
    hit
}

/// True once each time a test asked for it (never in a build without fault injection).
#[cfg(not(feature = "fault-injection"))]
pub fn fail_once(_point: FailPoint) -> bool {
    false
}

/// Refuses a test-only setting in a build without fault injection: a test run against the
/// wrong binaries fails with the reason instead of passing without its fault.
pub fn refuse_test_settings() -> Result<(), String> {
    if cfg!(feature = "fault-injection") || std::env::var_os(PAUSE_DIR_VAR).is_none() {
        return Ok(());
    }
    Err(format!(
        "{PAUSE_DIR_VAR} is set, but this rollgate-coordinator was built without fault \
         injection (a test-only setting that shipped builds leave out); unset it, or build the \
         tests' binaries with `cargo build --workspace --bins --features \
         rollgate-coordinator/fault-injection,rollgate-agent/fault-injection`"
    ))
}
