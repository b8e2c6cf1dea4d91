//! Logging setup shared by the daemons: journald when systemd started us, stderr otherwise.

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
