//! rollgate's wire protocol and the domain types that both sides of it share.
//!
//! Layout:
//! - [`pb`]: code generated from `proto/rollgate.proto` (package `rollgate.v1`).
//! - [`spec`]: the rollout spec operators write (TOML), its parsing and validation.
//! - [`image_ref`]: container images named by reference, and the artifact that pins one.
//! - [`metrics`]: the `/metrics` endpoint (Prometheus) and its `[metrics]` settings.
//! - [`metrics_tls`]: https and client certificates on that endpoint (`[metrics] tls_cert`,
//!   `tls_key`, `client_ca`).
//! - [`telemetry`]: log routing for the daemons (journald under systemd, stderr otherwise).
//! - [`tls`]: peer identities (URI SANs) and the `[tls]` settings every part shares.
//! - [`signing`]: release signatures (ed25519 over service, version, digest, size and expiry),
//!   keys in PEM, signature files.
//! - [`registry_auth`]: registry credentials in Docker's `config.json` `auths` format.
//! - [`names`]: validation of host ids, service names and versions that end up in etcd keys
//!   and file paths.
//! - [`status`]: the closed sets on the wire (phase, host state, step, ...): the words people
//!   read and the rules that decide on them (has this rollout ended? settled?), once.
//! - `json` (private): serde helpers the generated types use for `--output json`.
//! - [`text`]: peer-supplied text made safe for terminals and logs (control characters
//!   escaped).

pub mod image_ref;
mod json;
pub mod metrics;
pub mod metrics_tls;
pub mod names;
pub mod registry_auth;
pub mod signing;
pub mod spec;
pub mod status;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod version;

/// Generated protobuf and gRPC code for package `rollgate.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("rollgate.v1");
}

/// Largest gRPC message either side accepts (an artifact chunk is far smaller).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Size of one artifact chunk on the wire.
pub const ARTIFACT_CHUNK_BYTES: usize = 256 * 1024;
