//! The tarball unpacker on arbitrary bytes: a raw tar archive (its header checksums are fixed
//! up so mutations get past them, then it is gzipped), or a gzip stream as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollgate_fuzz::{fix_tar_checksums, gzip, is_gzip, unpack_and_check, Scratch};

fuzz_target!(|data: &[u8]| {
    let targz = if is_gzip(data) {
        data.to_vec()
    } else {
        let mut tar = data.to_vec();
        fix_tar_checksums(&mut tar);
        gzip(&tar)
    };
    unpack_and_check(&Scratch::new(), &targz);
});
