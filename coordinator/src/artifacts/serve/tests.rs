//! What a download of a stored artifact sends: exactly the bytes from its offset to the size
//! the file had when it was opened, and a clear error naming the artifact when the file is
//! missing or ends early under it.

use std::io::Write;

use super::*;
use crate::artifacts::{ArtifactError, ArtifactStore};

/// A file of four chunks and a bit, each byte telling its place (mod 251, a prime, so no two
/// chunks look alike).
const LEN: usize = 4 * SERVE_CHUNK_BYTES + 123;

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A store holding `bytes` as a (made-up) artifact; returns its digest.
fn store_with(bytes: &[u8]) -> (tempfile::TempDir, ArtifactStore, String) {
    let d = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(d.path().join("artifacts"), u64::MAX).expect("store");
    let sha = "ab".repeat(32);
    std::fs::write(store.path(&sha), bytes).expect("write the artifact");
    (d, store, sha)
}

/// Opens `sha` at `offset`, lets `meddle` touch the file, then serves it: the chunks, and
/// the error that ended the stream if one did.
async fn serve(
    store: &ArtifactStore,
    sha: &str,
    offset: u64,
    meddle: impl FnOnce(),
) -> (Vec<pb::ArtifactChunk>, Option<Status>) {
    let (file, total) = store.open(sha, offset).await.expect("open");
    meddle();
    let (tx, mut rx) = queue();
    let d = Download {
        file,
        sha256: sha.to_string(),
        offset: offset.min(total),
        total,
    };
    tokio::spawn(send_chunks(d, tx));
    let mut chunks = Vec::new();
    while let Some(item) = rx.recv().await {
        match item {
            Ok(c) => chunks.push(c),
            Err(status) => return (chunks, Some(status)),
        }
    }
    (chunks, None)
}

/// The chunks' bytes, checking that each starts where the previous one ended.
fn joined(chunks: &[pb::ArtifactChunk], from: u64) -> Vec<u8> {
    let mut at = from;
    let mut out = Vec::new();
    for c in chunks {
        assert_eq!(c.offset, at, "chunks must follow each other");
        at += c.data.len() as u64;
        out.extend_from_slice(&c.data);
    }
    out
}

#[tokio::test]
async fn serving_from_an_offset_sends_exactly_the_rest_of_the_file() {
    let bytes = content(LEN);
    let (_d, store, sha) = store_with(&bytes);
    let chunk = SERVE_CHUNK_BYTES as u64;
    for offset in [
        0,
        1,
        chunk - 1,
        chunk,
        3 * chunk + 7,
        LEN as u64 - 1,
        LEN as u64,
    ] {
        let (chunks, err) = serve(&store, &sha, offset, || {}).await;
        assert!(err.is_none(), "offset {offset}: {err:?}");
        let got = joined(&chunks, offset);
        assert_eq!(got.len(), LEN - offset as usize, "offset {offset}: length");
        assert!(
            got == bytes[offset as usize..],
            "offset {offset}: not the rest of the file"
        );
        assert!(chunks.iter().all(|c| c.total_size == LEN as u64));
        assert!(chunks.iter().all(|c| c.data.len() <= SERVE_CHUNK_BYTES));
    }
}

#[tokio::test]
async fn an_artifact_cut_short_under_a_download_ends_it_with_an_error_naming_it() {
    let (_d, store, sha) = store_with(&content(LEN));
    let path = store.path(&sha);
    let cut = 2 * SERVE_CHUNK_BYTES as u64 + 5;
    let (chunks, err) = serve(&store, &sha, 0, || {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(cut).expect("truncate");
    })
    .await;
    assert_eq!(
        joined(&chunks, 0).len() as u64,
        cut,
        "what the file still held"
    );
    let err = err.expect("a file that ends early must end the download with an error");
    assert_eq!(err.code(), tonic::Code::Internal);
    let msg = err.message();
    assert!(msg.contains(&format!("sha256:{sha}")), "{msg}");
    assert!(msg.contains(&format!("ends at byte {cut}")), "{msg}");
    assert!(msg.contains(&format!("was {LEN} bytes")), "{msg}");
}

#[tokio::test]
async fn an_artifact_grown_under_a_download_is_not_sent_past_its_size() {
    let bytes = content(LEN);
    let (_d, store, sha) = store_with(&bytes);
    let path = store.path(&sha);
    let (chunks, err) = serve(&store, &sha, 0, || {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(&[7u8; SERVE_CHUNK_BYTES]).expect("append");
    })
    .await;
    assert!(err.is_none(), "{err:?}");
    assert!(
        joined(&chunks, 0) == bytes,
        "exactly the bytes it had when it was opened"
    );
}

#[tokio::test]
async fn a_missing_artifact_is_refused_naming_it_and_the_fix() {
    let (_d, store, sha) = store_with(&content(10));
    std::fs::remove_file(store.path(&sha)).expect("remove");
    let err = store.open(&sha, 0).await.expect_err("nothing to serve");
    assert!(matches!(err, ArtifactError::NotFound(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("sha256:{sha}")), "{msg}");
    assert!(msg.contains("rollgate artifact push"), "{msg}");
}
