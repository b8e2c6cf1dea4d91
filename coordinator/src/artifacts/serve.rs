//! Serving one download of a stored artifact: chunks read from disk on the blocking pool,
//! straight into the buffer each chunk is sent in, and only [`READ_AHEAD`] of them ahead.
//! Exactly the artifact's bytes from the asked offset to the size it had when it was opened:
//! a file that ends early under a download ends it with an error naming the artifact, and
//! one that grew is not sent past that size.
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

/// One download: the stored file of artifact `sha256`, positioned at `offset`, and the size
/// it had when it was opened.
#[derive(Debug)]
pub struct Download {
    /// The open file, positioned at `offset`.
    pub file: std::fs::File,
    /// The artifact's digest, to name it in errors.
    pub sha256: String,
    /// Where the download starts.
    pub offset: u64,
    /// The file's size when it was opened: the download ends there.
    pub total: u64,
}

/// Sends the download chunk by chunk until its end, a read error or a file that ends early
/// (sent as the stream's last item), or the download going away.
pub async fn send_chunks(d: Download, tx: mpsc::Sender<ChunkItem>) {
    let file = std::sync::Arc::new(d.file);
    let mut offset = d.offset;
    while offset < d.total {
        let want = SERVE_CHUNK_BYTES.min(usize::try_from(d.total - offset).unwrap_or(usize::MAX));
        let f = file.clone();
        let read = tokio::task::spawn_blocking(move || read_chunk(&f, want))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        let why = match read {
            Ok(data) if data.is_empty() => format!(
                "the coordinator's stored artifact sha256:{} ends at byte {offset}, but it \
                 was {} bytes when this download started: it changed on the coordinator's \
                 disk; push it again with `rollgate artifact push FILE`",
                d.sha256, d.total
            ),
            Ok(data) => {
                let n = data.len() as u64;
                let chunk = pb::ArtifactChunk {
                    offset,
                    data,
                    total_size: d.total,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return; // the agent went away; it resumes from what it has on disk
                }
                offset += n;
                continue;
            }
            Err(e) => format!(
                "the coordinator cannot read its stored artifact sha256:{} at byte {offset}: \
                 {e}; check its disk (the download resumes from here once it is readable)",
                d.sha256
            ),
        };
        tracing::warn!("{why}");
        let _ = tx.send(Err(Status::internal(why))).await;
        return;
    }
}

/// Reads up to `want` bytes (fewer only at the file's end).
fn read_chunk(mut f: &std::fs::File, want: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; want];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests;
