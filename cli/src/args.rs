//! The command line: global flags (`--coordinator`, `--output`) and the subcommands.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::registry::RegistryOpts;

/// Where the coordinator listens when neither `--coordinator` nor `ROLLGATE_COORDINATOR` says.
pub const DEFAULT_COORDINATOR: &str = "https://127.0.0.1:7443";

/// Exit status when a followed rollout ended failed, aborted or rolled back.
pub const EXIT_ROLLOUT_NOT_SUCCEEDED: u8 = 1;

/// Exit status for any error: coordinator unreachable, request refused, bad file.
pub const EXIT_ERROR: u8 = 2;

const EXIT_HELP: &str = "\
Exit status: 0 on success; 1 when a rollout followed with --watch ended failed, aborted or \
rolled back (also when it was rolled back by another rollout that was then followed); 2 on any \
error (coordinator unreachable, request refused, unreadable file, confirmation refused).";

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

    /// The fleet CA certificate (PEM) the coordinator's certificate must chain to.
    #[arg(long, global = true, env = "ROLLGATE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Your operator certificate (PEM), from `rollgate certs issue operator NAME`.
    #[arg(long, global = true, env = "ROLLGATE_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,

    /// The private key of your operator certificate (PEM).
    #[arg(long, global = true, env = "ROLLGATE_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// Development only: talk plain http to a coordinator started with
    /// `insecure_plaintext = true`. Nothing is encrypted or authenticated. Only as a flag,
    /// never from the environment: a stray variable must not turn TLS off.
    #[arg(long, global = true)]
    pub insecure: bool,

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
    /// The releases a service has run, newest first.
    History {
        /// The service, as named in the agents' configs.
        service: String,
    },
    /// The event log and audit trail: what happened, to what, by whom, oldest first.
    Events {
        /// Only this rollout's events.
        #[arg(long, value_name = "ID")]
        rollout: Option<String>,
        /// Only this service's events.
        #[arg(long, value_name = "SERVICE")]
        service: Option<String>,
        /// Only this host's events.
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
        /// From an event id (`42`), a time (`2026-12-07T03:12:00Z`) or a time ago (`10m`).
        #[arg(long, value_name = "ID|TIME|AGO")]
        since: Option<String>,
        /// Keep printing new events as they happen (reconnects and resumes after the last one).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Vouch for a host that is gone: fence it or forget it.
    #[command(subcommand)]
    Host(HostCommand),
    /// Make the fleet CA and certificates for coordinators, hosts and operators (mTLS).
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Sign releases: make a publisher key pair, sign an artifact (see deploy/SIGNING.md).
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Serve a live web dashboard of the fleet and its rollouts on this machine, speaking to
    /// the coordinator with your certificate (every action is audited under your identity).
    /// Prints the address to open, with a one-time login token.
    Dashboard {
        /// Where to listen: a loopback address only (127.0.0.1 or [::1]); port 0 picks a
        /// free one.
        #[arg(long, default_value = DEFAULT_DASHBOARD_LISTEN, value_name = "ADDR:PORT")]
        listen: String,
        /// Open the address in the default browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
}

/// Where `rollgate dashboard` listens by default: loopback only.
pub const DEFAULT_DASHBOARD_LISTEN: &str = "127.0.0.1:7480";

/// `rollgate release ...`
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Make an ed25519 key pair: PREFIX.key (private, mode 0600; keep it off the fleet) and
    /// PREFIX.pub (pin it in the agents' [signing] keys). Never overwrites.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Sign ARTIFACT as a release of a service: writes ARTIFACT.sig (name it in the rollout
    /// spec as release.signature_file).
    Sign {
        /// The private key (PEM, from `rollgate release keygen` or `openssl genpkey`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The service, as named in the agents' configs.
        #[arg(long)]
        service: String,
        /// The release version, as in the rollout spec (semver: agents refuse others).
        #[arg(long)]
        version: String,
        /// The fleet it may install in (agents check it against their certificate's fleet).
        #[arg(long)]
        fleet: String,
        /// Only this environment of the fleet (agents with `[signing] env` = this one);
        /// default: every environment of the fleet.
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
        /// How long agents accept the signature ("90d") or until when ("2027-01-31T00:00:00Z").
        #[arg(long, default_value = "90d")]
        expires: String,
        /// Where to write the signature file (default: ARTIFACT.sig).
        #[arg(long, value_name = "FILE")]
        sig: Option<PathBuf>,
        /// The artifact file, exactly as it will be deployed.
        artifact: PathBuf,
    },
    /// Pin a container image's tag to its digest in the registry and write the release
    /// artifact that names it (sign it with `release sign`, name it as release.file).
    Pin {
        /// The image, e.g. registry.example:5000/team/app:1.2.
        image: String,
        /// Where to write the artifact.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The registry's credentials and CA.
        #[command(flatten)]
        registry: RegistryOpts,
    },
}

/// `rollgate certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a fleet CA: DIR/ca.pem (give to every part) and DIR/ca.key (keep offline).
    Init {
        /// The fleet's name (lowercase letters, digits, '-', '.'): every identity is
        /// spiffe://FLEET/ROLE/NAME.
        #[arg(long)]
        fleet: String,
        /// Where to write the CA.
        #[arg(long, default_value = "pki", value_name = "DIR")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by the fleet CA: ROLE-NAME.pem and ROLE-NAME.key.
    Issue {
        /// coordinator (server and client), host (one agent; alias: agent), or operator (see
        /// --role).
        #[arg(value_enum, value_name = "KIND")]
        kind: CertRole,
        /// Replica id, host id (as in the agent's `host_id`) or operator name.
        name: String,
        /// Where the CA is (ca.pem, ca.key).
        #[arg(long, default_value = "pki", value_name = "DIR")]
        dir: PathBuf,
        /// Where to write the certificate and key (default: the CA's directory).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Coordinators: a DNS name agents and operators use to reach it (repeatable).
        /// Default, with neither --dns nor --ip: localhost and 127.0.0.1.
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// Coordinators: an IP address agents and operators use to reach it (repeatable).
        #[arg(long, value_name = "ADDR")]
        ip: Vec<std::net::IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Operators only: what the certificate may do (written into its identity,
        /// spiffe://FLEET/ROLE/NAME). operator: everything; viewer: read only; deployer:
        /// rollouts of --services only.
        #[arg(long, value_enum, default_value_t = OperatorRole::Operator)]
        role: OperatorRole,
        /// Deployers only: the services whose rollouts it may create and steer (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "A,B")]
        services: Vec<String>,
    },
    /// Print who a certificate names, who issued it and how long it is valid.
    Show {
        /// A PEM certificate file.
        file: PathBuf,
    },
}

/// Roles a certificate can be issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CertRole {
    /// A coordinator replica.
    Coordinator,
    /// One agent host.
    #[value(alias = "agent")]
    Host,
    /// A person or tool using the control API.
    Operator,
}

/// What an operator certificate may do (`--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OperatorRole {
    /// Everything, including fencing and forgetting hosts.
    Operator,
    /// Read only: rollouts, hosts, history, plans.
    Viewer,
    /// Create and steer rollouts of its --services, push artifacts; read.
    Deployer,
}

/// `rollgate rollout ...`
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout from a spec file (TOML). A `release.file` is pushed to the
    /// coordinator's artifact store first; a `release.image` tag is pinned to its digest.
    Start {
        /// The rollout spec (see deploy/rollout.toml).
        spec: PathBuf,
        /// Follow the rollout until it ends, like `rollout status --watch`.
        #[arg(long, short = 'w')]
        watch: bool,
        /// For a `release.image`: the registry's credentials and CA.
        #[command(flatten)]
        registry: RegistryOpts,
    },
    /// Dry run: what a spec would target, in which waves and groups, and what would keep it
    /// from starting now. A `release.file` is hashed locally, not pushed.
    Plan {
        /// The rollout spec (see deploy/rollout.toml).
        spec: PathBuf,
        /// For a `release.image`: the registry's credentials and CA.
        #[command(flatten)]
        registry: RegistryOpts,
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
    /// Open the gate a rollout waits at (the canary gate or a manual wave gate).
    Promote {
        /// Rollout id.
        id: String,
    },
    /// Roll a rollout's hosts back to the service's previous release, under the same budget,
    /// as a new rollout.
    Rollback {
        /// Rollout id.
        id: String,
        /// Follow the rollback rollout until it ends; exit 1 unless it succeeded.
        #[arg(long, short = 'w')]
        watch: bool,
    },
}

/// `rollgate host ...`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Vouch that a host is out of the picture: its outstanding orders are void and it stops
    /// counting against rollout budgets. Only for a host that is really down or cut off.
    Fence {
        /// Host id.
        host: String,
    },
    /// Fence a host and delete its record (e.g. a decommissioned machine).
    Forget {
        /// Host id.
        host: String,
        /// Do not ask for confirmation (needed when standard input is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Pin what rollouts see of a host: its labels (and optionally the services it may be
    /// targeted for), whatever its agent claims. Rollouts created afterwards use the pin.
    Label {
        /// Host id.
        host: String,
        /// Labels as key=value (they replace every label the host claims).
        labels: Vec<String>,
        /// Services the host may be targeted for, comma-separated.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        /// Remove the pin.
        #[arg(long)]
        clear: bool,
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

    #[test]
    fn new_commands_parse() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("rollgate").chain(args.iter().copied()))
                .map(|c| c.command)
        };
        // Each command line with a check of what it parsed into.
        type Case = (&'static [&'static str], fn(&Command) -> bool);
        let table: Vec<Case> = vec![
            (
                &["rollout", "plan", "r.toml"],
                |c| matches!(c, Command::Rollout(RolloutCommand::Plan { spec, .. }) if spec.as_os_str() == "r.toml"),
            ),
            (
                &["rollout", "promote", "r-1"],
                |c| matches!(c, Command::Rollout(RolloutCommand::Promote { id }) if id == "r-1"),
            ),
            (
                &["rollout", "rollback", "r-1", "-w"],
                |c| matches!(c, Command::Rollout(RolloutCommand::Rollback { id, watch: true }) if id == "r-1"),
            ),
            (
                &["history", "demo"],
                |c| matches!(c, Command::History { service } if service == "demo"),
            ),
            (
                &["host", "fence", "h1"],
                |c| matches!(c, Command::Host(HostCommand::Fence { host }) if host == "h1"),
            ),
            (
                &["host", "forget", "h1"],
                |c| matches!(c, Command::Host(HostCommand::Forget { host, yes: false }) if host == "h1"),
            ),
            (&["host", "forget", "--yes", "h1"], |c| {
                matches!(c, Command::Host(HostCommand::Forget { yes: true, .. }))
            }),
        ];
        for (args, want) in table {
            let got = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(want(&got), "{args:?} parsed as {got:?}");
        }
        // An id is required where a wrong guess would steer the wrong rollout.
        assert!(parse(&["rollout", "promote"]).is_err());
        assert!(parse(&["rollout", "rollback"]).is_err());
        assert!(parse(&["host", "forget"]).is_err());
    }
}
