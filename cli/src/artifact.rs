//! Pushing a local file into the coordinator's artifact store: stream it in
//! [`ARTIFACT_CHUNK_BYTES`] chunks while hashing it, then check the coordinator's digest. Also
//! hashing a file without pushing it, for a dry run.

use std::io;
use std::path::Path;

use anyhow::{bail, Context};
use rollgate_proto::pb::{PushArtifactChunk, PushArtifactResponse};
use rollgate_proto::ARTIFACT_CHUNK_BYTES;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Coordinator;

/// Chunks read ahead of the upload (bounds memory to a few chunks).
const PUSH_QUEUE_CHUNKS: usize = 4;

/// An artifact the coordinator holds, as verified by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A local file's digest and size, computed without sending it anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// What the CLI itself read and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Lowercase hex sha256 of the bytes sent.
    pub sha256: String,
    /// Number of bytes sent.
    pub size: u64,
    /// False when the coordinator stopped taking chunks before the end of the file.
    pub complete: bool,
}

/// The coordinator's answer does not match what was sent.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PushMismatch {
    /// The file changed size while it was read.
    #[error("the file changed while it was being pushed (it had {expected} bytes, {read} were read); push it again")]
    FileChanged {
        /// Size when the push started.
        expected: u64,
        /// Bytes actually read.
        read: u64,
    },
    /// The coordinator stopped reading before the end without saying why.
    #[error("the coordinator stopped taking the upload after {sent} bytes; push it again")]
    Incomplete {
        /// Bytes sent before it stopped.
        sent: u64,
    },
    /// The digests differ: bytes were corrupted or lost on the way.
    #[error("the coordinator stored sha256 {stored} ({stored_size} bytes) but the file has sha256 {sent} ({sent_size} bytes); the upload was damaged, push it again")]
    Digest {
        /// Digest the coordinator reported.
        stored: String,
        /// Size the coordinator reported.
        stored_size: u64,
        /// Digest of what was sent.
        sent: String,
        /// Size of what was sent.
        sent_size: u64,
    },
}

/// Checks the coordinator's `answer` against what was `sent` of a file of `expected_size` bytes.
pub fn verify(
    sent: &Sent,
    answer: &PushArtifactResponse,
    expected_size: u64,
) -> Result<Pushed, PushMismatch> {
    if !sent.complete {
        return Err(PushMismatch::Incomplete { sent: sent.size });
    }
    if sent.size != expected_size {
        return Err(PushMismatch::FileChanged {
            expected: expected_size,
            read: sent.size,
        });
    }
    let stored = answer.sha256.trim();
    let stored = stored.strip_prefix("sha256:").unwrap_or(stored);
    if !stored.eq_ignore_ascii_case(&sent.sha256) || answer.size != sent.size {
        return Err(PushMismatch::Digest {
            stored: stored.to_string(),
            stored_size: answer.size,
            sent: sent.sha256.clone(),
            sent_size: sent.size,
        });
    }
    Ok(Pushed {
        sha256: sent.sha256.clone(),
        size: sent.size,
    })
}

/// Opens the artifact at `path` and returns it with its size; refuses what cannot be an
/// artifact (not a regular file, empty).
async fn open_artifact(path: &Path) -> anyhow::Result<(tokio::fs::File, u64)> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .await
        .with_context(|| format!("cannot read {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let size = meta.len();
    if size == 0 {
        bail!(
            "{} is empty; an artifact has at least one byte",
            path.display()
        );
    }
    Ok((file, size))
}

/// Computes the sha256 and size of the file at `path`, as a push would, without pushing it.
pub async fn hash_file(path: &Path) -> anyhow::Result<Hashed> {
    let (mut file, expected_size) = open_artifact(path).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
    loop {
        let n = read_full(&mut file, &mut buf)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        hasher.update(&buf[..n]);
        size += n as u64;
        if n < ARTIFACT_CHUNK_BYTES {
            break;
        }
    }
    if size != expected_size {
        return Err(PushMismatch::FileChanged {
            expected: expected_size,
            read: size,
        }
        .into());
    }
    Ok(Hashed {
        sha256: hex::encode(hasher.finalize()),
        size,
    })
}

/// Pushes the file at `path` to the coordinator and checks the digest it reports.
pub async fn push_file(coord: &Coordinator, path: &Path) -> anyhow::Result<Pushed> {
    let (file, expected_size) = open_artifact(path).await?;

    let (tx, rx) = mpsc::channel(PUSH_QUEUE_CHUNKS);
    let reader = tokio::spawn(send_chunks(file, tx));
    let answer = coord
        .push_artifact(ReceiverStream::new(rx), expected_size)
        .await;
    // A read error explains the failure better than whatever the coordinator made of the cut
    // stream. Partial bytes it may have stored are harmless: the store is addressed by digest
    // and nothing refers to a digest the CLI did not verify.
    let sent = reader
        .await
        .context("the file reader stopped unexpectedly")?
        .with_context(|| format!("cannot read {}", path.display()))?;
    let answer = answer?;
    Ok(verify(&sent, &answer, expected_size)?)
}

/// Reads `file` in chunks, hashing each and sending it to `tx`, until the end of the file or
/// until the receiver goes away (the upload ended early).
async fn send_chunks(
    mut file: tokio::fs::File,
    tx: mpsc::Sender<PushArtifactChunk>,
) -> io::Result<Sent> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
        let n = read_full(&mut file, &mut buf).await?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        hasher.update(&buf);
        size += n as u64;
        if tx.send(PushArtifactChunk { data: buf }).await.is_err() {
            return Ok(Sent {
                sha256: hex::encode(hasher.finalize()),
                size,
                complete: false,
            });
        }
        if n < ARTIFACT_CHUNK_BYTES {
            break;
        }
    }
    Ok(Sent {
        sha256: hex::encode(hasher.finalize()),
        size,
        complete: true,
    })
}

/// Fills `buf` unless the file ends first; returns the number of bytes read.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn verification() {
        let sent = |size, complete| Sent {
            sha256: ABC.into(),
            size,
            complete,
        };
        let answer = |sha: &str, size| PushArtifactResponse {
            sha256: sha.into(),
            size,
        };
        let ok = Ok(Pushed {
            sha256: ABC.into(),
            size: 3,
        });
        let table = [
            (sent(3, true), answer(ABC, 3), 3, ok.clone()),
            (
                sent(3, true),
                answer(&format!("sha256:{}", ABC.to_uppercase()), 3),
                3,
                ok,
            ),
            (
                sent(3, true),
                answer(ABC, 3),
                4,
                Err(PushMismatch::FileChanged {
                    expected: 4,
                    read: 3,
                }),
            ),
            (
                sent(3, false),
                answer(ABC, 3),
                3,
                Err(PushMismatch::Incomplete { sent: 3 }),
            ),
            (
                sent(3, true),
                answer("00", 3),
                3,
                Err(PushMismatch::Digest {
                    stored: "00".into(),
                    stored_size: 3,
                    sent: ABC.into(),
                    sent_size: 3,
                }),
            ),
            (
                sent(3, true),
                answer(ABC, 2),
                3,
                Err(PushMismatch::Digest {
                    stored: ABC.into(),
                    stored_size: 2,
                    sent: ABC.into(),
                    sent_size: 3,
                }),
            ),
        ];
        for (sent, answer, expected, want) in table {
            assert_eq!(
                verify(&sent, &answer, expected),
                want,
                "{sent:?} {answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn chunks_and_hash_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("artifact");
        let data: Vec<u8> = (0..ARTIFACT_CHUNK_BYTES * 2 + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write");

        let file = tokio::fs::File::open(&path).await.expect("open");
        let (tx, mut rx) = mpsc::channel(PUSH_QUEUE_CHUNKS);
        let reader = tokio::spawn(send_chunks(file, tx));
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(chunk) = rx.recv().await {
            sizes.push(chunk.data.len());
            got.extend_from_slice(&chunk.data);
        }
        let sent = reader.await.expect("join").expect("read");

        assert_eq!(sizes, [ARTIFACT_CHUNK_BYTES, ARTIFACT_CHUNK_BYTES, 5]);
        assert_eq!(got, data);
        assert_eq!(
            sent,
            Sent {
                sha256: hex::encode(Sha256::digest(&data)),
                size: data.len() as u64,
                complete: true,
            }
        );
    }

    #[tokio::test]
    async fn local_hash_matches_what_a_push_sends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let table: Vec<Vec<u8>> = vec![
            b"abc".to_vec(),
            vec![7u8; ARTIFACT_CHUNK_BYTES],
            (0..ARTIFACT_CHUNK_BYTES + 1)
                .map(|i| (i % 13) as u8)
                .collect(),
        ];
        for data in table {
            let path = dir.path().join("artifact");
            std::fs::write(&path, &data).expect("write");
            let hashed = hash_file(&path).await.expect("hash");
            assert_eq!(
                hashed,
                Hashed {
                    sha256: hex::encode(Sha256::digest(&data)),
                    size: data.len() as u64,
                },
                "{} bytes",
                data.len()
            );
        }
        std::fs::write(dir.path().join("abc"), b"abc").expect("write");
        assert_eq!(
            hash_file(&dir.path().join("abc"))
                .await
                .expect("hash")
                .sha256,
            ABC
        );

        std::fs::write(dir.path().join("empty"), b"").expect("write");
        let err = hash_file(&dir.path().join("empty"))
            .await
            .expect_err("empty");
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = hash_file(dir.path()).await.expect_err("a directory");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
