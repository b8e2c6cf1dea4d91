//! `rollgate-coordinator --config coordinator.toml`

use std::path::PathBuf;

use clap::Parser;

/// rollgate coordinator: plans rollouts, grants slots through etcd, serves agents and operators.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Path of the TOML config (see deploy/coordinator.toml).
    #[arg(long, short, env = "ROLLGATE_COORDINATOR_CONFIG")]
    config: PathBuf,
    /// Check the config and its certificate files, say what is wrong, and exit (0: usable).
    /// The package's install script starts the coordinator only when this passes.
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // `--check` prints one line for the install scripts and the operator, no log lines.
    if !args.check {
        rollgate_proto::telemetry::init("rollgate-coordinator");
    }
    if let Err(e) = rollgate_coordinator::fault::refuse_test_settings() {
        eprintln!("rollgate-coordinator: {e}");
        return std::process::ExitCode::from(2);
    }
    let config = match rollgate_coordinator::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rollgate-coordinator: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if args.check {
        return match rollgate_coordinator::check(&config) {
            Ok(said) => {
                println!(
                    "rollgate-coordinator: {} is usable: {said}",
                    args.config.display()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rollgate-coordinator: {}: {e:#}", args.config.display());
                std::process::ExitCode::from(2)
            }
        };
    }
    match rollgate_coordinator::run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
