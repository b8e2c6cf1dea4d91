//! The artifact store: releases pushed by operators, kept on this replica's disk under
//! `state_dir/artifacts/<sha256>` with their metadata in etcd, served to agents in chunks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use std::io::Seek;
use thiserror::Error;

use tokio::io::AsyncWriteExt;

pub mod downloads;
pub mod serve;

/// What can go wrong storing or reading an artifact.
#[derive(Debug, Error)]
pub enum ArtifactError {
    /// The push is larger than the configured limit.
    #[error("artifact is larger than max_artifact_bytes ({limit} bytes); raise it in the coordinator config if this is expected")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Keeping the artifact would pass the store's disk budget.
    #[error("this replica's artifact store holds {used} bytes and may hold {limit} (max_artifact_store_bytes); the artifact does not fit, so it was not kept: remove old artifacts or raise the limit")]
    StoreFull {
        /// Bytes the store held when the transfer started.
        used: u64,
        /// `max_artifact_store_bytes`.
        limit: u64,
    },
    /// No artifact with this digest is stored here.
    #[error("no artifact sha256:{0} in this coordinator's store; push it with `rollgate artifact push FILE`")]
    NotFound(String),
    /// The disk failed.
    #[error("artifact store I/O error at {path}: {err}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        err: std::io::Error,
    },
}

/// Artifacts on this replica's disk.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    limit: u64,
    /// Copies from other replicas in progress: de-duplicated and bounded.
    pub gate: Arc<downloads::CopyGate>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |err| ArtifactError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// An artifact being received; `finish` verifies and stores it, dropping it discards it.
#[derive(Debug)]
pub struct Upload {
    tmp: tempfile::NamedTempFile,
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
    limit: u64,
    /// Bytes the store may still take (its budget less what it held at the start).
    room: u64,
    /// What the store held at the start, and its budget (for the refusal).
    used: u64,
    store_limit: u64,
    dir: PathBuf,
}

impl ArtifactStore {
    /// A store under `dir`, accepting artifacts up to `limit` bytes.
    pub fn new(dir: PathBuf, limit: u64) -> Result<Self, ArtifactError> {
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(ArtifactStore {
            dir,
            limit,
            gate: Arc::default(),
        })
    }

    /// Bytes the store's files take (stored artifacts and uploads in progress).
    pub fn used_bytes(&self) -> Result<u64, ArtifactError> {
        let mut used = 0u64;
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            if let Ok(meta) = entry.metadata() {
                used = used.saturating_add(meta.len());
            }
        }
        Ok(used)
    }

    /// Path of a stored artifact.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// Starts receiving an artifact (a push or a copy from another replica) that must fit in
    /// `store_limit` bytes with everything already in the store, uploads in progress included.
    pub fn upload(&self, store_limit: u64) -> Result<Upload, ArtifactError> {
        let used = self.used_bytes()?;
        if used >= store_limit {
            return Err(ArtifactError::StoreFull {
                used,
                limit: store_limit,
            });
        }
        let tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io(&self.dir))?;
        let file = tokio::fs::File::from_std(tmp.reopen().map_err(io(tmp.path()))?);
        Ok(Upload {
            tmp,
            file,
            hasher: Sha256::new(),
            size: 0,
            limit: self.limit,
            room: store_limit - used,
            used,
            store_limit,
            dir: self.dir.clone(),
        })
    }

    /// Opens a stored artifact at `offset`; returns the file and its total size. A blocking
    /// file: [`serve::send_chunks`] reads it on the blocking pool, straight into each chunk.
    pub async fn open(
        &self,
        sha256: &str,
        offset: u64,
    ) -> Result<(std::fs::File, u64), ArtifactError> {
        let path = self.path(sha256);
        let f = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound(sha256.to_string()))
            }
            Err(e) => return Err(io(&path)(e)),
        };
        let mut f = f.into_std().await;
        let size = f.metadata().map_err(io(&path))?.len();
        f.seek(std::io::SeekFrom::Start(offset.min(size)))
            .map_err(io(&path))?;
        Ok((f, size))
    }
}

impl Upload {
    /// Appends a chunk.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ArtifactError> {
        self.size += data.len() as u64;
        if self.size > self.limit {
            return Err(ArtifactError::TooLarge { limit: self.limit });
        }
        if self.size > self.room {
            return Err(ArtifactError::StoreFull {
                used: self.used,
                limit: self.store_limit,
            });
        }
        self.hasher.update(data);
        self.file.write_all(data).await.map_err(io(self.tmp.path()))
    }

    /// Fsyncs, names the file by its digest, and returns (sha256, size).
    pub async fn finish(mut self) -> Result<(String, u64), ArtifactError> {
        self.file.flush().await.map_err(io(self.tmp.path()))?;
        self.file.sync_all().await.map_err(io(self.tmp.path()))?;
        let sha = hex::encode(self.hasher.finalize());
        let dest = self.dir.join(&sha);
        self.tmp.persist(&dest).map_err(|e| ArtifactError::Io {
            path: dest.clone(),
            err: e.error,
        })?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok((sha, self.size))
    }
}
