//! Protobuf inputs of the message targets: a sequence of length-delimited messages, as a peer
//! sends them one after another on a stream.

use prost::Message;

/// Most messages one input is read as (each target acts on them in order).
pub const MAX_MESSAGES: usize = 16;

/// The messages in `data`, up to [`MAX_MESSAGES`], stopping at the first that does not decode
/// (as a stream would end on a malformed frame).
pub fn messages<M: Message + Default>(mut data: &[u8]) -> Vec<M> {
    let mut out = Vec::new();
    while !data.is_empty() && out.len() < MAX_MESSAGES {
        match M::decode_length_delimited(&mut data) {
            Ok(m) => out.push(m),
            Err(_) => break,
        }
    }
    out
}

/// `msgs` as one input of a message target.
pub fn encode_all<M: Message>(msgs: &[M]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode_length_delimited(&mut out)
            .expect("a Vec grows as needed");
    }
    out
}
