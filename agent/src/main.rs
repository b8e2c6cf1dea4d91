//! `rollgate-agent --config PATH`: the agent daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// rollgate agent: dials the coordinator, swaps releases, runs health checks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The agent's config file (TOML).
    #[arg(long, env = "ROLLGATE_AGENT_CONFIG")]
    config: PathBuf,
    /// Check the config and its certificate files, say what is wrong, and exit (0: usable).
    /// The package's install script starts the agent only when this passes.
    #[arg(long)]
    check: bool,
}

// One thread is plenty for an agent and keeps it small on edge boxes; hashing and fsyncs of
// large files go to the blocking pool.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    rollgate_proto::telemetry::init("rollgate-agent");
    let args = Args::parse();
    let config = match rollgate_agent::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            if !args.check {
                tracing::error!("{e}");
            }
            eprintln!("rollgate-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        return check(&args.config, &config);
    }
    match rollgate_agent::run(config, shutdown_signal()).await {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(reexec)) => {
            // Same pid: the supervisor sees nothing, the services keep running.
            let e = rollgate_agent::upgrade::exec(&reexec);
            tracing::error!("cannot execute {}: {e}", reexec.binary.display());
            eprintln!(
                "rollgate-agent: cannot execute {}: {e}",
                reexec.binary.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("rollgate-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--check`: what the agent checks at start before it dials anyone (config, `[tls]` files
/// and identity, `[metrics]` TLS), without starting services or writing its state dir.
fn check(path: &std::path::Path, config: &rollgate_agent::Config) -> ExitCode {
    let checked = rollgate_agent::check_tls(config).and_then(|()| {
        rollgate_proto::metrics_tls::acceptor(&config.metrics)
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
    });
    match checked {
        Ok(()) => {
            println!(
                "rollgate-agent: {} is usable: host {}, coordinator {}, {} service(s)",
                path.display(),
                config.host_id,
                config.coordinators.join(", "),
                config.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rollgate-agent: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Completes on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM ({e}); only ctrl-c stops the agent");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
