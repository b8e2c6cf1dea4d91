//! The agent's durable state: the [`journal`] and the [`durable`] writes it rests on.

pub(crate) mod durable;
pub(crate) mod journal;
