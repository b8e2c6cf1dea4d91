//! The command line: global flags (`--coordinator`, `--output`) and the subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Where the coordinator listens when neither `--coordinator` nor `ROLLGATE_COORDINATOR` says.
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7443";

/// Exit status when a followed rollout ended failed, aborted or rolled back.
pub const EXIT_ROLLOUT_NOT_SUCCEEDED: u8 = 1;

/// Exit status for any error: coordinator unreachable, request refused, bad file.
pub const EXIT_ERROR: u8 = 2;

const EXIT_HELP: &str = "\
Exit status: 0 on success; 1 when a rollout followed with --watch ended failed, aborted or \
rolled back; 2 on any error (coordinator unreachable, request refused, unreadable file).";

/// Operator CLI for rollgate, which rolls a new version of a service across a fleet a few
/// hosts at a time.
#[derive(Debug, Parser)]
#[command(name = "rollgate", version, after_help = EXIT_HELP)]
pub struct Cli {
    /// URL of a coordinator replica's control API.
    #[arg(
        long,
        global = true,
        env = "ROLLGATE_COORDINATOR",
        default_value = DEFAULT_COORDINATOR,
        value_name = "URL"
    )]
    pub coordinator: String,

    /// Output format: text for people, json for scripts.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Text
    )]
    pub output: OutputFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Tables and sentences.
    Text,
    /// The protobuf messages as JSON (one object per line while watching).
    Json,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the hosts the coordinator knows: connected, labels, services, last seen.
    Hosts,
    /// Start, follow and steer rollouts.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Manage artifacts in the coordinator's store.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
}

/// `rollgate rollout ...`
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout from a spec file (TOML). A `release.file` is pushed to the
    /// coordinator's artifact store first.
    Start {
        /// The rollout spec (see deploy/rollout.toml).
        spec: PathBuf,
        /// Follow the rollout until it ends, like `rollout status --watch`.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// Show a rollout's progress, host by host.
    Status {
        /// Rollout id; the most recent rollout when omitted.
        id: Option<String>,
        /// Follow the rollout until it ends; exit 1 unless it succeeded.
        #[arg(long, short = 'w')]
        watch: bool,
    },
    /// List rollouts, one per line.
    List,
    /// Stop granting new slots; hosts in the middle of an update finish it.
    Pause {
        /// Rollout id.
        id: String,
    },
    /// Continue a paused rollout.
    Resume {
        /// Rollout id.
        id: String,
    },
    /// End a rollout for good; hosts in the middle of an update finish or roll back.
    Abort {
        /// Rollout id.
        id: String,
    },
}

/// `rollgate artifact ...`
#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Upload a file to the coordinator's artifact store and print its sha256 and size, for a
    /// spec's `release.source = "store:"`.
    Push {
        /// The file to upload.
        file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "rollgate",
            "rollout",
            "status",
            "--watch",
            "--output",
            "json",
            "--coordinator",
            "http://c:1",
        ])
        .expect("valid command line");
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.coordinator, "http://c:1");
        assert!(matches!(
            cli.command,
            Command::Rollout(RolloutCommand::Status {
                id: None,
                watch: true
            })
        ));
    }
}
