//! Getting a release's bytes onto the host: store, http or file; resume; size and digest (S8).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_proto::pb::agent_service_client::AgentServiceClient;
use rollgate_proto::pb::{self, FetchArtifactRequest};
use rollgate_proto::{names, ARTIFACT_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tonic::transport::Channel;

/// How many times one fetch is tried (each try resumes from what is already on disk).
pub const FETCH_ATTEMPTS: u32 = 5;
/// Pause after the first failed try; doubled after each further one.
pub const FETCH_RETRY_DELAY: Duration = Duration::from_millis(250);
/// A download that receives nothing for this long is abandoned (and resumed on the next try).
pub const FETCH_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a `store:` fetch waits for a connection to the coordinator.
pub const STORE_CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Connect timeout for http(s) downloads.
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer size for hashing files.
const HASH_BUFFER_BYTES: usize = 64 * 1024;
/// Bytes a download gathers before writing them to disk (and hashing them) in one go.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// Why an artifact could not be fetched and verified. Nothing has been installed when this is
/// returned.
#[derive(Debug, Error)]
pub enum FetchError {
    /// The order's release description cannot be used.
    #[error("release is not usable: {0}")]
    BadRelease(String),
    /// Not enough free space for the download.
    #[error(
        "not enough disk space in {}: the download needs {need} more bytes but only {available} \
         are free; free space on the filesystem mounted at {} and retry the rollout",
        dir.display(),
        crate::errors::mount_point(dir).display()
    )]
    NoSpace {
        /// Where the download goes.
        dir: PathBuf,
        /// Bytes still to download.
        need: u64,
        /// Bytes free for unprivileged use.
        available: u64,
    },
    /// The source sent more than the declared size (S8: download at most the declared size).
    #[error(
        "the source sent more than the release's declared size of {size} bytes; refusing to \
         write past it (check the release's size)"
    )]
    Oversized {
        /// Declared size.
        size: u64,
    },
    /// The source announced a different size than the release declares.
    #[error(
        "the source has {actual} bytes but the release declares {declared}; check the release's \
         size and source"
    )]
    SizeMismatch {
        /// Declared size.
        declared: u64,
        /// Size the source announced.
        actual: u64,
    },
    /// The download ended early.
    #[error("the download ended after {got} of {size} bytes")]
    Short {
        /// Bytes on disk.
        got: u64,
        /// Declared size.
        size: u64,
    },
    /// The bytes do not have the declared digest; the download was deleted.
    #[error("sha256 mismatch: expected {expected}, got {got}")]
    Digest {
        /// Declared digest.
        expected: String,
        /// Digest of the bytes received.
        got: String,
    },
    /// The transfer failed (network, HTTP status, coordinator store).
    #[error("{message}")]
    Transfer {
        /// What failed.
        message: String,
        /// Whether trying again (resuming) may help.
        retryable: bool,
    },
    /// A local file operation failed.
    #[error("cannot {action} {}: {source}{}", path.display(), crate::errors::disk_full_hint(source, path))]
    Io {
        /// What the agent was doing.
        action: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl FetchError {
    /// Whether another try (resuming from the bytes on disk) may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::Short { .. } => true,
            FetchError::Transfer { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

fn transfer(message: impl Into<String>, retryable: bool) -> FetchError {
    FetchError::Transfer {
        message: message.into(),
        retryable,
    }
}

/// Where an artifact's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The coordinator's artifact store, fetched with `FetchArtifact` by digest.
    Store,
    /// An http(s) URL.
    Http(reqwest::Url),
    /// A file on this host (absolute path).
    File(PathBuf),
}

impl Source {
    /// Parses a release's `source` field.
    pub fn parse(text: &str) -> Result<Source, FetchError> {
        if text == "store:" {
            return Ok(Source::Store);
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return reqwest::Url::parse(text)
                .map(Source::Http)
                .map_err(|e| FetchError::BadRelease(format!("source {text:?} is not a URL: {e}")));
        }
        if let Some(path) = text.strip_prefix("file://") {
            if path.starts_with('/') {
                return Ok(Source::File(PathBuf::from(path)));
            }
        }
        Err(FetchError::BadRelease(format!(
            "source {text:?} is not one the agent knows; use \"store:\", \"http(s)://...\" or \
             \"file:///absolute/path\""
        )))
    }
}

/// A release's artifact as an order describes it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Release version.
    pub version: String,
    /// Where the bytes come from.
    pub source: Source,
    /// The source as written in the order (for messages).
    pub source_text: String,
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Exact size in bytes.
    pub size: u64,
}

impl TryFrom<&pb::Release> for Artifact {
    type Error = FetchError;

    fn try_from(r: &pb::Release) -> Result<Artifact, FetchError> {
        names::check("version", &r.version).map_err(|e| FetchError::BadRelease(e.to_string()))?;
        names::check_sha256(&r.sha256).map_err(|e| FetchError::BadRelease(e.to_string()))?;
        if r.size == 0 {
            return Err(FetchError::BadRelease(
                "size is 0; an order must give the artifact's exact size".into(),
            ));
        }
        Ok(Artifact {
            version: r.version.clone(),
            source: Source::parse(&r.source)?,
            source_text: r.source.clone(),
            sha256: r.sha256.clone(),
            size: r.size,
        })
    }
}

/// Downloads artifacts into a staging dir and verifies them.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    /// The session's current channel to the coordinator, for `store:` sources (`None` while
    /// disconnected). Fetching reuses the session's connection instead of dialling its own.
    coordinator: watch::Receiver<Option<Channel>>,
}

impl Fetcher {
    /// A fetcher that reaches the coordinator's store through `coordinator`, and trusts the CA
    /// certificates in `ca_file` (PEM) for https sources besides the built-in roots.
    pub fn new(
        coordinator: watch::Receiver<Option<Channel>>,
        ca_file: Option<&Path>,
    ) -> Result<Fetcher, FetchError> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = ca_file {
            let certs = crate::config::load_ca_file(path)
                .map_err(|e| transfer(format!("source_ca_file: {e}"), false))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .read_timeout(FETCH_IDLE_TIMEOUT)
            // A redirect could lead outside allowed_sources (an internal address): refused.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| transfer(format!("cannot set up the HTTP client: {e}"), false))?;
        Ok(Fetcher { http, coordinator })
    }

    /// Downloads `artifact` into `staging_dir/<sha256>.partial` (resuming from what is already
    /// there), then checks its size and digest. Returns the path of the verified file. On a
    /// digest mismatch the download is deleted.
    pub async fn fetch(
        &self,
        artifact: &Artifact,
        staging_dir: &Path,
    ) -> Result<PathBuf, FetchError> {
        let partial = staging_dir.join(format!("{}.partial", artifact.sha256));
        let mut delay = FETCH_RETRY_DELAY;
        let mut attempt = 1;
        let digest = loop {
            match self.try_once(artifact, staging_dir, &partial).await {
                Ok(digest) => break digest,
                Err(e) if e.retryable() && attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(
                        version = %artifact.version,
                        "fetch attempt {attempt} of {FETCH_ATTEMPTS} failed: {e}; \
                         resuming in {delay:?}"
                    );
                    crate::metrics::get().fetch_retry();
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    // Not worth resuming: bytes from a source that broke the size promise, or
                    // an empty file (the source could not even be opened).
                    let empty = tokio::fs::metadata(&partial)
                        .await
                        .is_ok_and(|m| m.len() == 0);
                    if empty
                        || matches!(
                            e,
                            FetchError::Oversized { .. } | FetchError::SizeMismatch { .. }
                        )
                    {
                        let _ = tokio::fs::remove_file(&partial).await;
                    }
                    return Err(e);
                }
            }
        };
        verify(&partial, artifact, digest).await?;
        Ok(partial)
    }

    /// One try: resumes from the bytes on disk; returns the digest of the whole file when
    /// this try hashed it as it wrote (`None`: it was already complete, not hashed here).
    async fn try_once(
        &self,
        artifact: &Artifact,
        staging_dir: &Path,
        partial: &Path,
    ) -> Result<Option<String>, FetchError> {
        let mut have = match tokio::fs::metadata(partial).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err("inspect", partial)(e)),
        };
        if have > artifact.size {
            // Cannot be a prefix of the artifact; start over.
            tokio::fs::remove_file(partial)
                .await
                .map_err(io_err("remove", partial))?;
            have = 0;
        }
        if have == artifact.size {
            return Ok(None);
        }
        if have > 0 {
            tracing::info!(
                version = %artifact.version,
                "resuming the download at byte {have} of {} (kept on disk)",
                artifact.size
            );
        }
        check_space(staging_dir, artifact.size - have)?;
        let mut sink = Sink::open(partial, have, artifact.size).await?;
        let got = match &artifact.source {
            Source::Store => self.download_store(artifact, &mut sink).await,
            Source::Http(url) => self.download_http(url, artifact, &mut sink).await,
            Source::File(path) => download_file(path, artifact, &mut sink).await,
        };
        if let Err(e) = got {
            // What arrived before the error follows what is on disk (offsets are checked),
            // so the next try resumes after it; the digest is checked at the end anyway.
            let _ = sink.flush().await;
            return Err(e);
        }
        sink.finish().await.map(Some)
    }

    async fn download_store(&self, artifact: &Artifact, sink: &mut Sink) -> Result<(), FetchError> {
        let mut rx = self.coordinator.clone();
        let channel =
            match tokio::time::timeout(STORE_CONNECT_WAIT, rx.wait_for(Option::is_some)).await {
                Ok(Ok(c)) => c.clone(),
                Ok(Err(_)) | Err(_) => None,
            };
        let Some(channel) = channel else {
            return Err(transfer(
                format!(
                    "not connected to the coordinator, whose store holds the artifact \
                     (waited {STORE_CONNECT_WAIT:?})"
                ),
                true,
            ));
        };
        let mut client =
            AgentServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let req = FetchArtifactRequest {
            sha256: artifact.sha256.clone(),
            offset: sink.written,
        };
        let mut stream = client
            .fetch_artifact(req)
            .await
            .map_err(store_error)?
            .into_inner();
        loop {
            let chunk = match tokio::time::timeout(FETCH_IDLE_TIMEOUT, stream.message()).await {
                Err(_) => {
                    return Err(transfer(
                        format!("the coordinator sent nothing for {FETCH_IDLE_TIMEOUT:?}"),
                        true,
                    ))
                }
                Ok(Err(status)) => return Err(store_error(status)),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(chunk))) => chunk,
            };
            if chunk.total_size != 0 && chunk.total_size != artifact.size {
                return Err(FetchError::SizeMismatch {
                    declared: artifact.size,
                    actual: chunk.total_size,
                });
            }
            if chunk.offset != sink.written {
                return Err(transfer(
                    format!(
                        "the coordinator sent a chunk at offset {} where {} was expected",
                        chunk.offset, sink.written
                    ),
                    true,
                ));
            }
            sink.write(&chunk.data).await?;
        }
    }

    async fn download_http(
        &self,
        url: &reqwest::Url,
        artifact: &Artifact,
        sink: &mut Sink,
    ) -> Result<(), FetchError> {
        let mut req = self.http.get(url.clone());
        if sink.written > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={}-", sink.written));
        }
        let mut resp = req.send().await.map_err(|e| http_error(url, &e))?;
        let status = resp.status();
        match status.as_u16() {
            206 => {
                let start = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(sink.written) {
                    return Err(transfer(
                        format!(
                            "GET {url}: the server resumed at offset {start:?}, not {}",
                            sink.written
                        ),
                        false,
                    ));
                }
            }
            200 => {
                // The server ignored the Range header and sends everything: start over.
                if sink.written > 0 {
                    tracing::info!("{url} does not support resuming; downloading from the start");
                    sink.truncate().await?;
                }
            }
            416 => {
                sink.truncate().await?;
                return Err(transfer(
                    format!("GET {url}: the server refused to resume; starting over"),
                    true,
                ));
            }
            _ if status.is_redirection() => {
                // Never followed: where it points is not in the order, and may be internal.
                tracing::warn!(%url, %status, "release source redirected; not followed");
                return Err(transfer(
                    format!(
                        "GET {url}: the server answered {status}, a redirect, which the agent \
                         does not follow; use the final URL (under allowed_sources) as the source"
                    ),
                    false,
                ));
            }
            _ => {
                // The status only: the body (an error page, maybe internal) is never echoed.
                return Err(transfer(
                    format!("GET {url}: the server answered {status}"),
                    status.is_server_error() || status.as_u16() == 429,
                ));
            }
        }
        if let Some(len) = resp.content_length() {
            if sink.written.saturating_add(len) > artifact.size {
                return Err(FetchError::Oversized {
                    size: artifact.size,
                });
            }
        }
        loop {
            match resp.chunk().await {
                Ok(Some(bytes)) => sink.write(&bytes).await?,
                Ok(None) => return Ok(()),
                Err(e) => return Err(http_error(url, &e)),
            }
        }
    }
}

async fn download_file(
    path: &Path,
    artifact: &Artifact,
    sink: &mut Sink,
) -> Result<(), FetchError> {
    // Terse: whether a path exists or is readable is not the operator's to probe, so the OS
    // error text stays out of the refusal (the agent's log has it).
    let unreadable = |e: io::Error| {
        tracing::warn!(path = %path.display(), "cannot read a file:// release source: {e}");
        transfer(
            format!(
                "cannot read source file {}; check it exists and is readable by the agent",
                path.display()
            ),
            false,
        )
    };
    let mut file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let meta = file.metadata().await.map_err(unreadable)?;
    if !meta.is_file() {
        return Err(transfer(
            format!("source {} is not a regular file", path.display()),
            false,
        ));
    }
    let len = meta.len();
    if len > artifact.size {
        return Err(FetchError::Oversized {
            size: artifact.size,
        });
    }
    if len < artifact.size {
        // A short local file will not grow by retrying.
        return Err(FetchError::SizeMismatch {
            declared: artifact.size,
            actual: len,
        });
    }
    file.seek(io::SeekFrom::Start(sink.written))
        .await
        .map_err(unreadable)?;
    let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).await.map_err(unreadable)?;
        if n == 0 {
            return Ok(());
        }
        sink.write(&buf[..n]).await?;
    }
}

/// A failed request to `url`, in words the operator acts on. A TLS failure (an untrusted or
/// wrong certificate) names rustls' reason and is not retried: retrying will not fix it.
fn http_error(url: &reqwest::Url, e: &reqwest::Error) -> FetchError {
    match tls_reason(e) {
        Some(why) => transfer(
            format!(
                "GET {url}: TLS refused: {why}; the source's certificate must chain to a CA the \
                 agent trusts (the built-in roots, or `source_ca_file` in its config)"
            ),
            false,
        ),
        None => transfer(format!("GET {url}: {}", terse(e)), true),
    }
}

/// rustls' own words for why a TLS handshake failed, if that is what `e` was (its errors are
/// a closed set of reasons; no peer bytes).
fn tls_reason(e: &reqwest::Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        // io::Error's source() skips the error it wraps: descend into it instead.
        cur = match err.downcast_ref::<io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// What kind of HTTP failure `e` was, without its text (which may carry OS error strings or
/// a peer's bytes): enough for the operator to act on.
fn terse(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the transfer broke off"
    } else {
        "the request failed"
    }
}

fn store_error(status: tonic::Status) -> FetchError {
    use tonic::Code;
    let retryable = matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
    );
    transfer(
        format!(
            "the coordinator's store: {}: {}",
            status.code(),
            status.message()
        ),
        retryable,
    )
}

/// Start offset of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(v: &str) -> Option<u64> {
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Fails unless `dir`'s filesystem has `need` bytes free.
fn check_space(dir: &Path, need: u64) -> Result<(), FetchError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| io_err("check free space in", dir)(io::Error::from(e)))?;
    // The field types differ between platforms; on 64-bit Linux these casts are no-ops.
    #[allow(clippy::unnecessary_cast)]
    let available = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
    if available < need {
        return Err(FetchError::NoSpace {
            dir: dir.to_path_buf(),
            need,
            available,
        });
    }
    Ok(())
}

/// Checks a complete download's size and digest (`digest`: computed as it was written, or
/// `None` to hash the file now); deletes it on a digest mismatch.
async fn verify(
    partial: &Path,
    artifact: &Artifact,
    digest: Option<String>,
) -> Result<(), FetchError> {
    let len = tokio::fs::metadata(partial)
        .await
        .map_err(io_err("inspect", partial))?
        .len();
    if len != artifact.size {
        return Err(FetchError::Short {
            got: len,
            size: artifact.size,
        });
    }
    let got = match digest {
        Some(d) => d,
        None => sha256_file_async(partial)
            .await
            .map_err(io_err("hash", partial))?,
    };
    if got != artifact.sha256 {
        let _ = tokio::fs::remove_file(partial).await;
        return Err(FetchError::Digest {
            expected: artifact.sha256.clone(),
            got,
        });
    }
    Ok(())
}

/// Lowercase hex sha256 of a file's content.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER_BYTES];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// [`sha256_file`] off the async threads (artifacts can be large).
pub async fn sha256_file_async(path: &Path) -> io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(io::Error::other)?
}

mod sink;
use sink::Sink;
#[cfg(test)]
mod tests;
