//! `rollgate`, the operator CLI: list hosts, plan, start, follow and steer rollouts (promote,
//! roll back), show a service's release history, fence or forget hosts, push artifacts.
//!
//! Layout:
//! - [`args`]: the command line (clap derive): global flags and subcommands.
//! - [`commands`]: [`run`] dispatches a parsed command line to one function per command.
//! - [`client`]: the connection to a coordinator's `ControlService`, per-call deadlines, and
//!   [`client::ControlError`], which turns gRPC statuses into one-line messages an operator can
//!   act on.
//! - [`certs`]: `rollgate certs`: the fleet CA and certificates for mTLS.
//! - [`artifact`]: streaming a local file to the coordinator's artifact store while hashing it,
//!   or only hashing it for a plan.
//! - [`spec_file`]: reading a rollout spec and rewriting `release.file` into a release in the
//!   store (pushed for `start`, hashed locally for `plan`).
//! - [`dashboard`]: `rollgate dashboard`: the live web dashboard, served on the operator's
//!   machine (loopback only) with the operator's certificate.
//! - [`events`]: `rollgate events`: the event log, one line per event, following and resuming.
//! - [`registry`]: a release's image tag pinned to its digest in the registry.
//! - [`release`]: `rollgate release keygen|sign|pin`: publisher keys and signature files.
//! - [`render`]: text output (tables, status blocks, relative times); pure functions.
//! - [`json`]: `--output json` conversions of the wire messages to `serde_json` values.
//! - [`watch`]: following a rollout, redrawing in place on a terminal or printing each change,
//!   and handing over to its rollback rollout when it is rolled back.

pub mod args;
pub mod artifact;
pub mod certs;
pub mod client;
pub mod commands;
pub mod dashboard;
pub mod events;
pub mod json;
pub mod registry;
pub mod release;
pub mod render;
pub mod spec_file;
pub mod watch;

pub use commands::{run, Finish};
