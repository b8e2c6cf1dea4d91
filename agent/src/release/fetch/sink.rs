//! The partial download on disk: gathered, written and hashed off the runtime thread.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{io_err, FetchError, HASH_BUFFER_BYTES, WRITE_BUFFER_BYTES};

/// The partial download: appends, hashing as it writes (the bytes already on disk are hashed
/// when it opens), and refuses to grow past the declared size. Received bytes are gathered
/// into [`WRITE_BUFFER_BYTES`] and written and hashed on the blocking pool, off the agent's
/// one runtime thread, which meanwhile decrypts what comes next; written straight from the
/// buffer (tokio's `File` copied every chunk into a buffer of its own first).
pub(super) struct Sink {
    /// The file and the hasher of its first `on_disk` bytes; out on the blocking pool while a
    /// write runs, and gone after a write failed (the sink is then dropped).
    disk: Option<(std::fs::File, Sha256)>,
    /// Received, not yet written.
    buf: Vec<u8>,
    path: PathBuf,
    /// Bytes received: on disk plus buffered.
    pub(super) written: u64,
    limit: u64,
}

/// What a [`Sink`] hands to the blocking pool and gets back.
type Disk = (std::fs::File, Sha256, Vec<u8>);

impl Sink {
    pub(super) async fn open(path: &Path, have: u64, limit: u64) -> Result<Sink, FetchError> {
        let hasher = hash_prefix(path, have)
            .await
            .map_err(io_err("hash", path))?;
        // 0600: bytes not yet verified are nobody else's to read.
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await
            .map_err(io_err("open", path))?
            .into_std()
            .await;
        Ok(Sink {
            disk: Some((file, hasher)),
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
            path: path.to_path_buf(),
            written: have,
            limit,
        })
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> Result<(), FetchError> {
        if self.written.saturating_add(data.len() as u64) > self.limit {
            return Err(FetchError::Oversized { size: self.limit });
        }
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        crate::metrics::get().fetched(data.len() as u64);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes and hashes what is buffered.
    pub(super) async fn flush(&mut self) -> Result<(), FetchError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.on_disk("write", |(file, hasher, buf)| {
            io::Write::write_all(file, buf)?;
            hasher.update(&buf[..]);
            buf.clear();
            Ok(())
        })
        .await
    }

    pub(super) async fn truncate(&mut self) -> Result<(), FetchError> {
        self.on_disk("truncate", |(file, hasher, buf)| {
            file.set_len(0)?;
            *hasher = Sha256::new();
            buf.clear();
            Ok(())
        })
        .await?;
        self.written = 0;
        Ok(())
    }

    /// Flushes and fsyncs; returns the digest of the complete file.
    pub(super) async fn finish(mut self) -> Result<String, FetchError> {
        self.flush().await?;
        self.on_disk("fsync", |(file, _, _)| file.sync_all())
            .await?;
        if self.written < self.limit {
            return Err(FetchError::Short {
                got: self.written,
                size: self.limit,
            });
        }
        let (_, hasher) = self.disk.take().ok_or_else(|| self.gone())?;
        Ok(hex::encode(hasher.finalize()))
    }

    /// Runs `op` on the file, the hasher and the buffer on the blocking pool.
    async fn on_disk(
        &mut self,
        action: &'static str,
        op: impl FnOnce(&mut Disk) -> io::Result<()> + Send + 'static,
    ) -> Result<(), FetchError> {
        let (file, hasher) = self.disk.take().ok_or_else(|| self.gone())?;
        let mut disk = (file, hasher, std::mem::take(&mut self.buf));
        let (result, disk) = tokio::task::spawn_blocking(move || (op(&mut disk), disk))
            .await
            .map_err(|e| io_err(action, &self.path)(io::Error::other(e)))?;
        result.map_err(io_err(action, &self.path))?;
        let (file, hasher, buf) = disk;
        self.disk = Some((file, hasher));
        self.buf = buf;
        Ok(())
    }

    /// The error for a sink whose earlier write failed.
    fn gone(&self) -> FetchError {
        io_err("write", &self.path)(io::Error::other("an earlier write failed"))
    }
}

/// The hasher state after the first `len` bytes of `path` (a resumed download's prefix).
async fn hash_prefix(path: &Path, len: u64) -> io::Result<Sha256> {
    let mut hasher = Sha256::new();
    if len == 0 {
        return Ok(hasher);
    }
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?.take(len);
        let mut buf = vec![0u8; HASH_BUFFER_BYTES];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(hasher);
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(io::Error::other)?
}
