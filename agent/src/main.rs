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
            tracing::error!("{e}");
            eprintln!("rollgate-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
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
