//! `rollgate`: the operator CLI. Parses the command line, runs it, and turns the outcome into
//! an exit status (see `rollgate --help`).

use std::process::ExitCode;

use clap::Parser;
use rollgate::args::{Cli, EXIT_ERROR, EXIT_ROLLOUT_NOT_SUCCEEDED};
use rollgate::Finish;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match rollgate::run(cli).await {
        Ok(Finish::Success) => ExitCode::SUCCESS,
        Ok(Finish::RolloutNotSucceeded) => ExitCode::from(EXIT_ROLLOUT_NOT_SUCCEEDED),
        Err(e) => {
            // The coordinator's refusals may quote what a host sent.
            let text = format!("{e:#}");
            eprintln!("rollgate: {}", rollgate_proto::text::printable_lines(&text));
            ExitCode::from(EXIT_ERROR)
        }
    }
}
