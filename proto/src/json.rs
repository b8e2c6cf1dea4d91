//! Serde helpers the generated types name in their `#[serde(...)]` attributes (see
//! `build.rs`): the JSON of `rollgate --output json` comes from the types themselves.

use std::collections::{BTreeMap, HashMap};

use serde::{Serialize, Serializer};

/// An enum field (an `i32` on the wire) as its enum's name; a value this build does not know
/// (a newer peer) as the number.
pub(crate) fn enum_name<E, S>(v: &i32, s: S) -> Result<S::Ok, S::Error>
where
    E: TryFrom<i32> + Serialize,
    S: Serializer,
{
    match E::try_from(*v) {
        Ok(e) => e.serialize(s),
        Err(_) => s.serialize_i32(*v),
    }
}

/// A map with its keys sorted, so the output is stable.
pub(crate) fn sorted<S: Serializer>(m: &HashMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(m.iter().collect::<BTreeMap<_, _>>())
}
