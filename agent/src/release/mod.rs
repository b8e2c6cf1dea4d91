//! Releases: downloading ([`fetch`]), which ones this host accepts ([`trust`]), unpacking
//! ([`unpack`]), a service's directory ([`releases`]) and what a release dir held
//! ([`release_tree`]).

pub mod fetch;
pub mod release_tree;
pub mod releases;
pub mod trust;
pub mod unpack;
