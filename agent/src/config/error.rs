//! The error a config load ends with, and the helper that builds the usual one.

use std::path::PathBuf;

use thiserror::Error;

/// A config the agent cannot run with; the message names the field and the fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read agent config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The text is not TOML, or has unknown or mistyped fields.
    #[error("agent config is not valid: {0}")]
    Toml(String),
    /// A field has a value the agent cannot use.
    #[error("agent config field `{field}`: {problem}")]
    Field {
        /// Path of the field, e.g. `services[0].probes[1].url`.
        field: String,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

pub(super) fn field_err(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}
