//! Carrying out orders: intake ([`executor`]), the update procedure, staging, the
//! per-service task, what the agent reports, and the operator's hooks.

mod context;
pub(crate) mod executor;
pub(crate) mod hooks;
pub(crate) mod order;
mod procedure;
pub(crate) mod service;
pub(crate) mod shared;
pub(crate) mod staging;
pub(crate) mod status;

pub use context::{check_build, FaultInjectionMissing, CRASH_AT_ENV};
