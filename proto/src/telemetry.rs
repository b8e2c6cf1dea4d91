//! Logging setup shared by the daemons: journald when systemd started us, stderr otherwise.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once logs go to journald.
static JOURNALD: AtomicBool = AtomicBool::new(false);

/// Routes `tracing` output for a daemon. Under systemd (`JOURNAL_STREAM` set) events go to
/// journald through `systemd-journal-logger` (tracing's `log` bridge carries them); otherwise a
/// human-readable subscriber writes to stderr. `RUST_LOG` filters both (default `info`).
pub fn init(daemon: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match systemd_journal_logger::JournalLog::new() {
            Ok(journal) => {
                let journal = journal.with_syslog_identifier(daemon.to_string());
                if log::set_boxed_logger(Box::new(journal)).is_ok() {
                    log::set_max_level(level_of(&filter));
                    JOURNALD.store(true, Ordering::Relaxed);
                    return;
                }
            }
            Err(e) => eprintln!("{daemon}: journald is not reachable ({e}); logging to stderr"),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The ids an event line is about, as journal fields under systemd (`journalctl
/// ROLLOUT_ID=r-… HOST_ID=host-3 SERVICE=web`) and as `key=value` fields on stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ids<'a> {
    /// `ROLLOUT_ID`.
    pub rollout: &'a str,
    /// `HOST_ID`.
    pub host: &'a str,
    /// `SERVICE`.
    pub service: &'a str,
}

/// Logs `message` at info level with `ids` as structured fields.
pub fn info_with_ids(ids: Ids<'_>, message: &str) {
    log_with_ids(log::Level::Info, ids, message)
}

/// Logs `message` at `level` with `ids` as structured fields (journal fields under systemd).
pub fn log_with_ids(level: log::Level, ids: Ids<'_>, message: &str) {
    if JOURNALD.load(Ordering::Relaxed) {
        // Only the fields the event has: `journalctl HOST_ID=` must not match rollout-wide ones.
        let fields: Vec<(&str, &str)> = [
            ("ROLLOUT_ID", ids.rollout),
            ("HOST_ID", ids.host),
            ("SERVICE", ids.service),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        log::logger().log(
            &log::Record::builder()
                .args(format_args!("{message}"))
                .level(level)
                .target(module_path!())
                .key_values(&fields)
                .build(),
        );
        return;
    }
    let (rollout_id, host_id, service) = (ids.rollout, ids.host, ids.service);
    match level {
        log::Level::Error => tracing::error!(rollout_id, host_id, service, "{message}"),
        log::Level::Warn => tracing::warn!(rollout_id, host_id, service, "{message}"),
        _ => tracing::info!(rollout_id, host_id, service, "{message}"),
    }
}

fn level_of(filter: &str) -> log::LevelFilter {
    match filter.split(',').next().unwrap_or("info").trim() {
        "trace" => log::LevelFilter::Trace,
        "debug" => log::LevelFilter::Debug,
        "warn" => log::LevelFilter::Warn,
        "error" => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    }
}

/// Tells systemd (`Type=notify`) that the daemon is ready; a no-op when not under systemd.
pub fn notify_ready() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
}

/// Tells systemd that the daemon is stopping; a no-op when not under systemd.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}
