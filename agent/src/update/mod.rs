//! Carrying out orders: intake ([`executor`]), the update procedure, staging, the
//! per-service task, what the agent reports, and the operator's hooks.

pub mod executor;
pub mod hooks;
mod procedure;
pub(crate) mod service;
pub(crate) mod staging;
pub(crate) mod status;
