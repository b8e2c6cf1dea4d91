//! rollgate's wire protocol and the domain types that both sides of it share.
//!
//! Layout:
//! - [`pb`]: code generated from `proto/rollgate.proto` (package `rollgate.v1`).
//! - [`spec`]: the rollout spec operators write (TOML), its parsing and validation.
//! - [`metrics`]: the `/metrics` endpoint (Prometheus) and its `[metrics]` settings.
//! - [`telemetry`]: log routing for the daemons (journald under systemd, stderr otherwise).
//! - [`tls`]: peer identities (URI SANs) and the `[tls]` settings every part shares.
//! - [`signing`]: release signatures (ed25519 over service, version, digest, size and expiry),
//!   keys in PEM, signature files.
//! - [`names`]: validation of host ids, service names and versions that end up in etcd keys
//!   and file paths.
//! - [`text`]: peer-supplied text made safe for terminals and logs (control characters
//!   escaped).

pub mod metrics;
pub mod names;
pub mod signing;
pub mod spec;
pub mod telemetry;
pub mod text;
pub mod tls;

/// Generated protobuf and gRPC code for package `rollgate.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("rollgate.v1");
}

/// Largest gRPC message either side accepts (an artifact chunk is far smaller).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Size of one artifact chunk on the wire.
pub const ARTIFACT_CHUNK_BYTES: usize = 256 * 1024;

impl pb::Health {
    /// Short lowercase word for CLI output and logs.
    pub fn word(self) -> &'static str {
        match self {
            pb::Health::Unknown => "unknown",
            pb::Health::Healthy => "healthy",
            pb::Health::Unhealthy => "unhealthy",
            pb::Health::Stopped => "stopped",
        }
    }
}

impl pb::Step {
    /// Short lowercase word for CLI output and logs.
    pub fn word(self) -> &'static str {
        match self {
            pb::Step::Unspecified => "",
            pb::Step::Accepted => "accepted",
            pb::Step::Fetching => "fetching",
            pb::Step::Staged => "staged",
            pb::Step::Swapping => "swapping",
            pb::Step::Starting => "starting",
            pb::Step::Verifying => "verifying",
            pb::Step::RollingBack => "rolling back",
        }
    }
}

impl pb::Outcome {
    /// Short lowercase word for CLI output and logs.
    pub fn word(self) -> &'static str {
        match self {
            pb::Outcome::Unspecified => "unspecified",
            pb::Outcome::Succeeded => "succeeded",
            pb::Outcome::RolledBack => "rolled back",
            pb::Outcome::Failed => "failed",
            pb::Outcome::Refused => "refused",
        }
    }
}
