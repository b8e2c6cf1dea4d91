//! The agent's durable state: the [`journal`] and the [`durable`] writes it rests on.

pub mod durable;
pub mod journal;
