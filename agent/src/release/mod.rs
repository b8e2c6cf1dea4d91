//! Releases: downloading ([`fetch`]), which ones this host accepts ([`trust`]), unpacking
//! ([`unpack`]), a service's directory ([`releases`]) and what a release dir held
//! ([`release_tree`]).

pub(crate) mod fetch;
pub(crate) mod release_tree;
pub(crate) mod releases;
pub(crate) mod trust;
pub mod unpack;
