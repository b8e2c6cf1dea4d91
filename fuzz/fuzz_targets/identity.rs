//! Peer identities: a DER certificate's `spiffe://` URI SAN, and the URI itself. Never panics;
//! an accepted URI is exactly what the identity prints back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollgate_proto::tls::Identity;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = Identity::from_cert_der(data) {
        assert_eq!(Identity::parse_uri(&id.uri()).ok(), Some(id));
    }
    if let Ok(uri) = std::str::from_utf8(data) {
        if let Ok(id) = Identity::parse_uri(uri) {
            assert_eq!(id.uri(), uri);
            let _ = id.to_string();
        }
    }
});
