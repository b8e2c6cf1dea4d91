//! Serving one download of a stored artifact: chunks read from disk on the blocking pool,
//! straight into the buffer each chunk is sent in, and only [`READ_AHEAD`] of them ahead.
//!
//! Memory: every download in progress holds about five chunks — one being read, the queue,
//! and the copy tonic encodes, which hyper's HTTP/2 sender keeps until the agent's
//! flow-control window lets it out — plus the allocator's fragmentation. `rollgate-bench
//! --only big-artifact`, 20 agents x 50 MB: 256 KiB chunks 46.9 MiB peak, 64 KiB 24.0 MiB;
//! 50 x 200 MB at 64 KiB: 47.0 MiB (was 164-174 with 256 KiB chunks read through tokio's
//! `File`, whose own buffer held one more chunk per download).

use std::io::Read;

use rollgate_proto::pb;
use tokio::sync::mpsc;
use tonic::Status;

/// Bytes read from the store and sent per chunk. Smaller than a push's chunk
/// ([`rollgate_proto::ARTIFACT_CHUNK_BYTES`]): it is held ~4 times by every download.
pub const SERVE_CHUNK_BYTES: usize = 64 * 1024;
/// Chunks read ahead of one download: enough to keep the stream busy while the next is read.
pub const READ_AHEAD: usize = 2;

/// One item of a download's stream: a chunk, or the error that ends it.
pub type ChunkItem = Result<pb::ArtifactChunk, Status>;

/// The queue a download's chunks go through.
pub fn queue() -> (mpsc::Sender<ChunkItem>, mpsc::Receiver<ChunkItem>) {
    mpsc::channel(READ_AHEAD)
}

/// Sends `file` (positioned at `offset`, `total` bytes long) chunk by chunk until its end,
/// a read error (sent as the stream's last item), or the download going away.
pub async fn send_chunks(
    mut file: std::fs::File,
    mut offset: u64,
    total: u64,
    tx: mpsc::Sender<ChunkItem>,
) {
    loop {
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; SERVE_CHUNK_BYTES];
            let n = read_full(&mut file, &mut buf)?;
            buf.truncate(n);
            Ok::<_, std::io::Error>((file, buf))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let data = match read {
            Ok((_, buf)) if buf.is_empty() => return,
            Ok((f, buf)) => {
                file = f;
                buf
            }
            Err(e) => {
                let why = format!(
                    "the coordinator cannot read its stored artifact at byte {offset}: {e}; \
                     check its disk (the download resumes from here once it is readable)"
                );
                tracing::warn!("{why}");
                let _ = tx.send(Err(Status::internal(why))).await;
                return;
            }
        };
        let n = data.len() as u64;
        let chunk = pb::ArtifactChunk {
            offset,
            data,
            total_size: total,
        };
        if tx.send(Ok(chunk)).await.is_err() {
            return; // the agent went away; it resumes from what it has on disk
        }
        offset += n;
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
