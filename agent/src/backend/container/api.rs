//! The Docker Engine API answers the container backend reads, typed as the API spells them
//! (PascalCase): a field the engine stops sending, or sends with another type, is an error
//! that names it ("Docker API: container inspect: missing field `State.Running`") instead
//! of being read as "not running".

use std::collections::BTreeMap;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// An error answer (`{"message": "..."}`).
#[derive(Debug, Deserialize)]
pub(super) struct ErrorAnswer {
    pub(super) message: String,
}

/// One entry of `GET /containers/json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ContainerSummary {
    pub(super) id: String,
    /// `/name`, as the engine lists it.
    pub(super) names: Vec<String>,
    #[serde(rename = "ImageID")]
    pub(super) image_id: String,
    /// `null` when a container has none.
    pub(super) labels: Option<BTreeMap<String, String>>,
    /// created, running, exited, ...
    pub(super) state: String,
}

/// `GET /containers/{id}/json`: the parts the backend reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ContainerInspect {
    #[serde(deserialize_with = "state_field")]
    pub(super) state: ContainerState,
    /// Restarts by the engine's restart policy.
    pub(super) restart_count: u64,
}

/// `State` of a container inspect.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ContainerState {
    /// created, running, paused, restarting, removing, exited, dead.
    pub(super) status: String,
    pub(super) running: bool,
    pub(super) restarting: bool,
    pub(super) exit_code: i64,
    /// Why it could not run, if it could not ("" otherwise).
    pub(super) error: String,
}

/// `POST /containers/create`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Created {
    pub(super) id: String,
}

/// One message of the `POST /images/load` answer stream (lower-case keys, unlike the rest).
#[derive(Debug, Deserialize)]
pub(super) struct LoadMessage {
    #[serde(default)]
    pub(super) stream: Option<String>,
    #[serde(default)]
    pub(super) error: Option<String>,
}

/// Decodes an answer; the error says which answer and which field ("container inspect:
/// missing field `State.Running`"). Read through a [`Value`] so that errors carry no
/// line and column, only the field.
pub(super) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, String> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("{what}: unreadable answer: {e}"))?;
    T::deserialize(v).map_err(|e| format!("{what}: {e}"))
}

/// `State`, with its fields named from the top ("missing field `State.Running`").
fn state_field<'de, D: Deserializer<'de>>(d: D) -> Result<ContainerState, D::Error> {
    ContainerState::deserialize(d).map_err(|e| D::Error::custom(within("State", &e.to_string())))
}

/// An error inside the object `key`, named from the top.
fn within(key: &str, message: &str) -> String {
    match message.strip_prefix("missing field `") {
        Some(rest) => format!("missing field `{key}.{rest}"),
        None => format!("{key}: {message}"),
    }
}

#[cfg(test)]
mod tests;
