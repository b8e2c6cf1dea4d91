//! Getting a release's bytes onto the host: store, http or file; resume; size and digest (S8).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollgate_proto::pb::agent_service_client::AgentServiceClient;
use rollgate_proto::pb::{self, FetchArtifactRequest};
use rollgate_proto::{names, ARTIFACT_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
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
         are free; free some space on the host and retry the rollout",
        dir.display()
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
    #[error("cannot {action} {}: {source}", path.display())]
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
    /// A fetcher that reaches the coordinator's store through `coordinator`.
    pub fn new(coordinator: watch::Receiver<Option<Channel>>) -> Result<Fetcher, FetchError> {
        let http = reqwest::Client::builder()
            .connect_timeout(HTTP_CONNECT_TIMEOUT)
            .read_timeout(FETCH_IDLE_TIMEOUT)
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
        loop {
            match self.try_once(artifact, staging_dir, &partial).await {
                Ok(()) => break,
                Err(e) if e.retryable() && attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(
                        version = %artifact.version,
                        "fetch attempt {attempt} of {FETCH_ATTEMPTS} failed: {e}; \
                         resuming in {delay:?}"
                    );
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
        }
        verify(&partial, artifact).await?;
        Ok(partial)
    }

    async fn try_once(
        &self,
        artifact: &Artifact,
        staging_dir: &Path,
        partial: &Path,
    ) -> Result<(), FetchError> {
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
            return Ok(());
        }
        check_space(staging_dir, artifact.size - have)?;
        let mut sink = Sink::open(partial, have, artifact.size).await?;
        match &artifact.source {
            Source::Store => self.download_store(artifact, &mut sink).await?,
            Source::Http(url) => self.download_http(url, artifact, &mut sink).await?,
            Source::File(path) => download_file(path, artifact, &mut sink).await?,
        }
        sink.finish().await
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
        let mut resp = req
            .send()
            .await
            .map_err(|e| transfer(format!("GET {url}: {e}"), true))?;
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
            _ => {
                return Err(transfer(
                    format!("GET {url}: the server answered {status}"),
                    status.is_server_error() || status.as_u16() == 429,
                ))
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
                Err(e) => return Err(transfer(format!("GET {url}: {e}"), true)),
            }
        }
    }
}

async fn download_file(
    path: &Path,
    artifact: &Artifact,
    sink: &mut Sink,
) -> Result<(), FetchError> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| {
        transfer(
            format!("cannot open source file {}: {e}", path.display()),
            false,
        )
    })?;
    let len = file
        .metadata()
        .await
        .map_err(io_err("inspect", path))?
        .len();
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
        .map_err(io_err("seek in", path))?;
    let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf).await.map_err(io_err("read", path))?;
        if n == 0 {
            return Ok(());
        }
        sink.write(&buf[..n]).await?;
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

/// The partial download: appends, and refuses to grow past the declared size.
struct Sink {
    file: tokio::fs::File,
    path: PathBuf,
    written: u64,
    limit: u64,
}

impl Sink {
    async fn open(path: &Path, have: u64, limit: u64) -> Result<Sink, FetchError> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(io_err("open", path))?;
        Ok(Sink {
            file,
            path: path.to_path_buf(),
            written: have,
            limit,
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), FetchError> {
        if self.written.saturating_add(data.len() as u64) > self.limit {
            return Err(FetchError::Oversized { size: self.limit });
        }
        self.file
            .write_all(data)
            .await
            .map_err(io_err("write", &self.path))?;
        self.written += data.len() as u64;
        Ok(())
    }

    async fn truncate(&mut self) -> Result<(), FetchError> {
        self.file
            .set_len(0)
            .await
            .map_err(io_err("truncate", &self.path))?;
        self.written = 0;
        Ok(())
    }

    async fn finish(mut self) -> Result<(), FetchError> {
        self.file
            .flush()
            .await
            .map_err(io_err("write", &self.path))?;
        self.file
            .sync_all()
            .await
            .map_err(io_err("fsync", &self.path))?;
        if self.written < self.limit {
            return Err(FetchError::Short {
                got: self.written,
                size: self.limit,
            });
        }
        Ok(())
    }
}

/// Checks a complete download's size and digest; deletes it on a digest mismatch.
async fn verify(partial: &Path, artifact: &Artifact) -> Result<(), FetchError> {
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
    let got = sha256_file_async(partial)
        .await
        .map_err(io_err("hash", partial))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    fn fetcher() -> Fetcher {
        let (_tx, rx) = watch::channel(None);
        Fetcher::new(rx).expect("fetcher")
    }

    fn artifact_for(body: &[u8], source: &str) -> Artifact {
        Artifact::try_from(&pb::Release {
            version: "2.0.0".into(),
            source: source.into(),
            sha256: hex::encode(Sha256::digest(body)),
            size: body.len() as u64,
            signature: None,
        })
        .expect("valid release")
    }

    fn body() -> Vec<u8> {
        (0..200_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn release_checks() {
        let ok = pb::Release {
            version: "1.0.0".into(),
            source: "store:".into(),
            sha256: "a".repeat(64),
            size: 3,
            signature: None,
        };
        assert!(Artifact::try_from(&ok).is_ok());
        for (bad, want) in [
            (
                pb::Release {
                    version: "../x".into(),
                    ..ok.clone()
                },
                "version",
            ),
            (
                pb::Release {
                    sha256: "abc".into(),
                    ..ok.clone()
                },
                "sha256",
            ),
            (
                pb::Release {
                    size: 0,
                    ..ok.clone()
                },
                "size is 0",
            ),
            (
                pb::Release {
                    source: "ftp://x".into(),
                    ..ok.clone()
                },
                "not one the agent knows",
            ),
            (
                pb::Release {
                    source: "file://relative".into(),
                    ..ok.clone()
                },
                "not one the agent knows",
            ),
        ] {
            let err = Artifact::try_from(&bad).expect_err(want).to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[tokio::test]
    async fn file_source_is_fetched_and_verified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("artifact");
        std::fs::write(&src, body()).expect("source");
        let a = artifact_for(&body(), &format!("file://{}", src.display()));
        let got = fetcher().fetch(&a, dir.path()).await.expect("fetch");
        assert_eq!(got, dir.path().join(format!("{}.partial", a.sha256)));
        assert_eq!(std::fs::read(&got).expect("read"), body());
    }

    #[tokio::test]
    async fn wrong_digest_is_refused_and_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("artifact");
        std::fs::write(&src, body()).expect("source");
        let mut a = artifact_for(&body(), &format!("file://{}", src.display()));
        let actual = a.sha256.clone();
        a.sha256 = "0".repeat(64);
        let err = fetcher().fetch(&a, dir.path()).await.expect_err("mismatch");
        assert_eq!(
            err.to_string(),
            format!("sha256 mismatch: expected {}, got {actual}", "0".repeat(64))
        );
        assert!(!dir.path().join(format!("{}.partial", a.sha256)).exists());
    }

    #[tokio::test]
    async fn oversized_source_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("artifact");
        std::fs::write(&src, body()).expect("source");
        let mut a = artifact_for(&body(), &format!("file://{}", src.display()));
        a.size -= 1;
        let err = fetcher()
            .fetch(&a, dir.path())
            .await
            .expect_err("oversized");
        assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
        assert!(
            err.to_string().contains("refusing to write past it"),
            "{err}"
        );
        assert!(!dir.path().join(format!("{}.partial", a.sha256)).exists());
    }

    #[tokio::test]
    async fn resume_appends_to_the_partial_file_and_still_verifies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("artifact");
        let full = body();
        std::fs::write(&src, &full).expect("source");
        let a = artifact_for(&full, &format!("file://{}", src.display()));
        let partial = dir.path().join(format!("{}.partial", a.sha256));

        // A correct prefix is resumed.
        std::fs::write(&partial, &full[..70_000]).expect("prefix");
        fetcher()
            .fetch(&a, dir.path())
            .await
            .expect("resumed fetch");
        assert_eq!(std::fs::read(&partial).expect("read"), full);

        // A corrupt prefix is kept by the resume (only the tail is read) but caught by the digest.
        let mut bad = full[..70_000].to_vec();
        bad[10] ^= 0xff;
        std::fs::write(&partial, &bad).expect("bad prefix");
        let err = fetcher()
            .fetch(&a, dir.path())
            .await
            .expect_err("corrupt prefix");
        assert!(matches!(err, FetchError::Digest { .. }), "{err}");
        assert!(!partial.exists(), "a mismatching download is deleted");
    }

    /// A one-request-per-connection HTTP server that honours (or ignores) Range and records
    /// the Range header of each request.
    fn serve(
        body: Vec<u8>,
        honour_range: bool,
        extra: usize,
    ) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                    }
                }
                log.lock()
                    .expect("log")
                    .push(range.map(|r| format!("bytes={r}-")));
                let mut payload = body.clone();
                payload.extend(std::iter::repeat_n(b'x', extra));
                let head = match range {
                    Some(start) if honour_range => {
                        let total = payload.len();
                        payload.drain(..start);
                        format!(
                            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
                            payload.len(),
                            total - 1
                        )
                    }
                    _ => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        payload.len()
                    ),
                };
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&payload);
            }
        });
        (format!("http://{addr}/artifact"), seen)
    }

    #[tokio::test]
    async fn http_fetch_resumes_with_a_range_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = body();
        let (url, seen) = serve(full.clone(), true, 0);
        let a = artifact_for(&full, &url);
        let partial = dir.path().join(format!("{}.partial", a.sha256));
        std::fs::write(&partial, &full[..123_456]).expect("prefix");
        fetcher().fetch(&a, dir.path()).await.expect("fetch");
        assert_eq!(std::fs::read(&partial).expect("read"), full);
        assert_eq!(
            *seen.lock().expect("log"),
            vec![Some("bytes=123456-".to_string())]
        );
    }

    #[tokio::test]
    async fn http_fetch_starts_over_when_range_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = body();
        let (url, _) = serve(full.clone(), false, 0);
        let a = artifact_for(&full, &url);
        let partial = dir.path().join(format!("{}.partial", a.sha256));
        std::fs::write(&partial, &full[..1000]).expect("prefix");
        fetcher().fetch(&a, dir.path()).await.expect("fetch");
        assert_eq!(std::fs::read(&partial).expect("read"), full);
    }

    #[tokio::test]
    async fn http_source_larger_than_declared_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let full = body();
        let (url, _) = serve(full.clone(), true, 10);
        let a = artifact_for(&full, &url);
        let err = fetcher()
            .fetch(&a, dir.path())
            .await
            .expect_err("oversized");
        assert!(matches!(err, FetchError::Oversized { .. }), "{err}");
    }

    #[tokio::test]
    async fn http_error_status_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            if let Some(Ok(mut c)) = listener.incoming().next() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let _ = c.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        let a = artifact_for(b"abc", &format!("http://{addr}/missing"));
        let err = fetcher().fetch(&a, dir.path()).await.expect_err("404");
        assert!(err.to_string().contains("404"), "{err}");
        assert!(!err.retryable());
    }

    #[test]
    fn no_space_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = check_space(dir.path(), u64::MAX).expect_err("nobody has that much space");
        assert!(err.to_string().contains("not enough disk space"), "{err}");
        check_space(dir.path(), 1).expect("one byte is free");
    }
}
